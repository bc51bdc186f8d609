"""Evaluation: benchmarks, judges (verifier, reward model, OpenAI-compatible LLM), metrics with bootstrap
intervals, and the papers' result tables from sweeps."""
