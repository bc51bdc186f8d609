"""Training MFU of the model configs that fit one GPU, against a published anchor, and FSDP2 against DDP on one
device, side by side in one invocation.

    python -m bench.strategies [--models random_qwen3_0_6b random_llama3_2_1b] [--pairs 512] [--batch-size 16]
                               [--precision bf16] [--head-chunk-tokens 1024]
    python -m bench.strategies --models tiny_llama --pairs 32 --batch-size 8 --precision bf16 --head-chunk-tokens 128  # CPU smoke

Every run is one epoch of ``bench.train``'s prefalign worker (packed rows, prompt shared, the vocabulary step in
chunks, the reference log-probs computed in the run), a process of its own, on the built-in pairs: the same
settings as ``bench.train``. For each model, its epoch with the default single-device strategy gives its training
MFU (``bench.train``'s nominal accounting: ``8 N`` FLOPs per token of the concatenated sequences over the epoch's
wall time and the dense matmul peak measured on this device), printed against the anchor of **22.5% MFU** that
open-instruct reports for DPO on OLMo 2 7B on H100s (a 7B model on a node; the models here are 0.6-1.2B on one
GPU, where small matmuls and launches weigh more, so the anchor is a reference point, not a target). For the
first model, the same epoch under ``trainer=ddp`` and ``trainer=fsdp`` (FSDP2 on a one-device mesh: the same
arithmetic plus the sharding machinery and activation checkpointing) gives the cost of each strategy, with its
peak memory and last training loss (the three must agree to rounding).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from bench.common import append_result, machine, markdown, matmul_peak, run_worker
from bench.train import DTYPES, matmul_parameters, model_dir, token_counts

ANCHOR_MFU = 0.225  # open-instruct, DPO on OLMo 2 7B, H100s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["random_qwen3_0_6b", "random_llama3_2_1b"])
    parser.add_argument("--pairs", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--precision", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--pack-length", type=int, default=256)
    parser.add_argument("--head-chunk-tokens", type=int, default=1024)
    parser.add_argument("--strategies", nargs="*", default=["ddp", "fsdp"], help="compared with the default on the first model")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-strategies-"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    peaks = [matmul_peak(device, DTYPES[args.precision])]
    tokens, _ = token_counts(args.pairs)
    runs = []
    for index, model in enumerate(args.models):
        folder = model_dir(model, work / "cache")
        for strategy in ["default", *(args.strategies if index == 0 else [])]:
            name = f"{model}-{strategy}"
            command = [sys.executable, "-m", "bench.train", "--worker", "prefalign-chunked", "--model", model,
                       "--pairs", str(args.pairs), "--batch-size", str(args.batch_size), "--folder", str(folder),
                       "--cache", str(work / f"cache-{name}"), "--pack-length", str(args.pack_length),
                       "--head-chunk-tokens", str(args.head_chunk_tokens), "--precision", args.precision]
            if strategy != "default":
                command += ["--trainer", strategy]
            runs.append((model, strategy, matmul_parameters(folder), run_worker(name, command)))
    peaks.append(matmul_peak(device, DTYPES[args.precision]))
    peak = max(peaks)
    baseline = {model: values["seconds"] for model, strategy, _, values in runs if strategy == "default"}
    rows = []
    for model, strategy, parameters, values in runs:
        mfu = 8 * parameters * tokens / values["seconds"] / peak
        rows.append({
            "model": model,
            "strategy": {"default": "one device (Lightning's default)", "ddp": "trainer=ddp, 1 device",
                         "fsdp": "trainer=fsdp (FSDP2), 1 device"}[strategy],
            "epoch_wall_s": values["seconds"],
            "pairs_per_s": args.pairs / values["seconds"],
            "peak_memory_mb": values["peak_mb"],
            "last_train_loss": values.get("last_loss"),
            "nominal_mfu": mfu,
            "mfu_vs_anchor_22.5%": mfu / ANCHOR_MFU,
            "time_vs_default": values["seconds"] / baseline[model],
        })
    table = markdown(rows) + (
        f"\n\nDense {args.precision} matmul peak on {device.type}: {peak / 1e9:.1f} GFLOP/s (before {peaks[0] / 1e9:.1f}, "
        f"after {peaks[1] / 1e9:.1f}). Anchor: 22.5% MFU, DPO on OLMo 2 7B on H100s (open-instruct)."
    )
    print(table)
    append_result("Training MFU per model, and FSDP2 vs DDP on one device", "python -m bench.strategies " + " ".join(sys.argv[1:]),
                  vars(args), table, machine())


if __name__ == "__main__":
    main()
