"""The linear datamodeling score (LDS) of every score: does a score, summed over a subset, predict what training on
that subset does?

    # scores of the pairs (any score.py run, or a pipeline's warm-up scores), then the subsets
    python score.py scores=[influence,lossdiff,irm,random] policy=<warm-up run>
    python -m bench.lds --scores <scores.parquet> [--subsets 16] [--alpha 0.5] [--work bench-lds] \
        [--targets val test_pairs] [--test-pairs 1000] [--selection tif=<selection.json>] [--no-record] \
        [--overrides model=tiny_llama ...]

TRAK's protocol (Park et al., ICML 2023), as dattri and bergson run it, on preference pairs:

1. ``M`` random subsets ``S_j`` of the scored pairs, each a fraction ``alpha`` of them (drawn one after the other
   from ``--subset-seed``: a larger ``M`` keeps the first subsets);
2. each trained as ``python train.py data.selection=<S_j>`` with the same settings (``--overrides``), from the
   same initial weights, with the same ``seed`` (seeds tied: the subsets alone differ);
3. each policy measured on the clean validation pairs (``val``) and, on the built-in data, on the first
   ``--test-pairs`` held-out pairs of the test prompts (``test_pairs``): mean DPO-family loss and reward accuracy
   (:func:`prefalign.evaluation.policy.heldout_values`, the validation step's own values);
4. every score's prediction ``g(S_j) = sum_{d in S_j} tau(d)`` and its LDS, the Spearman correlation of the
   predictions with the measured improvement (minus the loss; the accuracy) over the subsets, with a bootstrap
   interval over subsets (:func:`prefalign.selection.analysis.linear_datamodeling_score`). A positive LDS: a
   higher total score, a better subset.

Trainings and measurements are cached under ``--work``: each subset's run folder is named by a key of the
training overrides and its pairs (a finished run is read back, a cut one resumes from its last checkpoint), and
the measurements are kept in ``measured.json``; so adding a score, a scores file or a subset trains only what is
new. ``--selection NAME=PATH`` trains a rule's own selection the same way (a band is not additive: it has no
prediction to correlate) and places its outcome among the random subsets' (the share of them it beats).

Writes ``lds.csv``, ``lds.png`` (LDS per score with intervals, one panel per target) and ``subsets.csv`` (each
subset's predictions and outcomes) under ``--work``; prints the table and appends it to ``bench/RESULTS.md``
unless ``--no-record``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bench.common import append_result, machine, markdown, train_config
from bench.paired import heldout_config
from prefalign.atomic import write_json
from prefalign.data.scores_file import read_scores
from prefalign.selection.analysis import (
    linear_datamodeling_score, plot_lds, score_labels, subset_percentile, subset_predictions,
)
from prefalign.selection.rules import Selection

# what each policy is measured by, and the sign that makes it an improvement
METRICS = (("loss", -1.0), ("accuracy", 1.0))


def draw_subsets(pair_ids: list[str], count: int, alpha: float, seed: int) -> list[list[str]]:
    """``count`` random subsets of ``round(alpha * n)`` pairs each, drawn one after the other from ``seed`` (the
    first subsets do not depend on ``count``); each in the pairs' sorted order."""
    if not 0 < alpha < 1:
        raise ValueError(f"--alpha must be in (0, 1), got {alpha}")
    ordered = sorted(pair_ids)
    size = max(1, round(alpha * len(ordered)))
    generator = np.random.default_rng(seed)
    return [sorted(ordered[i] for i in generator.choice(len(ordered), size, replace=False)) for _ in range(count)]


def run_key(overrides: list[str], pairs: list[str]) -> str:
    """The folder name of one subset's training: its overrides and its pairs."""
    text = json.dumps({"overrides": overrides, "pairs": sorted(pairs)})
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def train_subset(
    name: str, pairs: list[str], overrides: list[str], work: Path, data_fingerprint: str, total: int
) -> Path:
    """One training on ``pairs``, cached: a finished run folder is returned as it is, a cut one resumes."""
    from prefalign.stages.train import run_training

    run_dir = work / "runs" / run_key(overrides, pairs)
    if (run_dir / "metrics.json").exists():
        return run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    selection = run_dir / "selection.json"
    if not selection.exists():  # the record select.py writes, read by data.selection
        record = Selection(kept=pairs, rule=name, thresholds={}, total=total).to_dict()
        write_json({**record, "data_fingerprint": data_fingerprint}, selection)
    start = time.perf_counter()
    cfg = train_config([*overrides, f"data.selection={selection}", "ckpt_path=last"], run_dir)
    run_training(cfg)
    print(f"{name}: trained on {len(pairs)} pairs in {time.perf_counter() - start:.0f} s", flush=True)
    return run_dir


