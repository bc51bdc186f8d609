"""Forward scoring throughput as a fraction of the machine's dense matmul peak (model FLOPs utilisation).

    python -m bench.scoring [--model smollm2_135m] [--pairs 128] [--batch-size 32]

Measures, in one run on the same pairs, the summed log-probs of every pair's chosen and rejected completion with

* **padded**: each completion with its own copy of the prompt, in padded batches (TRL's concatenated batch);
* **shared prompt**: the prompt once per pair (its key/value cache reused), padded batches grouped by length;
* **packed, shared prompt**: prefalign's padding-free packing, each prompt once followed by its completions,
  segments packed into rows of ``--pack-length`` tokens under a block mask (one decoder call a batch);
* **packed**: the same packing with one ``prompt + completion`` segment per completion;

and for each the pairs/s, the model FLOPs per second (useful work only: ``2 x decoder parameters`` per real token
run, ``2 x vocabulary x hidden`` per scored position, and attention ``4 x layers x hidden x context`` per real
token, causal; padding and masked attention are not counted), the utilisation against the machine's dense
matmul peak, and how the time grows from 1x to 4x the number of pairs.

The machines here are shared virtual CPUs whose speed drifts by tens of percent within minutes, so the peak is
measured again before every timed pass and the utilisation is taken against the highest peak seen in the whole
run (the conservative choice); every pass is timed ``--repeats`` times and the fastest kept (as ``timeit`` does).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench.common import (
    append_result,
    machine,
    markdown,
    matmul_peak,
    sync,
    train_config,
)
from prefalign.data.datamodule import datamodule_from_config
from prefalign.logprobs import LogpSettings, pair_logps


def model_flops(model: torch.nn.Module, items: list, mode: str) -> float:
    """Useful FLOPs of scoring ``items`` (tokenised pairs) in ``mode``: no padding counted."""
    config = model.config
    hidden, layers = config.hidden_size, config.num_hidden_layers
    embedding = model.get_input_embeddings().weight.numel()
    head = model.get_output_embeddings().weight
    tied = head.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    decoder = sum(p.numel() for p in model.parameters()) - embedding - (0 if tied else head.numel())
    total = 0.0
    for item in items:
        p, c, r = len(item.prompt_ids), len(item.chosen_ids), len(item.rejected_ids)
        run = [(0, p), (p, c), (p, r)] if "shared prompt" in mode else [(0, p + c), (0, p + r)]
        for start, length in run:
            for position in range(start, start + length):
                # matmuls with the weights, then QK^T and AV over the (causal) context
                total += 2 * decoder + 4 * layers * hidden * (position + 1)
        total += 2 * head.numel() * (c + r)
    return total


def score(model: torch.nn.Module, datamodule, mode: str, pack_length: int) -> float:
    """Seconds to score every training pair once in ``mode``."""
    loader = datamodule.eval_loader("train")
    if mode == "padded":
        datamodule.group_by_length = False
        loader = datamodule.eval_loader("train")
        datamodule.group_by_length = True
    start = time.perf_counter()
    with torch.no_grad():
        for batch in loader:
            batch = {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            settings = LogpSettings(
                share_prompt="shared prompt" in mode, pack_length=pack_length if mode.startswith("packed") else None
            )
            pair_logps(model, batch, settings)
    sync()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2_135m")
    parser.add_argument("--pairs", type=int, default=128, help="pairs of the 1x run (the 4x run scores 4 times as many)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--pack-length", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per mode and size; the fastest is kept")
    parser.add_argument("--dtype", default=None, help="model dtype (default: the model config's)")
    args = parser.parse_args()

    from hydra.utils import instantiate

    overrides = [f"model={args.model}", f"data.eval_batch_size={args.batch_size}", "data.max_val_pairs=8"]
    if args.dtype:
        overrides.append(f"model.dtype={args.dtype}")
    modes = ("padded", "shared prompt", "packed, shared prompt", "packed")
    times: dict[str, dict[int, float]] = {}
    flops: dict[str, float] = {}
    pairs: dict[int, int] = {}
    model = None
    peaks: list[float] = []
    for multiple in (1, 4):
        cfg = train_config([*overrides, f"data.max_train_pairs={multiple * args.pairs}"], Path(tempfile.mkdtemp()))
        source = instantiate(cfg.model)
        if model is None:
            model = source.load_model().eval()
            if torch.cuda.is_available():
                model = model.cuda()
            device, dtype = model.device, next(model.parameters()).dtype
            peaks = [matmul_peak(device, dtype)]
            print(f"dense {dtype} matmul peak: {peaks[0] / 1e9:.1f} GFLOP/s", flush=True)
        datamodule = datamodule_from_config(cfg.data, tokenizer=source.load_tokenizer())
        datamodule.setup()
        items = datamodule.datasets["train"].items
        pairs[multiple] = len(items)
        score(model, datamodule, "shared prompt", args.pack_length)  # warm-up of the kernels and allocator
        for mode in modes:
            best = float("inf")
            for _ in range(args.repeats):
                peaks.append(matmul_peak(device, dtype))
                best = min(best, score(model, datamodule, mode, args.pack_length))
            times.setdefault(mode, {})[multiple] = best
            if multiple == 1:
                flops[mode] = model_flops(model, items, mode)
            print(f"{mode} x{multiple}: {best:.1f} s (peak now {peaks[-1] / 1e9:.1f} GFLOP/s)", flush=True)
    peak = max(peaks)
    rows = []
    for mode in modes:
        seconds = times[mode][1]
        rows.append({
            "mode": mode,
            "pairs": pairs[1],
            "seconds": seconds,
            "pairs_per_s": pairs[1] / seconds,
            "model_GFLOP_per_s": flops[mode] / seconds / 1e9,
            "utilisation_of_peak": flops[mode] / seconds / peak,
        })
    for row in rows:
        row["time_4x_over_1x"] = times[row["mode"]][4] / times[row["mode"]][1]
    table = markdown(rows) + (
        f"\n\nDense {dtype} matmul peak: {peak / 1e9:.1f} GFLOP/s, the highest of {len(peaks)} measurements in this run "
        f"(lowest {min(peaks) / 1e9:.1f}); 4x = {pairs[4]} pairs."
    )
    print(table)
    settings = {"model": args.model, "pairs_1x": args.pairs, "pairs_4x": 4 * args.pairs, "batch_size": args.batch_size,
                "pack_length": args.pack_length, "repeats": args.repeats, "dtype": str(next(model.parameters()).dtype)}
    append_result("Forward scoring throughput and utilisation", "python -m bench.scoring " + " ".join(sys.argv[1:]),
                  settings, table, machine())


if __name__ == "__main__":
    main()
