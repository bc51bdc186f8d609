"""The papers' result tables from a sweep.

Walks a multirun directory (``multirun/train/<date>/<job>_<overrides>/``), reads each run's ``metrics.json``
(selection rule, kept fraction, loss, model) and its evaluations (``eval/<bench>-<judge>-<generation>-<key>/eval.json``),
and builds the TIF paper's table: one block per (model, loss), rows = method and data ratio, columns = benchmark x
{Single, WinRate}, the best value of each column in bold. When the runs were evaluated with more than one judge or
generation setting (greedy and T = 0.7, say), each gets its own columns: ``builtin (verifier, greedy)``. Written as Markdown and CSV, with a PNG plot of
WinRate against the kept fraction per method.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)

# display names, in the papers' row order (other rules follow, by name)
METHOD_NAMES = {
    "full": "Full Data",
    "random": "Random",
    "topk": "Top-k",
    "pzn_P": "P region",
    "pzn_Z": "Z region",
    "pzn_N": "N region",
    "tif": "TIF",
    "lossdiff": "LossDiff",
    "irm": "IRM",
    "bees": "BeeS",
    "lossdiff_irm": "LossDiff-IRM",
}


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


def method_label(metrics: dict[str, Any]) -> str:
    selection = metrics.get("selection")
    if not selection:
        return METHOD_NAMES["full"]
    rule = selection["rule"]
    if rule == "topk" and selection.get("scores"):
        return f"Top-k {selection['scores'][0]}"
    return METHOD_NAMES.get(rule, rule)


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
        order = {label: rank for rank, label in enumerate(METHOD_NAMES.values())}
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
    """Write ``results.md``, ``results.csv``, ``results_long.csv`` and ``winrate_vs_ratio.png``."""
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
    paths["markdown"].write_text(f"# Results of {sweep}\n\n{markdown}\n")
    wide.to_csv(paths["csv"], index=False)
    results.to_csv(paths["long_csv"], index=False)
    plot_winrate(results, paths["plot"])
    log.info("tables written to %s", paths["markdown"])
    return paths
