"""The selection pipeline's cost on this machine as the data grows, and a projection to 60k pairs on an 8B model.

    python -m bench.scale [--sizes 750 1500 3000] [--out runs/scale] [--no-record] [-- <train.py overrides>]

For each size ``n`` it runs the stages as a user would, each a process of its own:

1. the warm-up: ``train.py data.max_train_pairs=n trainer.max_epochs=1`` (one epoch, the paper's warm-up);
2. ``score.py policy=<warm-up> 'scores=[influence,lossdiff,irm]'`` on the same ``n`` pairs, whose
   ``scores_summary.json`` splits the time into the scorers' preparation (influence: the validation-loss gradient;
   LossDiff and IRM: the auxiliary model they share, trained on the validation pairs) and their per-pair passes.

The warm-up's time is the training run's own (``metrics.json``: its reference log-probs, the epoch and its
validation); the two processes' start-up is listed apart, the same at every size and not projected.

and reports the wall time of every stage, how it grows from the smallest to the largest size (the exponent ``b``
of ``t ~ n^b``: 1 is linear) and the cost per token. A size whose files are already in ``--out`` is read back, not
run again (the script resumes); scores found in prefalign's cache carry the timings of the run that computed them.

**The projection** to ``--target-pairs`` pairs on a model of ``--target-params`` decoder parameters scales each
measured stage by ``(target parameters x target tokens) / (parameters x tokens measured)``, separately for the
stages that grow with the training pairs (the warm-up, the per-pair passes) and those that grow with the
validation pairs (the validation gradient, the auxiliary model). Its assumptions, printed with it:

* cost proportional to parameters x tokens (the matmuls); attention's share, which grows with the sequence
  length, is not modelled, so long sequences cost more than projected;
* the target's tokens per pair and validation pairs are given (``--target-tokens-per-pair``,
  ``--target-val-pairs``), not measured: the defaults are assumptions for UltraFeedback-sized data;
* on another device, the same fraction of its dense matmul peak as this machine reaches of its own
  (``--target-peak``, FLOP/s; this machine's float32 peak is measured here, and its scoring passes reach
  0.5-0.6 of it: ``bench.scoring``). That is optimistic for a GPU: large-model training on H100s reaches 38-43%
  of the datasheet bf16 peak (Llama 3's pre-training, "The Llama 3 Herd of Models", 2024), so the device time
  can be up to about 1.5x the figure, more with short sequences or small batches: an estimate, not a bound;
* memory is not projected: an 8B policy with its reference and AdamW states needs several GPUs (FSDP).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from bench.common import ROOT, append_result, machine, markdown, matmul_peak, run_stage, train_config

SCORES = ("influence", "lossdiff", "irm")
# H100 SXM dense bf16 (NVIDIA's datasheet: 989 TFLOP/s without sparsity)
H100_BF16 = 989e12


def token_counts(pairs: int, overrides: list[str], scratch: Path) -> dict[str, Any]:
    """Tokens of the first ``pairs`` training pairs and of the validation pairs, as the datamodule tokenises them
    (each prompt once and both completions: what one pass over a pair runs), and the model's decoder parameters."""
    from hydra.utils import instantiate

    from prefalign.data.datamodule import datamodule_from_config

    cfg = train_config([*overrides, f"data.max_train_pairs={pairs}"], scratch)
    source = instantiate(cfg.model)
    datamodule = datamodule_from_config(cfg.data, tokenizer=source.load_tokenizer())
    datamodule.setup()

    def tokens(split: str) -> int:
        return sum(len(i.prompt_ids) + len(i.chosen_ids) + len(i.rejected_ids) for i in datamodule.datasets[split].items)

    return {
        "pairs": len(datamodule.datasets["train"].items),
        "train_tokens": tokens("train"),
        "val_pairs": len(datamodule.datasets["val"].items),
        "val_tokens": tokens("val"),
    }


def decoder_parameters(overrides: list[str], scratch: Path) -> int:
    """Parameters of the model without its embeddings (the matmul weights every token runs through)."""
    from hydra.utils import instantiate

    model = instantiate(train_config(overrides, scratch).model).load_model()
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for p in model.parameters()) - embedding.numel()
    return total - (0 if head.data_ptr() == embedding.data_ptr() else head.numel())


