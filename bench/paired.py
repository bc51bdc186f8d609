"""Paired comparison of trained policies on the same held-out pairs: which selection rule beats which, with an
interval that resolves small differences.

    python -m bench.paired --baseline outputs/full outputs/oracle outputs/random [--resamples 2000]
    python -m bench.paired --baseline full_s0,full_s1,full_s2 tif_s0,tif_s1,tif_s2      # over training seeds
    python -m bench.paired --sweep multirun/testbed_seeds --plot paired.png             # a sweep, by method

Every run's policy is scored on its validation pairs (the built-in set: 300 clean pairs) with the validation
step's own per-pair values (:func:`prefalign.evaluation.policy.heldout_values`): reward accuracy
(``beta * h > 0``) and reward margin. Each run gets its own bootstrap interval, and each run against the
baseline the paired difference (:func:`prefalign.evaluation.metrics.paired_difference`: the pairs resampled
jointly), which removes the variance the two policies share through the pairs. The block goes to
``bench/RESULTS.md``.

An argument that lists several run directories separated by commas is one method trained with several seeds
(each run's ``seed`` from its ``config.yaml``): its row is the mean over seeds and pairs with a two-way bootstrap
interval (seeds and pairs resampled, :func:`prefalign.evaluation.metrics.two_way_bootstrap`), and its difference
from the baseline is paired on the seeds and pairs both have
(:func:`prefalign.evaluation.metrics.hierarchical_paired_difference`).

``--sweep DIR`` groups the runs of a multirun folder by method (the rule's label, the loss where it is not
``--baseline``'s, default DPO) and compares each with the sweep's Full Data runs, so a seeds sweep needs no list
of folders. Each run's per-pair values are kept in its ``eval/heldout-<val>.json``, keyed by the policy's files
and settings: a second comparison measures nothing again. Every row also shows each seed's accuracy, the seed
spread, ``sd_seed`` (the training noise of the difference beyond what the pairs explain) and the smallest
difference the comparison's design resolves at 80% power
(:func:`prefalign.evaluation.metrics.minimum_detectable_difference`); ``--plot`` draws the differences as a forest
plot.

``--val test_pairs`` (runs on ``data=builtin``) scores the ~4,300 clean programmatic pairs on the 300 test
prompts instead (:mod:`prefalign.data.builtin.heldout_pairs`): 14x the pairs, so narrower intervals (by less than
sqrt(14), since the pairs of one prompt are correlated); their reference log-probs are computed once and cached.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from bench.common import append_result, machine, markdown
from prefalign.evaluation.metrics import (
    hierarchical_paired_difference, minimum_detectable_difference, two_way_bootstrap, variance_components,
)
from prefalign.evaluation.policy import heldout_values, load_checkpoint, run_config
from prefalign.evaluation.tables import ROW_ORDER, method_label, plot_paired, run_directories
from prefalign.heldout_record import read_values, write_values
from prefalign.selection.rules import FullSelection


def heldout_config(run: Path, val: str) -> DictConfig:
    """A run's config, its validation pairs ``val``: its own (``val``), or the built-in set's held-out pairs on the
    test prompts (``test_pairs``)."""
    cfg = run_config(run)
    if cfg is None:
        sys.exit(f"{run}: not a prefalign run directory (no config.yaml)")
    if val != "val":  # the built-in set's held-out pairs on the test prompts instead of the run's validation pairs
        if not str(cfg.data.source.get("_target_", "")).endswith("BuiltinSource"):
            sys.exit(f"{run}: measuring on {val} needs a run on data=builtin (its held-out pairs of the test prompts)")
        cfg.data.source.val = val
        cfg.data.max_val_pairs = None
    return cfg


def values_of(run: Path, cache_dir: Path, val: str) -> dict[str, list]:
    """A run's per-pair held-out values on ``val``: those kept in ``<run>/eval/heldout-<val>.json`` for its present
    policy and settings (:mod:`prefalign.heldout_record`; a training run keeps its last validation's), else
    computed and kept there."""
    cfg = heldout_config(run, val)
    values = read_values(run, cfg, val)
    if values is None:
        policy = load_checkpoint(run, cfg.model.dtype)[0].eval()
        values = heldout_values(cfg, policy, cache_dir)
        write_values(run, cfg, val, values)
    return values


def interval(result: dict, scale: float = 1.0) -> str:
    return f"{scale * result['value']:.2f} [{scale * result['ci_low']:.2f}, {scale * result['ci_high']:.2f}]"


def seeded_values(name: str, runs: list[Path], cache_dir: Path, val: str) -> dict[int, dict[str, list]]:
    """The per-pair values of each run of one method, by the seed its config records."""
    out: dict[int, dict[str, list]] = {}
    for run in runs:
        cfg = run_config(run)
        seed = int(cfg.seed) if cfg is not None and "seed" in cfg else len(out)
        if seed in out:
            sys.exit(f"{name}: two runs with seed {seed} ({run} and another); a method has one run per training seed")
        out[seed] = values_of(run, cache_dir, val)
    return out


def matrix(values: dict[int, dict[str, list]], seeds: list[int], key: str) -> list[list[float]]:
    return [values[seed][key] for seed in seeds]


def group(text: str) -> tuple[str, list[Path]]:
    """A command-line method: comma-separated run folders (one per seed), named by the folder name they share
    (``s0/tif,s1/tif`` -> ``tif``), else by the text."""
    runs = [Path(part) for part in text.split(",")]
    names = {run.name for run in runs}
    return (names.pop() if len(names) == 1 else text), runs


def loss_name(run: Path) -> str:
    """The loss a run trained with, as ``metrics.json`` names it (``DPO``, ``rDPO``), else from its config's loss
    class: one label for the table's groups and the plot's."""
    metrics = run / "metrics.json"
    if metrics.exists():
        return json.loads(metrics.read_text())["run"]["loss"].removesuffix("Loss")
    cfg = run_config(run)
    return str(cfg.loss.get("_target_", "")).rsplit(".", 1)[-1].removesuffix("Loss") if cfg is not None else ""


def sweep_groups(sweep: Path, baseline: str) -> tuple[tuple[str, list[Path]], list[tuple[str, list[Path]]]]:
    """The runs of a sweep grouped by method (the label of their selection rule, the loss where it is not the
    baseline's, the requested ``select.keep_fraction`` where a rule has several), whatever their folder names:
    ``train.py -m experiment=testbed seed=0,1,2`` gives one group per rule with three runs each. The baseline is
    the Full Data group with the loss ``baseline``."""
    groups: dict[tuple[str, str, float | None], list[Path]] = {}
    for run in run_directories(sweep):
        metrics = json.loads((run / "metrics.json").read_text())
        cfg = run_config(run)
        fraction = cfg.select.get("keep_fraction") if cfg is not None and metrics.get("selection") else None
        key = (method_label(metrics), loss_name(run), fraction)
        groups.setdefault(key, []).append(run)
    base_key = next((key for key in groups if key[0] == FullSelection.label and key[1] == baseline), None)
    if base_key is None:
        sys.exit(f"{sweep}: no {FullSelection.label} run with the loss {baseline} to compare with "
                 f"(methods: {sorted(key[:2] for key in groups)})")
    fractions: dict[str, set] = {}
    for method, _, fraction in groups:
        fractions.setdefault(method, set()).add(fraction)

    def name(method: str, loss: str, fraction: float | None) -> str:
        text = method if loss == baseline else f"{method} ({loss})"
        return f"{text} at {fraction:g}" if len(fractions[method]) > 1 and fraction is not None else text

    # the papers' row order (the evaluation tables'), the baseline's loss first within a rule
    order = {label: rank for rank, label in enumerate(ROW_ORDER)}
    base_runs = groups.pop(base_key)
    keys = sorted(groups, key=lambda key: (order.get(key[0], order.get(key[0].split(" ")[0], len(order))), key[0],
                                           key[1] != baseline, key[1], key[2] or 0.0))
    return (name(*base_key), base_runs), [(name(*key), groups[key]) for key in keys]


def per_seed(values: dict[int, dict[str, list]], key: str, scale: float) -> str:
    """Each seed's mean (in seed order) and, with several seeds, their standard deviation: the training noise."""
    means = [scale * statistics.fmean(values[seed][key]) for seed in sorted(values)]
    spread = f" (sd {statistics.stdev(means):.1f})" if len(means) > 1 else ""
    return " / ".join(f"{m:.1f}" for m in means) + spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="run directories to compare with the baseline (a,b,c: one method, "
                                                "one run per training seed)")
    parser.add_argument("--baseline", help="the run (or comma-separated runs, one per seed) every other is compared "
                                           "with; with --sweep, the baseline's loss (default DPO)")
    parser.add_argument("--sweep", type=Path, default=None,
                        help="a multirun folder: every run in it, grouped by method (rule and loss) over its seeds")
    parser.add_argument("--cache-dir", type=Path, default=Path(".cache"), help="reference log-prob cache")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--val", default="val", choices=["val", "test_pairs"],
                        help="the runs' validation pairs (val) or, for data=builtin, the ~4,300 clean pairs on the test "
                             "prompts (test_pairs, prefalign/data/builtin/heldout_pairs.py)")
    parser.add_argument("--plot", type=Path, default=None,
                        help="write a forest plot of the paired accuracy differences with their intervals (PNG)")
    parser.add_argument("--no-record", action="store_true", help="print only, do not append to bench/RESULTS.md")
    args = parser.parse_args()
    if args.sweep is not None:
        if args.runs:
            sys.exit("--sweep compares the runs of the sweep: give no run folders with it")
        baseline, methods = sweep_groups(args.sweep, args.baseline or "DPO")
    elif args.baseline and args.runs:
        baseline, methods = group(args.baseline), [group(text) for text in args.runs]
    else:
        sys.exit("give --baseline and the runs to compare with it, or --sweep")

    base = seeded_values(*baseline, args.cache_dir, args.val)
    base_seeds = sorted(base)
    pair_ids = base[base_seeds[0]]["pair_id"]
    if any(base[seed]["pair_id"] != pair_ids for seed in base_seeds):
        sys.exit(f"{baseline[0]}: its runs were validated on different pairs")

    def own(values: dict[int, dict[str, list]], key: str, scale: float = 1.0) -> str:
        return interval(two_way_bootstrap(matrix(values, sorted(values), key), resamples=args.resamples), scale)

    rows = [{"run": baseline[0], "seeds": len(base), "pairs": len(pair_ids),
             "accuracy_%": own(base, "rewards/accuracies", 100),
             "accuracy per seed %": per_seed(base, "rewards/accuracies", 100), "margin": own(base, "rewards/margins"),
             "accuracy_diff_pts": "baseline", "margin_diff": "baseline", "better/worse pairs": "",
             "sd_seed pts": "", "resolvable pts": ""}]
    differences = []
    base_cfg = run_config(baseline[1][0])
    model = str(base_cfg.model.get("name", ""))
    loss = loss_name(baseline[1][0]).lower()
    for name, runs in methods:
        values = seeded_values(name, runs, args.cache_dir, args.val)
        if any(v["pair_id"] != pair_ids for v in values.values()):
            sys.exit(f"{name} was validated on other pairs than {baseline[0]}: no paired comparison")
        if len(values) == 1 and len(base) == 1:  # one run against one run: paired on the pairs, whatever the seeds
            values = {base_seeds[0]: next(iter(values.values()))}
        seeds = sorted(set(values) & set(base))
        if not seeds:
            sys.exit(f"{name} shares no training seed with {baseline[0]}: no paired comparison")
        accuracy = hierarchical_paired_difference(matrix(values, seeds, "rewards/accuracies"),
                                                  matrix(base, seeds, "rewards/accuracies"), args.resamples)
        margin = hierarchical_paired_difference(matrix(values, seeds, "rewards/margins"),
                                                matrix(base, seeds, "rewards/margins"), args.resamples)
        # the power of this comparison's design: its two noise sources and the smallest difference it resolves
        noise = variance_components([[a - b for a, b in zip(x, y)] for x, y in zip(
            matrix(values, seeds, "rewards/accuracies"), matrix(base, seeds, "rewards/accuracies"))])
        resolvable = minimum_detectable_difference(noise["sd_item"], len(pair_ids), noise["sd_seed"]
                                                   if len(seeds) > 1 else 0.0, len(seeds))
        rows.append({"run": name, "seeds": len(values), "pairs": len(pair_ids),
                     "accuracy_%": own(values, "rewards/accuracies", 100),
                     "accuracy per seed %": per_seed(values, "rewards/accuracies", 100),
                     "margin": own(values, "rewards/margins"),
                     "accuracy_diff_pts": interval(accuracy, 100), "margin_diff": interval(margin),
                     "better/worse pairs": f"{accuracy['first_better']}/{accuracy['second_better']}",
                     "sd_seed pts": f"{100 * noise['sd_seed']:.1f}" if len(seeds) > 1 else "",
                     "resolvable pts": f"{100 * resolvable:.1f}"})
        differences.append({"model": model, "loss": loss, "benchmark": f"{args.val} pairs", "method": name,
                            "seeds": len(seeds), "items_diff_value": float("nan"),
                            **{f"accuracy_diff_{key}": 100 * accuracy[name]
                               for key, name in (("value", "value"), ("low", "ci_low"), ("high", "ci_high"))}})
        print(rows[-1], flush=True)
    table = markdown(rows)
    print(table)
    if args.plot is not None and differences:
        print(f"plot: {plot_paired(pd.DataFrame(differences), args.plot)}")
    if not args.no_record:
        command = "python -m bench.paired " + " ".join(sys.argv[1:])
        append_result("Paired held-out comparison of policies", command,
                      {"resamples": args.resamples, "val": args.val,
                       "interval": "percentile bootstrap 95%, pairs (and seeds, for groups) resampled jointly"},
                      table, machine())


if __name__ == "__main__":
    main()
