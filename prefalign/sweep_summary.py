"""A table of a ``-m`` sweep's jobs when the sweep ends.

:class:`SweepSummary` is a Hydra callback of every entry point (``conf/hydra/default.yaml``). When a multirun ends it
reads each job's ``metrics.json`` (a ``train.py`` job writes one) and writes ``<sweep dir>/summary.md`` and
``summary.csv``: one row per job, with the values the sweep varied and the job's final metrics, and logs the
Markdown table. A job without ``metrics.json`` (it failed, or was stopped) is listed as such. The files are read
as data (JSON and YAML), never run. ``python evaluate.py sweep=<sweep dir>`` still builds the papers' result table
from evaluations; this one needs no evaluation.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from prefalign.atomic import atomic_write

log = logging.getLogger(__name__)

# the metrics in the Markdown table (all top-level numbers of metrics.json go to the CSV)
HEADLINE = ("train/loss", "val/loss", "val/rewards/accuracies", "val/rewards/margins")


def job_overrides(job_dir: Path) -> dict[str, str]:
    """A job's command-line overrides (``.hydra/overrides.yaml``, a list of ``key=value``) as a dict; empty when
    the file is absent or not such a list."""
    import yaml

    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    try:
        items = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        log.warning("%s: not read (%s); its job is listed without its overrides", path, error)
        return {}
    if not isinstance(items, list):
        return {}
    pairs = (str(item).split("=", 1) for item in items if "=" in str(item))
    return {key: value for key, value in pairs if key not in ("hydra.run.dir", "hydra.sweep.dir")}


def job_metrics(job_dir: Path) -> tuple[dict[str, float] | None, str]:
    """The top-level numbers of a job's ``metrics.json`` and a status (``done``, ``no metrics.json``, or what is
    wrong with the file)."""
    path = job_dir / "metrics.json"
    if not path.is_file():
        return None, "no metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        return None, f"{path.name} unreadable: {error}"
    if not isinstance(metrics, dict):
        return None, f"{path.name} is not a JSON object"
    numbers = {
        key: float(value)
        for key, value in metrics.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    return numbers, "done"


def _job_number(job_dir: Path) -> tuple[int, str]:
    match = re.match(r"(\d+)_", job_dir.name)
    return (int(match.group(1)) if match else 1 << 30, job_dir.name)


def sweep_rows(sweep_dir: Path) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """The jobs of a sweep folder: the override keys that vary between jobs, the metric names, and one row per job
    (``job``, ``status``, the varying overrides, the metrics), in job order."""
    jobs = sorted(
        (folder for folder in sweep_dir.iterdir() if folder.is_dir() and (folder / ".hydra").is_dir()),
        key=_job_number,
    )
    overrides = {job: job_overrides(job) for job in jobs}
    keys = list(dict.fromkeys(key for job in jobs for key in overrides[job]))
    varying = [key for key in keys if len({overrides[job].get(key) for job in jobs}) > 1] or keys
    rows, metric_names = [], []
    for job in jobs:
        metrics, status = job_metrics(job)
        for name in metrics or {}:
            if name not in metric_names:
                metric_names.append(name)
        rows.append({"job": job.name.split("_", 1)[0], "status": status, **{key: overrides[job].get(key, "") for key in varying}, **(metrics or {})})
    return varying, metric_names, rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return str(value).replace("|", "\\|")


def markdown_table(columns: list[str], rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(column, "")) for column in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_summary(sweep_dir: Path) -> Path | None:
    """Write ``summary.md`` and ``summary.csv`` into ``sweep_dir``; returns the Markdown file, or ``None`` when no
    job wrote ``metrics.json`` (a sweep of ``score.py`` or ``select.py``, or one where every job failed)."""
    varying, metric_names, rows = sweep_rows(sweep_dir)
    if not any(row["status"] == "done" for row in rows):
        return None
    headline = [name for name in HEADLINE if name in metric_names] or metric_names[:4]
    done = sum(row["status"] == "done" for row in rows)
    markdown = (
        f"# Sweep {sweep_dir.name}: {done} of {len(rows)} jobs done\n\n"
        + markdown_table(["job", *varying, *headline, "status"], rows)
        + "\nEvery number of each job's metrics.json: summary.csv.\n"
    )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["job", *varying, *metric_names, "status"], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(sweep_dir / "summary.csv", lambda tmp: Path(tmp).write_text(buffer.getvalue()))
    atomic_write(sweep_dir / "summary.md", lambda tmp: Path(tmp).write_text(markdown))
    log.info("sweep summary (%s):\n%s", sweep_dir / "summary.md", markdown)
    return sweep_dir / "summary.md"


class SweepSummary(Callback):
    """Hydra callback: when a ``-m`` sweep ends, the table of its jobs (:func:`write_summary`).

    The table is also brought up to date after each job of a sweep: Hydra's basic sweeper raises a failed job's
    error before it calls ``on_multirun_end``, and the table of a sweep with a failed job matters most.
    """

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        from hydra.types import RunMode

        if config.hydra.get("mode") == RunMode.MULTIRUN:
            self.on_multirun_end(config)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        try:
            write_summary(sweep_dir)
        except OSError as error:  # a summary is a convenience: the jobs' own results stand without it
            log.warning("sweep summary of %s not written: %s", sweep_dir, error)
