"""Label-noise detection at several noise levels: every score's AUROC and AUPRC for the flipped and the ambiguous
pairs, on the data as it ships and with more of its labels flipped at load time.

    python -m bench.noise [--flips 0 0.1 0.2 0.4] [--scores influence lossdiff irm ...] [--work bench-noise] \
        [--scored 0=<scores folder>] [--overrides experiment-wide train.py overrides ...] [--no-record]

For each flip fraction ``f`` (``data.flip_fraction``: that share of the pairs not flipped already gets chosen and
rejected swapped, and is marked flipped in the ground truth), three stage commands, each skipped once its output
exists (so a cut run resumes where it stopped; the scoring stage resumes its own shards):

1. ``train.py data.flip_fraction=f``: the warm-up, one epoch on all pairs (the selection pipeline's warm-up);
2. ``score.py policy=<warm-up> data.flip_fraction=f scores=[...]``: every score of every pair;
3. ``select.py scores=<scores> analyze=true``: the detection table (:func:`prefalign.selection.analysis.detection_table`,
   AUROC and AUPRC with bootstrap intervals over pairs) and the ROC curves (``plots/roc_*.png``).

``--scored f=PATH`` takes the scores of a setting from an earlier run instead (a pipeline's ``<run>/score``, say),
so the built-in setting can reuse the test bed's scores. Writes ``detection.csv`` (every setting's rows),
``detection.png`` (AUROC against the flip fraction, one line per score, with intervals) under ``--work``, prints
the table and appends it to ``bench/RESULTS.md`` unless ``--no-record``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from bench.common import append_result, machine, markdown, run_stage

SCORES = ["influence", "lossdiff", "irm", "annotator", "bees_implicit", "random", "projection", "ekfac"]


def stage(command: list[str], done: Path, log: Path) -> float:
    """Run one stage command (``python <script> <overrides>``, :func:`bench.common.run_stage`) unless ``done``
    exists; its seconds (0 if skipped)."""
    return 0.0 if done.exists() else run_stage([sys.executable, *command], log)


def setting_dir(work: Path, flip: float) -> Path:
    return work / f"flip_{flip:g}"


def detect(flip: float, scores: list[str], overrides: list[str], work: Path, scored: Path | None) -> tuple[Path, float]:
    """The three stages of one noise setting; the folder of its analysis and the seconds they took."""
    folder = setting_dir(work, flip)
    folder.mkdir(parents=True, exist_ok=True)
    flips = [f"data.flip_fraction={flip}"]
    seconds = 0.0
    if scored is None:
        warmup, scored = folder / "warmup", folder / "score"
        seconds += stage(["train.py", *overrides, *flips, f"hydra.run.dir={warmup}", "ckpt_path=last"],
                         warmup / "metrics.json", folder / "warmup.log")
        seconds += stage(["score.py", *overrides, *flips, f"policy={warmup}", f"scores=[{','.join(scores)}]",
                          f"hydra.run.dir={scored}"], scored / "scores.parquet", folder / "score.log")
    analysis = folder / "analysis"
    seconds += stage(["select.py", f"scores={scored}", "analyze=true", f"hydra.run.dir={analysis}"],
                     analysis / "detection.csv", folder / "analysis.log")
    return analysis, seconds


def interval(row: pd.Series, name: str) -> str:
    return f"{row[name]:.3f} [{row[f'{name}_low']:.3f}, {row[f'{name}_high']:.3f}]"


def plot_detection(table: pd.DataFrame, path: Path) -> Path:
    """AUROC (of each score's flagging end) against the flip fraction, one line per score, one panel per target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = sorted(table["target"].unique())
    figure, axes = plt.subplots(1, len(targets), figsize=(5 * len(targets), 4), squeeze=False)
    for axis, target in zip(axes[0], targets):
        for score, rows in table[table["target"] == target].groupby("score", sort=True):
            rows = rows.sort_values("flip_fraction")
            flagged = rows["flagging_end"].eq("low")
            # the flagging end's AUROC: max(AUROC, 1 - AUROC), its interval flipped alike
            value = rows["auroc"].where(~flagged, 1 - rows["auroc"])
            low = rows["auroc_low"].where(~flagged, 1 - rows["auroc_high"])
            high = rows["auroc_high"].where(~flagged, 1 - rows["auroc_low"])
            axis.errorbar(rows["flip_fraction"], value, yerr=[value - low, high - value], marker="o", capsize=3,
                          label=score)
        axis.axhline(0.5, color="grey", linestyle=":")
        axis.set_xlabel("flip fraction added at load time")
        axis.set_ylabel("AUROC (flagging end)")
        axis.set_title(f"detecting {target.replace('_', ' ')} pairs", fontsize=9)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flips", nargs="+", type=float, default=[0.0, 0.1, 0.2, 0.4],
                        help="load-time flip fractions (data.flip_fraction), 0 for the data as it ships")
    parser.add_argument("--scores", nargs="+", default=SCORES, help="the scores (conf/score/ names)")
    parser.add_argument("--work", type=Path, default=Path("bench-noise"), help="the runs and outputs")
    parser.add_argument("--scored", nargs="*", default=[], metavar="FLIP=PATH",
                        help="a setting's scores from an earlier run (a scores.parquet folder) instead of computing them")
    parser.add_argument("--overrides", nargs="*", default=[], help="overrides of the warm-up and the scoring")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to bench/RESULTS.md")
    args = parser.parse_args()

    given: dict[float, Path] = {}
    for item in args.scored:
        flip, sep, path = item.partition("=")
        if not sep or not Path(path).exists():
            sys.exit(f"--scored {item!r}: expected FLIP=PATH with an existing scores folder")
        given[float(flip)] = Path(path)
    frames, seconds = [], {}
    for flip in args.flips:
        analysis, seconds[flip] = detect(flip, args.scores, args.overrides, args.work, given.get(flip))
        frame = pd.read_csv(analysis / "detection.csv")
        frames.append(frame.assign(flip_fraction=flip))
        print(f"flip {flip:g}: {analysis} ({seconds[flip]:.0f} s)", flush=True)
    table = pd.concat(frames, ignore_index=True)
    table.to_csv(args.work / "detection.csv", index=False)
    plot = plot_detection(table[table["auroc"].notna()], args.work / "detection.png")
    rows = []
    for (score, target), group in table[table["auroc"].notna()].groupby(["score", "target"], sort=True):
        row = {"score": score, "target": target}
        for _, setting in group.sort_values("flip_fraction").iterrows():
            label = f"+{setting['flip_fraction']:g} flipped"
            row[f"{label}: positives/pairs"] = f"{setting['positives']}/{setting['pairs']}"
            row[f"{label}: AUROC"] = f"{interval(setting, 'auroc')} ({setting['flagging_end']})"
            row[f"{label}: AUPRC (chance)"] = f"{interval(setting, 'auprc')} ({setting['chance_auprc']:.3f})"
        rows.append(row)
    text = markdown(rows)
    print(text)
    print(f"plot: {plot}")
    if not args.no_record:
        append_result("Label-noise detection at several flip fractions", "python -m bench.noise " + " ".join(sys.argv[1:]),
                      {"flips": args.flips, "scores": args.scores, "overrides": args.overrides,
                       "stage seconds": {f"{k:g}": round(v) for k, v in seconds.items()},
                       "interval": "percentile bootstrap 95% over pairs"}, text, machine())


if __name__ == "__main__":
    main()
