"""Validation curves of several training runs against optimiser steps: the TIF paper's Figure 1 (training on the
small, medium and large thirds of influence) and any other comparison of runs.

    python train.py -m select=if_group select.group=small,medium,large pipeline.restart_from=reference \\
        trainer.max_epochs=2 trainer.val_check_interval=4 logger=csv hydra.sweep.dir=multirun/if_groups
    python -m bench.curves multirun/if_groups --out bench/figures/if_groups.png

Reads each run's ``metrics.csv`` (``logger=csv``; the validation metrics are logged at every
``trainer.val_check_interval`` training batches), plots every ``--metrics`` column against the step, one panel
each, and appends the values at every validation step to ``bench/RESULTS.md``. Runs are named by their selection
rule, as in the sweep tables. Nothing is plotted at step 0: a policy started from the reference has, for DPO,
validation loss ln 2 and margin 0 there by construction.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from bench.common import append_result, machine
from prefalign.evaluation.tables import method_label, run_directories


def curves(run: Path, metrics: list[str]) -> pd.DataFrame:
    """The run's validation metrics by step, from its ``metrics.csv``."""
    files = sorted(run.glob("**/metrics.csv"))
    if not files:
        sys.exit(f"{run}: no metrics.csv (train with logger=csv)")
    frame = pd.read_csv(files[-1])
    missing = [name for name in metrics if name not in frame.columns]
    if missing:
        sys.exit(f"{files[-1]}: no column {missing} (available: {sorted(c for c in frame.columns if c.startswith('val'))})")
    return frame[["step", *metrics]].dropna(subset=metrics).groupby("step", as_index=False).last()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories, or sweep directories holding them")
    parser.add_argument("--metrics", nargs="+", default=["val/loss", "val/rewards/margins", "val/rewards/accuracies"])
    parser.add_argument("--out", type=Path, default=Path("curves.png"), help="the figure (PNG)")
    parser.add_argument("--title", default="validation curves")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = parser.parse_args()

    runs = [run for path in args.runs for run in run_directories(path)]
    data = {}
    for run in runs:
        label = method_label(json.loads((run / "metrics.json").read_text()))
        data[label if label not in data else f"{label} ({run.name})"] = curves(run, args.metrics)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(args.metrics), figsize=(4.6 * len(args.metrics), 3.6), squeeze=False)
    for axis, metric in zip(axes[0], args.metrics):
        for label, frame in data.items():
            axis.plot(frame["step"], frame[metric], marker="o", markersize=3, label=label)
        axis.set_xlabel("optimiser step")
        axis.set_title(metric)
        if metric == "val/rewards/margins":
            axis.axhline(0, color="grey", linewidth=0.8, linestyle="--")
    axes[0][0].legend(fontsize=8)
    figure.suptitle(args.title)
    figure.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=120)
    plt.close(figure)

    lines = []
    for metric in args.metrics:
        steps = sorted({int(step) for frame in data.values() for step in frame["step"]})
        lines += [f"{metric} by step", "", "| run | " + " | ".join(str(s) for s in steps) + " |",
                  "| --- |" + " --- |" * len(steps)]
        for label, frame in data.items():
            values = dict(zip(frame["step"].astype(int), frame[metric]))
            lines.append(f"| {label} | " + " | ".join(f"{values[s]:.3f}" if s in values else "-" for s in steps) + " |")
        lines.append("")
    table = "\n".join(lines)
    print(table)
    print(f"figure: {args.out}")
    if not args.no_record:
        command = "python -m bench.curves " + " ".join(str(r) for r in args.runs) + f" --out {args.out}"
        append_result(args.title, command, {"runs": [str(r) for r in runs], "metrics": args.metrics}, table, machine())


if __name__ == "__main__":
    main()
