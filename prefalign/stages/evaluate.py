"""The evaluation stage, ``evaluate.py``: one policy, or every run of a sweep followed by the result tables.

Results live in ``<run>/eval/<bench>-<judge>-<generation>-<key>/`` (:func:`~prefalign.evaluation.policy.result_folder`),
so re-evaluating a sweep with other settings (``generation=greedy``, ``bench.limit``, another judge) evaluates
every run again into new folders, and re-running with the same settings reuses what is there.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from prefalign.atomic import write_json
from prefalign.evaluation.policy import evaluate_policy, result_folder
from prefalign.evaluation.tables import build_tables, run_directories

log = logging.getLogger(__name__)


def evaluate_run(run: Path, cfg: DictConfig, cache_dir: Path, overwrite: bool = False, baseline: str | None = None) -> dict[str, Any]:
    """Evaluate one run directory with ``cfg.bench``, ``cfg.judge`` and ``cfg.generation``, or reuse its results.

    Returns:
        The content of ``eval.json``.
    """
    folder = result_folder(cfg.bench, cfg.judge, cfg.generation)
    existing = run / "eval" / folder / "eval.json"
    if existing.exists() and not overwrite:
        log.info("%s: already evaluated with these settings (%s); overwrite=true re-evaluates", run.name, existing)
        return json.loads(existing.read_text())
    return evaluate_policy(run, cfg.bench, cfg.judge, cfg.generation, cache_dir, baseline=baseline, folder_name=folder)


def run_evaluation(cfg: DictConfig) -> dict[str, Any]:
    cache_dir = Path(str(cfg.paths.cache_dir)).expanduser()
    if cfg.get("sweep"):
        results = {
            run.name: evaluate_run(run, cfg, cache_dir, bool(cfg.overwrite), cfg.baseline) for run in run_directories(cfg.sweep)
        }
        paths = build_tables(cfg.sweep)
        return {"runs": results, "tables": {key: str(path) for key, path in paths.items()}}
    if not cfg.get("policy"):
        raise ValueError("give policy=<run dir or checkpoint> or sweep=<multirun dir>")
    if (Path(cfg.policy) / "config.yaml").exists():
        return evaluate_run(Path(cfg.policy), cfg, cache_dir, bool(cfg.overwrite), cfg.baseline)
    folder = Path(cfg.paths.output_dir) / result_folder(cfg.bench, cfg.judge, cfg.generation)
    return evaluate_policy(cfg.policy, cfg.bench, cfg.judge, cfg.generation, cache_dir, folder, cfg.baseline)


def evaluate_trained_run(cfg: DictConfig, result: dict[str, Any]) -> dict[str, Any]:
    """``train.py evaluate_after_training=true``: evaluate the run just trained with ``cfg.evaluation`` and add
    the headline numbers to its ``metrics.json`` under ``evaluation``."""
    run_dir = Path(cfg.paths.output_dir)
    report = evaluate_run(run_dir, cfg.evaluation, Path(str(cfg.paths.cache_dir)).expanduser())
    result["evaluation"] = {
        report["folder"]: {
            "single": report["single"]["policy"]["value"],
            "baseline_single": report["single"]["baseline"]["value"],
            "winrate": report["winrate"]["value"],
        }
    }
    write_json(result, run_dir / "metrics.json")
    return result
