"""The vocabulary step with and without ``head_chunk_tokens``: peak memory and time, side by side in one run.

    python -m bench.head [--tokens 2048] [--vocab 151936] [--hidden 1024] [--chunk 256]

One forward and backward pass through ``log softmax(W h)[y]`` for ``--tokens`` completion tokens (the defaults are
Qwen3-0.6B's vocabulary and width), random weights: the generic path (the logits ``tokens x vocabulary`` are
kept for the backward pass) against :func:`prefalign.logprobs.chunked_head_logps` (chunks of ``--chunk`` tokens,
logits recomputed in the backward pass). Each runs in a process of its own, twice (the second is timed); its
memory is the process's peak resident size above its size before the pass. Both print the sum of the log-probs
and the norms of the two gradients, to show they compute the same thing. The table is appended to
``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from bench.common import append_result, machine, markdown, run_worker


def memory_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def worker(args: argparse.Namespace) -> None:
    from prefalign import logprobs

    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(args.tokens, args.hidden, generator=generator).requires_grad_()
    head = torch.nn.Linear(args.hidden, args.vocab, bias=False)
    torch.nn.init.normal_(head.weight, std=args.hidden**-0.5, generator=generator)
    targets = torch.randint(0, args.vocab, (args.tokens,), generator=generator)
    before = memory_mb("VmRSS")
    seconds = 0.0
    for _ in range(2):
        hidden.grad = head.weight.grad = None
        start = time.perf_counter()
        if args.worker == "generic":
            logps = logprobs.token_logps(head(hidden), targets)
        else:
            logps = logprobs.chunked_head_logps(hidden, head, targets, args.chunk)
        logps.sum().backward()
        seconds = time.perf_counter() - start
    print("RESULT " + json.dumps({
        "seconds": seconds, "peak_above_start_mb": memory_mb("VmHWM") - before, "sum_logps": float(logps.sum()),
        "grad_hidden_norm": float(hidden.grad.norm()), "grad_weight_norm": float(head.weight.grad.norm()),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--worker", choices=["generic", "chunked"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    measured = {}
    for name in ("generic", "chunked"):
        command = [sys.executable, "-m", "bench.head", "--worker", name, "--tokens", str(args.tokens), "--vocab",
                   str(args.vocab), "--hidden", str(args.hidden), "--chunk", str(args.chunk)]
        measured[name] = run_worker(name, command)
    labels = {"generic": "logits kept (head_chunk_tokens=null)", "chunked": f"head_chunk_tokens={args.chunk}"}
    rows = [{"vocabulary step": labels[name], **values,
             "memory_vs_generic": values["peak_above_start_mb"] / measured["generic"]["peak_above_start_mb"],
             "time_vs_generic": values["seconds"] / measured["generic"]["seconds"]} for name, values in measured.items()]
    table = markdown(rows)
    print(table)
    settings = {"tokens": args.tokens, "vocab": args.vocab, "hidden": args.hidden, "chunk": args.chunk,
                "logits_mb": args.tokens * args.vocab * 4 / 2**20, "precision": "float32"}
    append_result("Vocabulary step: chunked vs logits kept", "python -m bench.head " + " ".join(sys.argv[1:]), settings,
                  table, machine())


if __name__ == "__main__":
    main()
