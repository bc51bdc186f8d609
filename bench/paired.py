"""Paired comparison of trained policies on the same held-out pairs: which selection rule beats which, with an
interval that resolves small differences.

    python -m bench.paired --baseline outputs/full outputs/oracle outputs/random [--resamples 2000]

Every run's policy is scored on its validation pairs (the built-in set: 300 clean pairs) with the validation
step's own per-pair values (:func:`prefalign.evaluation.policy.heldout_values`): reward accuracy
(``beta * h > 0``) and reward margin. Each run gets its own bootstrap interval, and each run against the
baseline the paired difference (:func:`prefalign.evaluation.metrics.paired_difference`: the pairs resampled
jointly), which removes the variance the two policies share through the pairs. The block goes to
``bench/RESULTS.md``.

``--val test_pairs`` (runs on ``data=builtin``) scores the ~4,300 clean programmatic pairs on the 300 test
prompts instead (:mod:`prefalign.data.builtin.heldout_pairs`): 14x the pairs, so narrower intervals (by less than
sqrt(14), since the pairs of one prompt are correlated); their reference log-probs are computed once and cached.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bench.common import append_result, machine, markdown
from prefalign.evaluation.metrics import bootstrap, paired_difference
from prefalign.evaluation.policy import heldout_values, load_checkpoint, run_config


def values_of(run: Path, cache_dir: Path, val: str) -> dict[str, list]:
    cfg = run_config(run)
    if cfg is None:
        sys.exit(f"{run}: not a prefalign run directory (no config.yaml)")
    if val != "val":  # the built-in set's held-out pairs on the test prompts instead of the run's validation pairs
        if not str(cfg.data.source.get("_target_", "")).endswith("BuiltinSource"):
            sys.exit(f"{run}: --val {val} needs a run on data=builtin")
        cfg.data.source.val = val
        cfg.data.max_val_pairs = None
    policy = load_checkpoint(run, cfg.model.dtype)[0].eval()
    return heldout_values(cfg, policy, cache_dir)


def interval(result: dict, scale: float = 1.0) -> str:
    return f"{scale * result['value']:.2f} [{scale * result['ci_low']:.2f}, {scale * result['ci_high']:.2f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories to compare with the baseline")
    parser.add_argument("--baseline", type=Path, required=True, help="the run every other is compared with")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache"), help="reference log-prob cache")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--val", default="val", choices=["val", "test_pairs"],
                        help="the runs' validation pairs (val) or, for data=builtin, the ~4,300 clean pairs on the test "
                             "prompts (test_pairs, prefalign/data/builtin/heldout_pairs.py)")
    parser.add_argument("--no-record", action="store_true", help="print only, do not append to bench/RESULTS.md")
    args = parser.parse_args()

    base = values_of(args.baseline, args.cache_dir, args.val)
    rows = [{"run": str(args.baseline), "pairs": len(base["pair_id"]),
             "accuracy_%": interval(bootstrap(base["rewards/accuracies"], resamples=args.resamples), 100),
             "margin": interval(bootstrap(base["rewards/margins"], resamples=args.resamples)),
             "accuracy_diff_pts": "baseline", "margin_diff": "baseline", "better/worse pairs": ""}]
    for run in args.runs:
        values = values_of(run, args.cache_dir, args.val)
        if values["pair_id"] != base["pair_id"]:
            sys.exit(f"{run} was validated on other pairs than {args.baseline}: no paired comparison")
        accuracy = paired_difference(values["rewards/accuracies"], base["rewards/accuracies"], args.resamples)
        margin = paired_difference(values["rewards/margins"], base["rewards/margins"], args.resamples)
        rows.append({"run": str(run), "pairs": len(values["pair_id"]),
                     "accuracy_%": interval(bootstrap(values["rewards/accuracies"], resamples=args.resamples), 100),
                     "margin": interval(bootstrap(values["rewards/margins"], resamples=args.resamples)),
                     "accuracy_diff_pts": interval(accuracy, 100), "margin_diff": interval(margin),
                     "better/worse pairs": f"{accuracy['first_better']}/{accuracy['second_better']}"})
        print(rows[-1], flush=True)
    table = markdown(rows)
    print(table)
    if not args.no_record:
        command = "python -m bench.paired " + " ".join(sys.argv[1:])
        append_result("Paired held-out comparison of policies", command,
                      {"resamples": args.resamples, "val": args.val, "interval": "percentile bootstrap 95%, pairs resampled jointly"},
                      table, machine())


if __name__ == "__main__":
    main()
