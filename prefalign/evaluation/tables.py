"""The papers' result tables from a sweep.

Walks a multirun directory (``multirun/train/<date>/<job>_<overrides>/``), reads each run's ``metrics.json``
(selection rule, kept fraction, loss, model) and its evaluations (``eval/<bench>-<judge>-<generation>-<key>/eval.json``),
and builds the TIF paper's table: one block per (model, loss), rows = method and data ratio, columns = benchmark x
{Single, WinRate}, the best value of each column in bold. When the runs were evaluated with more than one judge or
generation setting (greedy and T = 0.7, say), each gets its own columns: ``builtin (verifier, greedy)``. Written as Markdown and CSV, with a PNG plot of
WinRate against the kept fraction per method.

A second table compares every run with the Full Data run of its block on the same items
(:func:`paired_table`): the per-prompt Single (the verifier's success rate; averaged over ``generation.samples``
answers when there are several) and the per-pair held-out reward accuracy (``heldout.csv``), each with its own
bootstrap interval and the paired difference from Full Data (:func:`~prefalign.evaluation.metrics.paired_difference`:
items resampled jointly, which removes the variance the two policies share through the items, and with the
sampling seeds tied across policies). That interval is what tells two rules apart.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from prefalign.evaluation.metrics import hierarchical_paired_difference, mean_of_known, two_way_bootstrap
from prefalign.selection.rules import FullSelection

log = logging.getLogger(__name__)

# the papers' row order, by the rules' labels (their first word: "Top-k annotator" ranks as "Top-k"); the rows of
# other rules follow, by label
ROW_ORDER = (
    "Full Data", "Oracle (upper bound)", "Random", "Top-k", "P region", "Z region", "N region",
    "TIF", "LossDiff", "IRM", "BeeS", "LossDiff-IRM", "M_AP",
)


def run_directories(sweep: str | Path) -> list[Path]:
    """Run directories of a sweep (or the directory itself when it is one run), in job order."""
    sweep = Path(sweep)
    if (sweep / "metrics.json").exists():
        return [sweep]
    runs = [path for path in sweep.iterdir() if path.is_dir() and (path / "metrics.json").exists()]
    if not runs:
        raise FileNotFoundError(f"{sweep} holds no run directories (folders with metrics.json)")

    def job_number(path: Path) -> tuple[int, str]:
        head = path.name.split("_", 1)[0]
        return (int(head) if head.isdigit() else 10**9, path.name)

    return sorted(runs, key=job_number)


@functools.cache
def recorded_rule_label(rule: str, scores: tuple[str, ...]) -> str:
    """The label of a selection recorded without one (by an older prefalign): the ``conf/select/`` option that
    makes a rule of that name, given the recorded score (the option named like the rule first); else the name."""
    from prefalign.selection.config import rule_config, select_rule

    options = sorted((Path(__file__).resolve().parents[2] / "conf" / "select").glob("*.yaml"))
    for path in sorted(options, key=lambda path: (path.stem != rule.lower(), path.stem)):
        node = rule_config(path.stem)
        if "seed" in node:
            node.seed = 0  # an interpolation of the run's seed in the option; the seed does not change a label
        if scores and "score" in node:
            node.score = scores[0]
        if "group" in node:  # select=if_group names its rule <score>_<group>
            node.group = rule.rpartition("_")[2]
        try:
            candidate = select_rule(node)
        except ValueError:  # the option cannot make that rule (a group it does not have)
            continue
        if candidate.name == rule:
            return candidate.display_label()
    return rule


def method_label(metrics: dict[str, Any]) -> str:
    """A run's row name: the label its selection records (the rule's own), ``Full Data`` without a selection."""
    selection = metrics.get("selection")
    online = (metrics.get("inrun") or {}).get("online")
    if online and not selection:  # inrun=online_tif: the pairs were chosen while training
        return f"Online TIF ({online['mode'].replace('_', ' ')}, {online['action']})"
    if not selection:
        return FullSelection.label
    if selection.get("label"):
        return selection["label"]
    rule = selection["rule"]
    if rule.endswith("_dropped"):  # select.invert=true: the paper's "w/ Dropped Data" rows
        return method_label({"selection": {**selection, "rule": rule[: -len("_dropped")]}}) + " (dropped data)"
    return recorded_rule_label(rule, tuple(selection.get("scores") or ()))


def run_seed(run: Path) -> int | None:
    """The training seed a run recorded in its resolved ``config.yaml`` (read as data), or ``None``."""
    path = run / "config.yaml"
    if not path.exists():
        return None
    from omegaconf import OmegaConf

    value = OmegaConf.to_container(OmegaConf.load(path)).get("seed")
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def collect(sweep: str | Path) -> pd.DataFrame:
    """One row per (run, benchmark, judge): method, ratio, model, loss, Single, WinRate and their intervals."""
    rows = []
    for run in run_directories(sweep):
        metrics = json.loads((run / "metrics.json").read_text())
        selection = metrics.get("selection") or {}
        evaluations = sorted((run / "eval").glob("*/eval.json")) if (run / "eval").exists() else []
        if not evaluations:
            log.warning("%s has no evaluation; run python evaluate.py policy=%s", run.name, run)
        for path in evaluations:
            result = json.loads(path.read_text())
            rows.append(
                {
                    "run": run.name,
                    "model": metrics["run"]["model"],
                    "loss": metrics["run"]["loss"].replace("Loss", ""),
                    "method": method_label(metrics),
                    "ratio": 100 * selection.get("kept_fraction", 1.0),
                    "benchmark": result["benchmark"],
                    "judge": result["judge"],
                    "setting": result.get("setting", "T0.7"),
                    "single": result["single"]["policy"]["value"],
                    "single_ci": [result["single"]["policy"]["ci_low"], result["single"]["policy"]["ci_high"]],
                    "winrate": result["winrate"]["value"],
                    "winrate_ci": [result["winrate"]["ci_low"], result["winrate"]["ci_high"]],
                    "n": result["winrate"]["n"],
                    "baseline_single": result["single"]["baseline"]["value"],
                    "kept": selection.get("kept_count", metrics["run"].get("train_pairs")),
                    "train_s": metrics["run"].get("elapsed_s"),
                    "seed": run_seed(run),
                    "eval_dir": str(path.parent),
                }
            )
    if not rows:
        raise FileNotFoundError(f"no evaluations under {sweep}: evaluate the runs first (python evaluate.py sweep={sweep})")
    frame = pd.DataFrame(rows)
    # one column group per bench, judge and generation setting, named plainly while there is only one of each
    variants = frame.groupby("benchmark")[["judge", "setting"]].transform(lambda column: column.nunique())
    several = (variants["judge"] > 1) | (variants["setting"] > 1)
    frame.loc[several, "benchmark"] = frame.loc[several].apply(
        lambda row: f"{row['benchmark']} ({row['judge']}, {row['setting']})", axis=1
    )
    return frame


def paper_table(results: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """The Markdown table (best per column in bold, one block per model and loss) and its CSV frame."""
    wide = results.pivot_table(
        index=["model", "loss", "method", "ratio"],
        columns="benchmark",
        values=["single", "winrate"],
        aggfunc="mean",
    )
    benchmarks = sorted(results["benchmark"].unique())
    lines = []
    header = "| Method | Ratio | " + " | ".join(f"{b} Single ↑ | {b} WinRate ↑" for b in benchmarks) + " |"
    divider = "| --- | --- | " + " | ".join("--- | ---" for _ in benchmarks) + " |"
    frames = []
    for (model, loss), block in wide.groupby(level=["model", "loss"]):
        lines += [f"**{model} ({loss})**", "", header, divider]
        # the SFT baseline's Single score, as the papers' first row
        sft = results[(results["model"] == model) & (results["loss"] == loss)].groupby("benchmark")["baseline_single"].mean()
        lines.append("| SFT | | " + " | ".join(f"{sft.get(b, float('nan')):.2f} | -" for b in benchmarks) + " |")
        best = {column: block[column].max() for column in block.columns}
        order = {label: rank for rank, label in enumerate(ROW_ORDER)}
        def rank(method: str) -> int:
            return order.get(method, order.get(method.split(" ")[0], len(order)))

        rows = sorted(block.iterrows(), key=lambda entry: (rank(entry[0][2]), entry[0][2], entry[0][3]))
        for (_, _, method, ratio), row in rows:
            cells = []
            for benchmark in benchmarks:
                for metric, digits in (("single", 2), ("winrate", 2)):
                    value = row.get((metric, benchmark))
                    if pd.isna(value):
                        cells.append("-")
                        continue
                    text = f"{value:.{digits}f}"
                    cells.append(f"**{text}**" if value == best[(metric, benchmark)] else text)
            lines.append(f"| {method} | {ratio:.0f}% | " + " | ".join(cells) + " |")
        lines.append("")
        flat = block.copy()
        flat.columns = [f"{benchmark}_{metric}" for metric, benchmark in flat.columns]
        frames.append(flat.reset_index())
    return "\n".join(lines), pd.concat(frames, ignore_index=True)


PAIRED_RESAMPLES = 2000


def item_values(eval_dir: str | Path, judge: str) -> pd.Series:
    """One evaluation's per-prompt value, by item id: the policy's Single, averaged over its samples when
    ``generation.samples`` > 1 (unparsable replies left out), as a success rate in % for the verifier judge
    (Single 10 = correct, 1 = wrong)."""
    values = {}
    with open(Path(eval_dir) / "generations.jsonl") as stream:
        for line in stream:
            record = json.loads(line)
            mean = mean_of_known([record["single_policy"], *record.get("single_policy_samples", [])])
            if mean is not None:
                values[record["item_id"]] = mean
    series = pd.Series(values, dtype=float)
    return 100 * (series - 1) / 9 if judge == "verifier" else series


def heldout_accuracy(eval_dir: str | Path) -> pd.Series | None:
    """One evaluation's per-pair held-out reward accuracy in %, by pair id (``heldout.csv``), or ``None`` for an
    evaluation without that file (made before it existed, or with ``generation.heldout=false``)."""
    path = Path(eval_dir) / "heldout.csv"
    if not path.exists():
        return None
    frame = pd.read_csv(path, dtype={"pair_id": str})
    return 100 * frame.set_index("pair_id")["rewards/accuracies"].astype(float)


def paired_cells(
    values: dict[int, pd.Series], baseline: dict[int, pd.Series] | None, is_baseline: bool
) -> tuple[list[str], dict[str, Any] | None]:
    """``value [CI]``, the paired difference from the baseline ``[CI]`` and the items each side wins, for one
    method's per-item values by training seed; and the difference itself (``None`` without one).

    The value is the mean over seeds and items with the interval of a bootstrap over both
    (:func:`~prefalign.evaluation.metrics.two_way_bootstrap`: over the items alone for one seed); the difference is
    taken on the seeds both sides have and the items both hold, paired on both
    (:func:`~prefalign.evaluation.metrics.hierarchical_paired_difference`). One run against one run is paired
    whatever their seeds.
    """
    items = functools.reduce(lambda a, b: a.intersection(b), [series.index for series in values.values()])
    own = two_way_bootstrap([values[seed][items].to_numpy() for seed in sorted(values)], resamples=PAIRED_RESAMPLES)
    cells = [f"{own['value']:.1f} [{own['ci_low']:.1f}, {own['ci_high']:.1f}]"]
    if is_baseline:
        return cells + ["baseline", ""], None
    if baseline is None:
        return cells + ["-", ""], None
    if len(values) == 1 and len(baseline) == 1:
        values = {next(iter(baseline)): next(iter(values.values()))}
    seeds = sorted(set(values) & set(baseline))
    if not seeds:
        return cells + ["- (no common seed)", ""], None
    common = functools.reduce(lambda a, b: a.intersection(b), [baseline[seed].index for seed in seeds], items)
    if len(common) < len(items) or any(len(baseline[seed]) > len(common) for seed in seeds):
        log.warning("paired comparison on the %d items both sides hold (%d and %d)", len(common), len(items),
                    max(len(baseline[seed]) for seed in seeds))
    diff = hierarchical_paired_difference(
        [values[seed][common].to_numpy() for seed in seeds], [baseline[seed][common].to_numpy() for seed in seeds],
        resamples=PAIRED_RESAMPLES,
    )
    return cells + [f"{diff['value']:+.1f} [{diff['ci_low']:+.1f}, {diff['ci_high']:+.1f}]",
                    f"{diff['first_better']} / {diff['second_better']}"], diff


def paired_table(results: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """Every method against the Full Data run(s) of its (model, loss) block on the same prompts and validation
    pairs.

    One block per model, loss and benchmark column; rows: method, pairs trained on, the training seeds, the
    per-prompt value (success % for the verifier, else Single) and the held-out reward accuracy (%), each with its
    bootstrap 95% interval, the paired difference from Full Data with its interval, and how many items each side
    wins; then the run's wall time (``metrics.json``: for a selection run the whole pipeline, with the warm-up and
    the scores where this run was the one to compute them rather than read them from the cache). The runs of one
    method (and kept fraction) that differ only in their training seed (``seed=0,1,2``) make one row: the mean
    over seeds and items, an interval that resamples both, and the difference from Full Data paired on the seeds
    and items both have (:func:`paired_cells`); the wall time is their mean. A block without a Full Data run gets
    no differences.
    """
    lines, rows = [], []
    for (model, loss, benchmark), block in results.groupby(["model", "loss", "benchmark"], sort=True):
        judge = block["judge"].iloc[0]
        metric = "success %" if judge == "verifier" else "Single"
        groups = {key: list(group.itertuples()) for key, group in block.groupby(["method", "ratio"], sort=False)}
        full = [runs for (method, _), runs in groups.items() if method == FullSelection.label]
        base_runs = full[0] if full else []
        # the baseline's values, read once for the block
        base_items = by_seed(base_runs, lambda run: item_values(run.eval_dir, judge)) if base_runs else None
        base_accuracies = by_seed(base_runs, lambda run: heldout_accuracy(run.eval_dir)) if base_runs else None
        if base_accuracies is not None and any(value is None for value in base_accuracies.values()):
            base_accuracies = None
        seeded = any(len(runs) > 1 for runs in groups.values())
        lines += [
            f"**{model} ({loss}), {benchmark}: against Full Data, paired over the same items"
            + (" and training seeds**" if seeded else "**"),
            "",
            f"| Method | kept pairs | seeds | {metric} [95% CI] | vs Full Data [95% CI] | better / worse prompts | "
            "val accuracy % [95% CI] | vs Full Data, pts [95% CI] | better / worse pairs | run wall s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        order = {label: rank for rank, label in enumerate(ROW_ORDER)}
        ordered = sorted(groups.items(), key=lambda item: (order.get(item[0][0], len(order)), item[0][0], item[0][1]))
        for (method, _), runs in ordered:
            is_base = method == FullSelection.label and runs is base_runs
            first = runs[0]
            items, item_diff = paired_cells(by_seed(runs, lambda run: item_values(run.eval_dir, judge)), base_items, is_base)
            accuracies = by_seed(runs, lambda run: heldout_accuracy(run.eval_dir))
            if all(value is not None for value in accuracies.values()):
                held, held_diff = paired_cells(accuracies, base_accuracies, is_base)
            else:
                held, held_diff = ["-", "-", ""], None
            walls = [run.train_s for run in runs if run.train_s is not None and not pd.isna(run.train_s)]
            train_s = sum(walls) / len(walls) if walls else None
            seeds = ",".join(str(run.seed) for run in runs) if any(run.seed is not None for run in runs) else "-"
            wall = f"{train_s:.0f}" if train_s is not None else "-"
            lines.append(f"| {method} | {first.kept} | {seeds} | " + " | ".join(items + held) + f" | {wall} |")
            rows.append({"model": model, "loss": loss, "benchmark": benchmark, "method": method, "kept": first.kept,
                         "seeds": len(runs), metric: items[0], f"{metric} vs full": items[1], "val accuracy %": held[0],
                         "val accuracy vs full": held[1], "train_s": train_s, "run": ",".join(run.run for run in runs),
                         **{f"{name}_{key}": (diff or {}).get(field) for name, diff in (("items_diff", item_diff), ("accuracy_diff", held_diff))
                            for key, field in (("value", "value"), ("low", "ci_low"), ("high", "ci_high"))}})
        lines.append("")
    return "\n".join(lines), pd.DataFrame(rows)


def by_seed(runs: list[Any], value: Any) -> dict[int, Any]:
    """``value(run)`` of each run by its training seed (runs without a recorded seed numbered from -1 down).

    Raises:
        ValueError: two runs of one method share a seed (a sweep over something else than the seed, or a run
            repeated): their numbers would be mixed.
    """
    out: dict[int, Any] = {}
    for index, run in enumerate(runs):
        seed = run.seed if run.seed is not None and not pd.isna(run.seed) else -1 - index
        if seed in out:
            raise ValueError(f"two runs of {run.method!r} with seed {seed} in one block ({run.run} and another): "
                             "a block's runs of one method may differ only in their seed")
        out[int(seed)] = value(run)
    return out


def plot_paired(paired: pd.DataFrame, path: Path) -> Path | None:
    """Each method's paired difference from Full Data with its 95% interval (a forest plot), one panel per block
    and measure (prompt success or Single, held-out accuracy); ``None`` when no row has a difference."""
    measures = [("items_diff", "per prompt"), ("accuracy_diff", "held-out accuracy, pts")]
    blocks = list(paired.groupby(["model", "loss", "benchmark"], sort=True))
    panels = [(key, block, column, title) for key, block in blocks for column, title in measures
              if block[f"{column}_value"].notna().any()]
    if not panels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 0.45 * max(len(b) for _, b in blocks) + 1.5),
                                squeeze=False)
    for axis, ((model, loss, benchmark), block, column, title) in zip(axes[0], panels):
        rows = block[block[f"{column}_value"].notna()]
        y = list(range(len(rows)))[::-1]
        value, low, high = (rows[f"{column}_{key}"].to_numpy(dtype=float) for key in ("value", "low", "high"))
        labels = [f"{method} ({seeds} seed{'s' if seeds > 1 else ''})" for method, seeds in zip(rows["method"], rows["seeds"])]
        axis.errorbar(value, y, xerr=[value - low, high - value], fmt="o", capsize=3)
        axis.axvline(0, color="grey", linestyle=":")
        axis.set_yticks(y, labels)
        axis.set_title(f"{model} ({loss}), {benchmark}\n{title} vs Full Data", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_winrate(results: pd.DataFrame, path: Path) -> Path:
    """WinRate against kept fraction, one line per method (and loss), one panel per benchmark."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    benchmarks = sorted(results["benchmark"].unique())
    figure, axes = plt.subplots(1, len(benchmarks), figsize=(5 * len(benchmarks), 3.8), squeeze=False)
    for axis, benchmark in zip(axes[0], benchmarks):
        part = results[results["benchmark"] == benchmark]
        for (method, loss), group in part.groupby(["method", "loss"]):
            group = group.groupby("ratio", as_index=False)["winrate"].mean().sort_values("ratio")
            axis.plot(group["ratio"], group["winrate"], marker="o", label=f"{method} ({loss})")
        axis.axhline(50, color="grey", linewidth=0.8, linestyle="--")
        axis.set_xlabel("kept fraction of the training pairs (%)")
        axis.set_ylabel("WinRate vs SFT (%)")
        axis.set_title(benchmark)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def build_tables(sweep: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``results.md`` (the papers' table, then :func:`paired_table`), ``results.csv``,
    ``results_paired.csv``, ``results_long.csv``, ``winrate_vs_ratio.png`` and ``paired_differences.png``
    (:func:`plot_paired`)."""
    out = Path(out_dir or sweep)
    out.mkdir(parents=True, exist_ok=True)
    results = collect(sweep)
    markdown, wide = paper_table(results)
    paths = {
        "markdown": out / "results.md",
        "csv": out / "results.csv",
        "long_csv": out / "results_long.csv",
        "plot": out / "winrate_vs_ratio.png",
    }
    paired_markdown, paired = paired_table(results)
    paths["paired_csv"] = out / "results_paired.csv"
    paths["markdown"].write_text(f"# Results of {sweep}\n\n{markdown}\n\n{paired_markdown}\n")
    wide.to_csv(paths["csv"], index=False)
    paired.to_csv(paths["paired_csv"], index=False)
    if plot_paired(paired, out / "paired_differences.png") is not None:
        paths["paired_plot"] = out / "paired_differences.png"
    results.to_csv(paths["long_csv"], index=False)
    plot_winrate(results, paths["plot"])
    log.info("tables written to %s", paths["markdown"])
    return paths