def measure_size(n: int, out: Path, overrides: list[str]) -> dict[str, Any]:
    """The stages on ``n`` pairs (or their files from an earlier run of this script)."""
    folder = out / str(n)
    record_path = folder / "timings.json"
    if record_path.exists():
        print(f"{n} pairs: read back from {record_path}", flush=True)
        return json.loads(record_path.read_text())
    python = sys.executable
    data = [*overrides, f"data.max_train_pairs={n}"]
    warm = folder / "warmup"
    print(f"{n} pairs: warm-up ...", flush=True)
    warm_s = run_stage(
        [python, "train.py", *data, "trainer.max_epochs=1", f"hydra.run.dir={warm}"], folder / "warmup.log"
    )
    print(f"{n} pairs: warm-up {warm_s:.0f} s; scoring ...", flush=True)
    score_dir = folder / "score"
    score_s = run_stage(
        [python, "score.py", *data, f"policy={warm}", f"scores=[{','.join(SCORES)}]", f"hydra.run.dir={score_dir}"],
        folder / "score.log",
    )
    summary = json.loads((score_dir / "scores_summary.json").read_text())
    warm_run = json.loads((warm / "metrics.json").read_text())["run"]
    record = {
        "pairs": n,
        # the training run's own time (its reference log-probs, the epoch, its validation); the process's
        # start-up (imports, composing the config) is the rest of its wall time
        "warmup_s": warm_run["elapsed_s"],
        "warmup_wall_s": warm_s,
        "score_s": summary["elapsed_s"],
        "score_wall_s": score_s,
        "score_from_cache": summary["from_cache"],
        "timings_s": summary["timings_s"],
        **token_counts(n, overrides, folder / "tokens"),
    }
    record_path.write_text(json.dumps(record, indent=1))
    print(f"{n} pairs: scoring {score_s:.0f} s ({summary['timings_s']})", flush=True)
    return record


def stages(record: dict[str, Any]) -> dict[str, tuple[float, str]]:
    """Seconds of each stage of one size and what it grows with (``train`` or ``val`` tokens)."""
    timings = record["timings_s"]
    split = {
        "warm-up (1 epoch)": (record["warmup_s"], "train"),
        "influence: validation gradient": (timings.get("prepare/influence", 0.0), "val"),
        "influence: per-pair JVP": (timings.get("influence", 0.0), "train"),
        "LossDiff + IRM: auxiliary model": (timings.get("prepare/lossdiff", 0.0) + timings.get("prepare/irm", 0.0), "val"),
        "LossDiff + IRM: per-pair passes": (timings.get("lossdiff", 0.0) + timings.get("irm", 0.0) + timings.get("policy_forward", 0.0), "train"),
    }
    accounted = sum(seconds for key, (seconds, _) in split.items() if key != "warm-up (1 epoch)")
    # loading the models, the reference log-probs of the training pairs, writing the files: with the per-pair work
    split["scoring: loading, reference log-probs, files"] = (max(record["score_s"] - accounted, 0.0), "train")
    # the two processes' start-up (imports, composing the config): the same at every size, not projected
    split["process start-up (x2)"] = (
        max(record["warmup_wall_s"] - record["warmup_s"], 0.0) + max(record["score_wall_s"] - record["score_s"], 0.0),
        "fixed",
    )
    return split


def project(
    record: dict[str, Any], params: float, peak: float, target_pairs: int, tokens_per_pair: float, val_pairs: int,
    target_params: float, target_peak: float,
) -> list[dict[str, Any]]:
    """Every stage of ``record`` scaled to the target: its seconds per (decoder parameter x token) times the
    target's parameters and tokens (training or validation, by what the stage grows with), on this CPU and on a
    device of ``target_peak`` FLOP/s that reaches the same fraction of its peak as this CPU (``peak``) does."""
    targets = {"train": target_pairs * tokens_per_pair, "val": val_pairs * tokens_per_pair}
    measured = {"train": record["train_tokens"], "val": record["val_tokens"]}
    rows = []
    for name, (seconds, grows_with) in stages(record).items():
        if grows_with == "fixed":
            continue
        cpu_s = seconds * (target_params / params) * (targets[grows_with] / measured[grows_with])
        rows.append({"stage": name, "this CPU, hours": cpu_s / 3600, "target device, hours": cpu_s * peak / target_peak / 3600})
    rows.append({
        "stage": "**total**",
        "this CPU, hours": sum(row["this CPU, hours"] for row in rows),
        "target device, hours": sum(row["target device, hours"] for row in rows),
    })
    return rows


