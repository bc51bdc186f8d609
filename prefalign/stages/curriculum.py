"""Curri-DPO, ``python train.py online=curriculum``: pairs from each prompt's rated responses, trained in stages
from easy to hard (Pattnaik et al. 2024, "Curry-DPO", Sec. 3).

The run samples ``online.samples_per_prompt`` responses per prompt from the initial policy and rates them
(``sample.py``; or reads them, ``online.responses=<responses.jsonl or sample run>``), builds Curri-DPO's pairs
(:class:`~prefalign.online.pairs.CurriculumPairs`: the best response against each lower-rated one, stage 1 the
largest rating gap; ``online.pairs.max_stages`` keeps the easiest stages only), and trains stage after stage, in ``<run>/stage-<s>/``::

    pairs.jsonl   the stage's pairs (those whose metadata.stage is s)
    train/        train.py on them: the policy starts from the previous stage's policy; the reference is the
                  previous stage's policy (online.reference=previous, the paper's choice) or the initial model
    train/eval/   evaluate.py on the held-out prompts (online.evaluate)

A stage whose ``train/metrics.json`` and policy exist is done, so re-running the command resumes at the first
unfinished stage. ``<run>/metrics.json`` holds the per-stage table (pairs, train and validation metrics,
held-out success with its 95% interval, wall times).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from prefalign.atomic import write_json, write_jsonl
from prefalign.stages.iterative import evaluate_step, prepare_run, round_done, sample_config, train_config
from prefalign.online.responses import read_jsonl
from prefalign.stages.sample import responses_file, run_sampling
from prefalign.stages.pipeline import needs_selection
from prefalign.stages.train import run_training

log = logging.getLogger(__name__)


def curriculum_pairs(cfg: DictConfig, run_dir: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The run's Curri-DPO pairs: from ``online.responses``, or sampled and rated into ``<run>/sample/``."""
    sample_cfg = sample_config(cfg, 1, None, run_dir / "sample")
    if sample_cfg.pairs.get("_target_") != "prefalign.online.pairs.CurriculumPairs":
        raise ValueError(f"online=curriculum builds Curri-DPO's pairs (online.pairs=curriculum), got {sample_cfg.pairs._target_}")
    with open_dict(sample_cfg):
        sample_cfg.pair_prefix = ""
        if cfg.online.get("responses"):
            sample_cfg.responses = str(responses_file(cfg.online.responses))
    report = run_sampling(sample_cfg)
    return read_jsonl(run_dir / "sample" / "pairs.jsonl"), report


def run_curriculum(cfg: DictConfig) -> dict[str, Any]:
    """Sample, pair and train the stages (module docstring); returns the run's metrics (also ``metrics.json``)."""
    from prefalign.stages.iterative import REFERENCES, check_one_device

    start = time.perf_counter()
    check_one_device(cfg)
    if cfg.online.reference not in REFERENCES:
        raise ValueError(f"online.reference must be one of {REFERENCES}, got {cfg.online.reference!r}")
    if needs_selection(cfg):
        raise ValueError("online=curriculum trains on every stage's pairs: drop select=... (select=full)")
    run_dir, cache_dir, val_file = prepare_run(cfg)
    pairs, sample_report = curriculum_pairs(cfg, run_dir)
    stages = sorted({pair["metadata"]["stage"] for pair in pairs})
    if not stages:
        raise RuntimeError(f"no Curri-DPO pairs: every prompt's responses had equal ratings ({sample_report['pairs']['dropped']})")
    policy: str | None = None
    table: list[dict[str, Any]] = []
    initial: dict[str, Any] | None = None
    result: dict[str, Any] = {}
    for stage in stages:
        stage_dir = run_dir / f"stage-{stage}"
        train_dir = stage_dir / "train"
        stage_start = time.perf_counter()
        stage_pairs = [pair for pair in pairs if pair["metadata"]["stage"] == stage]
        pairs_file = stage_dir / "pairs.jsonl"
        write_jsonl(stage_pairs, pairs_file)
        if round_done(train_dir):
            log.info("stage %d: trained already (%s)", stage, train_dir)
            result = json.loads((train_dir / "metrics.json").read_text())
        else:
            result = run_training_stage(cfg, pairs_file, val_file, policy, train_dir)
        trained = time.perf_counter()
        heldout = None
        if cfg.online.evaluate:
            heldout, reference = evaluate_step(train_dir, cfg, cache_dir)
            if stage == stages[0]:
                initial = reference
        known = [pair["metadata"] for pair in stage_pairs if "label_flipped" in pair["metadata"]]
        gaps = [pair["score_chosen"] - pair["score_rejected"] for pair in stage_pairs]
        table.append({
            "stage": stage,
            "pairs": len(stage_pairs),
            "mean_reward_gap": sum(gaps) / len(gaps),
            "pairs_noise": {"label_flipped": sum(m["label_flipped"] for m in known), "ambiguous": sum(m["ambiguous"] for m in known)}
            if known else None,
            "metrics": {key: value for key, value in result.items() if key.startswith(("train/", "val/"))},
            "heldout": heldout,
            "wall_s": {"training": round(trained - stage_start, 1), "evaluation": round(time.perf_counter() - trained, 1)},
            "dir": str(stage_dir),
        })
        policy = str(train_dir)
        write_json({"stages": table, "initial": initial, "sampling": sample_report}, run_dir / "metrics.json")
        log.info("Curri-DPO stage %d of %d done: %d pairs%s", stage, len(stages), len(stage_pairs),
                 "" if heldout is None else f", held-out success {heldout.get('success')}")
    final = {
        **{key: value for key, value in result.items() if key.startswith(("train/", "val/"))},
        "stages": table,
        "initial": initial,
        "sampling": sample_report,
        "online": OmegaConf.to_container(cfg.online, resolve=True),
        "run": {"policy_dir": str(Path(str(policy)) / "policy"), "output_dir": str(run_dir),
                "elapsed_s": round(time.perf_counter() - start, 1)},
    }
    write_json(final, run_dir / "metrics.json")
    return final


def run_training_stage(cfg: DictConfig, pairs_file: Path, val_file: Path, policy: str | None, folder: Path) -> dict[str, Any]:
    return run_training(train_config(cfg, pairs_file, val_file, policy, folder, proxy=None))
