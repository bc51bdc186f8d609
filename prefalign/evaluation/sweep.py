"""``evaluate.py``: one policy, or every run of a sweep followed by the result tables."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from prefalign.evaluation.run import evaluate_policy
from prefalign.evaluation.tables import build_tables, run_directories

log = logging.getLogger(__name__)


def run_evaluation(cfg: DictConfig) -> dict[str, Any]:
    cache_dir = Path(str(cfg.paths.cache_dir)).expanduser()
    if cfg.get("sweep"):
        results = {}
        for run in run_directories(cfg.sweep):
            existing = run / "eval" / f"{cfg.bench.name}-{_judge_name(cfg)}" / "eval.json"
            if existing.exists() and not cfg.overwrite:
                log.info("%s: already evaluated (%s); overwrite=true re-evaluates", run.name, existing)
                results[run.name] = json.loads(existing.read_text())
                continue
            results[run.name] = evaluate_policy(run, cfg.bench, cfg.judge, cfg.generation, cache_dir, baseline=cfg.baseline)
        paths = build_tables(cfg.sweep)
        return {"runs": results, "tables": {key: str(path) for key, path in paths.items()}}
    if not cfg.get("policy"):
        raise ValueError("give policy=<run dir or checkpoint> or sweep=<multirun dir>")
    output_dir = None if (Path(cfg.policy) / "config.yaml").exists() else Path(cfg.paths.output_dir)
    return evaluate_policy(cfg.policy, cfg.bench, cfg.judge, cfg.generation, cache_dir, output_dir, cfg.baseline)


def _judge_name(cfg: DictConfig) -> str:
    """The judge's name without instantiating it (a reward-model judge would load its model): the option
    chosen in the judge group, which is also the name the judge writes its results under."""
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get().runtime.choices["judge"]