def measure(run_dir: Path, targets: list[str], test_pairs: int, cache_dir: Path) -> dict[str, float]:
    """Mean loss and reward accuracy of a run's policy on each target (``val``, ``test_pairs``)."""
    from prefalign.evaluation.policy import heldout_values, load_checkpoint

    policy = None
    out: dict[str, float] = {}
    for target in targets:
        cfg = heldout_config(run_dir, target)
        if policy is None:
            policy = load_checkpoint(run_dir, cfg.model.dtype)[0].eval()
        values = heldout_values(cfg, policy, cache_dir, limit=None if target == "val" else test_pairs)
        out[f"{target}/loss"] = float(np.mean(values["loss"]))
        out[f"{target}/accuracy"] = float(np.mean(values["rewards/accuracies"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scores", nargs="+", required=True, help="scores.parquet files (or folders holding one)")
    parser.add_argument("--subsets", type=int, default=16, help="M, the random subsets trained")
    parser.add_argument("--alpha", type=float, default=0.5, help="each subset's fraction of the pairs")
    parser.add_argument("--subset-seed", type=int, default=0, help="the seed the subsets are drawn from")
    parser.add_argument("--work", default="bench-lds", help="the trainings, measurements and outputs")
    parser.add_argument("--targets", nargs="+", default=["val"], choices=["val", "test_pairs"],
                        help="what each policy is measured on")
    parser.add_argument("--test-pairs", type=int, default=1000, help="held-out pairs of test_pairs measured")
    parser.add_argument("--selection", nargs="*", default=[], metavar="NAME=PATH",
                        help="a rule's selection.json, trained and placed among the random subsets")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap draws of the subsets")
    parser.add_argument("--overrides", nargs="*", default=[], help="train.py overrides of every subset's training")
    parser.add_argument("--no-record", action="store_true", help="print only; do not append to bench/RESULTS.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.subsets < 3:
        sys.exit("--subsets must be at least 3 (a rank correlation over fewer subsets means nothing)")

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    frames, labels, fingerprints = [], {}, set()
    for path in args.scores:
        frame, provenance = read_scores(path)
        fingerprint = provenance.get("data_fingerprint")
        if not fingerprint:
            sys.exit(f"{path}: the scores file records no data_fingerprint (is it written by score.py?)")
        fingerprints.add(fingerprint)
        labels.update(score_labels([c for c in frame.columns if c != "pair_id"], provenance))
        frames.append(frame.set_index("pair_id"))
    if len(fingerprints) > 1:
        sys.exit(f"the scores files were computed on different pairs (data fingerprints {sorted(fingerprints)})")
    scores = pd.concat(frames, axis=1, join="inner")
    repeated = scores.columns[scores.columns.duplicated()].tolist()
    if repeated:
        sys.exit(f"the scores files share the columns {repeated}; give each score once")
    scores = scores.reset_index()
    (data_fingerprint,) = fingerprints
    pair_ids = scores["pair_id"].tolist()
    subsets = draw_subsets(pair_ids, args.subsets, args.alpha, args.subset_seed)

    cfg = train_config(args.overrides, work / "probe")
    cache_dir = Path(cfg.paths.cache_dir)
    record_path = work / "measured.json"
    measured: dict[str, dict[str, float]] = json.loads(record_path.read_text()) if record_path.exists() else {}

    def outcome(name: str, pairs: list[str]) -> dict[str, float]:
        run_dir = train_subset(name, pairs, args.overrides, work, data_fingerprint, len(pair_ids))
        key = f"{run_dir.name}:{','.join(args.targets)}:{args.test_pairs}"
        if key not in measured:
            measured[key] = measure(run_dir, args.targets, args.test_pairs, cache_dir)
            write_json(measured, record_path)
        return measured[key]

    start = time.perf_counter()
    outcomes = pd.DataFrame([outcome(f"subset {j}", subset) for j, subset in enumerate(subsets)])
    seconds = time.perf_counter() - start
    predictions = subset_predictions(scores, subsets)
    pd.concat([predictions.add_prefix("predicted/"), outcomes.add_prefix("measured/")], axis=1).to_csv(
        work / "subsets.csv", index_label="subset")

    rows = []
    for column in predictions.columns:
        for target in args.targets:
            for metric, sign in METRICS:
                result = linear_datamodeling_score(predictions[column], sign * outcomes[f"{target}/{metric}"],
                                                   resamples=args.resamples)
                rows.append({"score": labels.get(column, column), "column": column, "target": f"{target} {metric}",
                             **result})
    table = pd.DataFrame(rows)
    table.to_csv(work / "lds.csv", index=False)
    figure = plot_lds(table, work)
    shown = [{"score": row.score, "target": row.target, "LDS [95% CI]": f"{row.lds:+.2f} [{row.ci_low:+.2f}, {row.ci_high:+.2f}]"}
             for row in table.itertuples()]
    text = markdown(shown)
    placed = []
    for item in args.selection:
        name, _, path = item.partition("=")
        if not path:
            sys.exit(f"--selection {item}: give NAME=PATH")
        file = Path(path) / "selection.json" if Path(path).is_dir() else Path(path)
        kept = json.loads(file.read_text())["kept"]
        result = outcome(name, sorted(kept))
        for target in args.targets:
            for metric, sign in METRICS:
                column = f"{target}/{metric}"
                placed.append({"selection": name, "pairs": len(kept), "target": f"{target} {metric}",
                               "measured": round(result[column], 4),
                               "beats (share of random subsets)": round(subset_percentile(
                                   sign * result[column], sign * outcomes[column]), 3)})
    if placed:
        text += "\n\n" + markdown(placed)
    spread = {column: f"{outcomes[column].mean():.4f} +- {outcomes[column].std():.4f}" for column in outcomes.columns}
    text += f"\n\nRandom subsets' outcomes (mean +- sd over {len(subsets)}): {json.dumps(spread)}"
    print(text)
    print(f"figure: {figure}; per subset: {work / 'subsets.csv'}")
    settings = {"subsets": len(subsets), "alpha": args.alpha, "pairs": len(pair_ids), "subset_pairs": len(subsets[0]),
                "targets": args.targets, "test_pairs": args.test_pairs, "overrides": args.overrides,
                "scores": args.scores, "wall_s_trainings_and_measurements": round(seconds, 1)}
    if not args.no_record:
        append_result("LDS: how well each score predicts what training on a subset does",
                      "python -m bench.lds " + " ".join(sys.argv[1:]), settings, text, machine())


if __name__ == "__main__":
    main()
