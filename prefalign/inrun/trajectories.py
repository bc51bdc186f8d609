"""The TIF paper's IF-group trajectories, read off one run's in-run record.

The TIF paper (Zhang et al., ICLR 2026, Section 3, its Figure 1) splits the pairs into small, medium and large
influence and trains on each group: small-IF training "lowers the training loss while the evaluation loss rises and
the evaluation margin falls below zero", large-IF training overfits ("evaluation loss first decreases then rises,
while the reward margin keeps increasing"), medium-IF training improves both. One run with ``inrun=influence``
holds, for every step, each trained pair's IF, loss and margin, so the same groups can be followed without training
three runs::

    python -m prefalign.inrun.trajectories <run dir> [--by inrun_if_first] [--groups 3] [--smooth 5]

It writes ``<run>/inrun/if_groups.csv`` and ``<run>/inrun/if_groups.png``, three panels over the optimiser steps,
one line per group:

* the group's training loss and reward margin at each step (the mean over the group's pairs trained in it);
* the group's share of the predicted change of the validation loss, cumulated: ``-sum_t (lr_t / B_t) sum_{i in
  group, step t} IF_t(i)``. This is TracIn's first-order prediction for plain gradient descent (Pruthi et al.,
  NeurIPS 2020): what each group's part of every update does to the validation loss. It is a prediction, not a
  measurement: under AdamW the update is not ``-lr`` times the gradient, and the second-order terms are left out;
  the run's measured validation loss is in its TensorBoard curves (``val/loss``).

The groups are the ``--groups`` equal-count parts of the pairs ranked by a summary of the record (``--by``: the IF
at the first visit by default, the score the paper's offline groups are cut by).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from prefalign.inrun.record import SUMMARIES, read_records, summarise

log = logging.getLogger(__name__)

NAMES = {3: ("small", "medium", "large")}


def assign_groups(summary: pd.DataFrame, by: str = "inrun_if_first", groups: int = 3) -> pd.Series:
    """``pair_id -> group name``: equal-count parts of the pairs ranked by ``by`` (smallest first; sizes differing by
    at most one, the larger ones first, as :class:`~prefalign.selection.rules.GroupSelection` cuts)."""
    if by not in SUMMARIES:
        raise ValueError(f"--by must be one of {list(SUMMARIES)}, got {by!r}")
    if groups < 2:
        raise ValueError(f"--groups must be 2 or more, got {groups}")
    ranked = summary.dropna(subset=[by]).sort_values(by, kind="stable")
    names = NAMES.get(groups, tuple(f"group {k}" for k in range(groups)))
    labels = {}
    for name, part in zip(names, np.array_split(ranked["pair_id"].to_numpy(), groups)):
        labels.update(dict.fromkeys(part, name))
    return pd.Series(labels, name="group")


def group_trajectories(records: pd.DataFrame, groups: pd.Series) -> pd.DataFrame:
    """Per step and group: mean training ``loss`` and ``margin`` of the group's pairs trained in the step, their
    count, and ``predicted_val_change``, the cumulated ``-(lr_t / B_t) sum IF`` of the group (module docstring)."""
    frame = records.merge(groups, left_on="pair_id", right_index=True, how="inner")
    batch = records.groupby("step")["pair_id"].count().rename("batch")
    frame = frame.merge(batch, left_on="step", right_index=True)
    frame["contribution"] = -frame["lr"] / frame["batch"] * frame["influence"].fillna(0.0)
    per_step = (
        frame.groupby(["group", "step"], sort=True)
        .agg(loss=("loss", "mean"), margin=("margin", "mean"), pairs=("pair_id", "count"), contribution=("contribution", "sum"))
        .reset_index()
    )
    per_step["predicted_val_change"] = per_step.groupby("group")["contribution"].cumsum()
    return per_step.drop(columns="contribution")


def plot(trajectories: pd.DataFrame, path: Path, smooth: int = 1) -> Path:
    """The three panels (module docstring) as a PNG; ``smooth``: a rolling mean over that many steps of the loss and
    margin lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    panels = (
        ("loss", "training loss of the group's pairs"),
        ("margin", "reward margin of the group's pairs"),
        ("predicted_val_change", "predicted change of the validation loss\n(cumulated -lr/B x IF; first order)"),
    )
    for axis, (column, title) in zip(axes, panels):
        for group, part in trajectories.groupby("group", sort=False):
            values = part[column]
            if column != "predicted_val_change" and smooth > 1:
                values = values.rolling(smooth, min_periods=1).mean()
            axis.plot(part["step"], values, label=str(group))
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("optimiser step")
        axis.grid(alpha=0.3)
    axes[0].legend(title="IF group")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def write_trajectories(run: str | Path, by: str = "inrun_if_first", groups: int = 3, smooth: int = 5) -> dict[str, Path]:
    """The CSV and the figure of a run's IF-group trajectories (module docstring); returns their paths."""
    run = Path(run)
    records = read_records(run)
    labels = assign_groups(summarise(records), by, groups)
    trajectories = group_trajectories(records, labels)
    folder = run / "inrun" if (run / "inrun").is_dir() else run
    table = folder / "if_groups.csv"
    trajectories.to_csv(table, index=False)
    figure = plot(trajectories, folder / "if_groups.png", smooth)
    return {"table": table, "figure": figure}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m prefalign.inrun.trajectories", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("run", help="a training run trained with inrun=influence (or its inrun/ folder)")
    parser.add_argument("--by", default="inrun_if_first", help=f"the summary the groups are cut by: {', '.join(SUMMARIES)}")
    parser.add_argument("--groups", type=int, default=3, help="how many equal-count groups (3: small, medium, large)")
    parser.add_argument("--smooth", type=int, default=5, help="rolling mean over this many steps in the loss and margin panels")
    args = parser.parse_args(argv)
    paths = write_trajectories(args.run, args.by, args.groups, args.smooth)
    trajectories = pd.read_csv(paths["table"])
    last = trajectories.groupby("group", sort=False).tail(1).set_index("group")
    print(last[["step", "loss", "margin", "predicted_val_change"]].to_string(float_format=lambda x: f"{x:.4g}"))
    print(f"table: {paths['table']}\nfigure: {paths['figure']}")


if __name__ == "__main__":
    main()