def growth(small: float, large: float, n_small: int, n_large: int) -> float:
    """The exponent ``b`` of ``t ~ n^b`` between two sizes."""
    if small <= 0 or large <= 0 or n_small == n_large:
        return math.nan
    return math.log(large / small) / math.log(n_large / n_small)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[750, 1500, 3000])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "scale")
    parser.add_argument("--target-pairs", type=int, default=60_000)
    parser.add_argument("--target-params", type=float, default=7.0e9, help="decoder parameters (Llama-3-8B: ~7.0e9 without embeddings)")
    parser.add_argument("--target-tokens-per-pair", type=float, default=1000.0, help="assumed: prompt + both completions")
    parser.add_argument("--target-val-pairs", type=int, default=2000, help="assumed validation pairs")
    parser.add_argument("--target-peak", type=float, default=H100_BF16, help="the device's dense matmul peak, FLOP/s")
    parser.add_argument("--no-record", action="store_true")
    parser.add_argument("overrides", nargs="*", help="train.py overrides for every stage (after --)")
    args = parser.parse_args()
    sizes = sorted(set(args.sizes))
    args.out.mkdir(parents=True, exist_ok=True)

    records = [measure_size(n, args.out, args.overrides) for n in sizes]
    params = decoder_parameters(args.overrides, args.out / "tokens")
    peak = matmul_peak()
    first, last = records[0], records[-1]
    split_first, split_last = stages(first), stages(last)

    rows = []
    for name, (seconds, grows_with) in split_last.items():
        row: dict[str, Any] = {"stage": name, "grows with": "-" if grows_with == "fixed" else f"{grows_with} pairs"}
        for record in records:
            row[f"{record['pairs']} pairs, s"] = stages(record)[name][0]
        row[f"growth b ({first['pairs']}->{last['pairs']})"] = growth(split_first[name][0], seconds, first["pairs"], last["pairs"])
        tokens = {"train": last["train_tokens"], "val": last["val_tokens"]}.get(grows_with)
        row["us per token"] = 1e6 * seconds / tokens if tokens else "-"
        rows.append(row)
    total = {"stage": "**total**", "grows with": ""}
    for record in records:
        total[f"{record['pairs']} pairs, s"] = sum(seconds for seconds, _ in stages(record).values())
    total[f"growth b ({first['pairs']}->{last['pairs']})"] = growth(
        total[f"{first['pairs']} pairs, s"], total[f"{last['pairs']} pairs, s"], first["pairs"], last["pairs"]
    )
    total["us per token"] = ""
    rows.append(total)
    table = markdown(rows)

    projection = project(
        last, params, peak, args.target_pairs, args.target_tokens_per_pair, args.target_val_pairs,
        args.target_params, args.target_peak,
    )
    assumptions = (
        f"Projection to {args.target_pairs:,} pairs x {args.target_tokens_per_pair:.0f} tokens (assumed), "
        f"{args.target_val_pairs:,} validation pairs (assumed), {args.target_params:.2g} decoder parameters, from "
        f"the {last['pairs']}-pair run ({params:.3g} decoder parameters, {last['train_tokens'] / last['pairs']:.0f} "
        f"tokens per pair): cost proportional to parameters x tokens (attention not modelled); on a device of "
        f"{args.target_peak:.3g} FLOP/s peak at the fraction of its peak this CPU reaches of its own "
        f"({peak / 1e9:.1f} GFLOP/s float32, measured now): optimistic for a GPU, whose large-model training "
        f"reaches 38-43% of its datasheet peak (Llama 3 on H100s), so up to ~1.5x longer there; memory not projected."
    )
    print(table + "\n\n" + markdown(projection) + "\n\n" + assumptions)
    if not args.no_record:
        settings = {
            "sizes": sizes, "overrides": args.overrides, "decoder_parameters": params,
            "tokens": {r["pairs"]: {"train": r["train_tokens"], "val": r["val_tokens"]} for r in records},
            "scores_from_cache": {r["pairs"]: r["score_from_cache"] for r in records},
        }
        append_result(
            f"Selection pipeline at {sizes[0]:,} to {sizes[-1]:,} pairs, and a projection to {args.target_pairs:,}",
            "python -m bench.scale " + " ".join(sys.argv[1:]),
            settings,
            table + "\n\n" + markdown(projection) + "\n\n" + assumptions,
            machine(),
        )


if __name__ == "__main__":
    main()
