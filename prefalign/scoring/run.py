"""``score.py``: score every training pair of a data set against a policy."""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
from omegaconf import DictConfig

from prefalign.atomic import write_json
from prefalign.models import directory_fingerprint, resolve_checkpoint_dir
from prefalign.pipeline import compute_scores, load_policy_from
from prefalign.training import attach_reference_logps, setup_run

log = logging.getLogger(__name__)


def run_scoring(cfg: DictConfig) -> dict[str, Any]:
    """Compute ``cfg.scores`` for every training pair against ``cfg.policy`` (or the initial model).

    The reference (for IRM and the reference-based losses) is the model config's initial weights. Writes
    ``scores.parquet`` and ``scores_summary.json`` into the run directory.
    """
    start = time.perf_counter()
    setup = setup_run(cfg)
    initial = setup.load_model()
    attach_reference_logps(
        setup.datamodule, initial, setup.source, setup.cache_dir, cfg.share_prompt, pack_length=cfg.get("pack_length")
    )
    if cfg.get("policy"):
        folder = resolve_checkpoint_dir(cfg.policy)
        policy = load_policy_from(folder, setup).to(next(initial.parameters()).device)
        policy_key = f"path:{directory_fingerprint(folder)}"
        del initial
    else:
        policy, policy_key = initial, f"initial:{setup.source.fingerprint()}"
    names = list(cfg.scores)
    scores, hit = compute_scores(setup, policy, policy_key, names, int(cfg.shard_size))
    summary = {
        "scores_file": str(setup.output_dir / "scores.parquet"),
        "pairs": len(scores),
        "policy": str(cfg.get("policy") or "initial model"),
        "from_cache": hit,
        "elapsed_s": round(time.perf_counter() - start, 1),
        "statistics": {
            name: {
                "mean": float(np.mean(scores[name])),
                "std": float(np.std(scores[name])),
                "min": float(np.min(scores[name])),
                "max": float(np.max(scores[name])),
            }
            for name in names
        },
    }
    write_json(summary, setup.output_dir / "scores_summary.json")
    log.info("scores of %d pairs written to %s", len(scores), summary["scores_file"])
    return summary
