"""The scoring stage, ``score.py``: score every training pair of a data set against a policy.

Inputs: the config (model, data, loss and the run settings, as ``train.py`` takes them), ``policy`` (a run
directory or checkpoint; none: the initial model) and ``scores`` (names of ``conf/score/`` configs).
Outputs, in the stage's directory::

    config.yaml            the resolved config
    data_report.json       dropped and truncated pairs per split
    scores.parquet         pair_id + one column per score; its metadata holds the provenance: the resolved
                           model, data and loss configs, the policy, the data fingerprint, the scorers' configs
    scores_summary.json    per-score statistics, the cache entry, timings

The scores are computed in resumable shards under ``<cache_dir>/scores/<key>``, the key made of the policy, the
data and the resolved configs of everything that shapes the numbers (:func:`scores_key`). ``shard_size`` is not
part of it: a run resumed with another shard size reuses the pairs the finished shards hold
(:class:`~prefalign.scoring.base.ScoreRunner`).

Under a launcher (``torchrun --nproc_per_node N score.py ...``) the ranks split the reference pass and every
shard between them (:mod:`prefalign.distributed`); rank 0 writes every file, and the files are those of one
process. Neither is the number of processes part of the key: a run resumed with another number reuses the
finished shards. On CUDA each rank runs on ``cuda:LOCAL_RANK``.
"""

from __future__ import annotations

import logging
import shutil
import time
from typing import Any

import numpy as np
from omegaconf import DictConfig

from prefalign import distributed
from prefalign.atomic import atomic_write, lock_path, produce_once, write_json
from prefalign.folder_lock import hold_folder
from prefalign.keys import LOGP_SETTINGS, config_inputs, content_key, plain
from prefalign.models import directory_fingerprint, resolve_checkpoint_dir
from prefalign.run_setup import RunSetup, setup_run
from prefalign.scoring.base import Scorer, ScoreRunner, ScoringContext, read_scores, scores_done
from prefalign.scoring.config import build_scorers

log = logging.getLogger(__name__)

# the run settings that shape every score (with the scorers' own resolved configs)
SCORING_INPUTS = ("model", "data", "loss", "seed", *LOGP_SETTINGS)


def policy_identity(cfg: DictConfig, setup: RunSetup) -> str:
    """Identifies the policy scored: the bytes of ``cfg.policy``'s checkpoint, or the initial weights."""
    if cfg.get("policy"):
        return f"path:{directory_fingerprint(resolve_checkpoint_dir(cfg.policy))}"
    return f"initial:{setup.source.policy_fingerprint()}"


def scores_key(cfg: DictConfig, scorers: list[Scorer], policy: str, tokens: tuple[str, str], device: str) -> str:
    """The cache key of a scores file: the policy, the exact token ids of both splits (``tokens``: the
    fingerprints of train and validation), the resolved run settings (:data:`SCORING_INPUTS`), the device type and
    every scorer's resolved config under its column name."""
    return content_key(
        "scores-v2", policy, list(tokens), config_inputs(cfg, SCORING_INPUTS), device,
        {scorer.name: scorer.settings for scorer in scorers},
    )


def run_scoring(cfg: DictConfig) -> dict[str, Any]:
    """Compute ``cfg.scores`` for every training pair against ``cfg.policy`` (or the initial model).

    The reference (for IRM and the reference-based losses) is the model config's initial weights. Writes the
    stage's files (module docstring) and returns the summary. Under a launcher every rank calls this and gets
    the summary; rank 0 writes the files, and holds the stage folder's lock (:mod:`prefalign.folder_lock`).
    """
    with hold_folder(cfg.paths.output_dir):
        return _run_scoring(cfg)


def _run_scoring(cfg: DictConfig) -> dict[str, Any]:
    start = time.perf_counter()
    if int(cfg.shard_size) <= 0:
        raise ValueError(f"shard_size must be a positive number of pairs, got {cfg.shard_size}")
    names = list(cfg.scores)
    if not names:
        raise ValueError("scores=[] names no score to compute (e.g. scores=[irm,lossdiff])")
    scorers = build_scorers(cfg, names)  # unknown names fail here, before any model is loaded
    distributed.init_from_env()
    setup = setup_run(cfg, write_files=distributed.is_main())  # on this process's own GPU (run_device)
    if distributed.world_size() > 1 and setup.loss.requires_mismatched:
        # KTO's reference point is all-reduced whenever a process group exists: with each rank on its own
        # batches it would mix them (and wait for ranks that have no batch left)
        raise ValueError(
            f"loss={type(setup.loss).__name__} cannot be scored by {distributed.world_size()} processes: its "
            "reference point is all-reduced over the ranks; score it with one process"
        )
    policy_key = policy_identity(cfg, setup)
    datasets = setup.datamodule.datasets
    key = scores_key(cfg, scorers, policy_key, (datasets["train"].fingerprint(), datasets["val"].fingerprint()), setup.device.type)
    work_dir = setup.cache_dir / "scores" / key

    def compute() -> None:
        initial = setup.load_model()
        setup.attach_reference(initial)
        if cfg.get("policy"):
            policy = setup.source.load_policy(cfg.policy).to(setup.device)
            del initial
        else:
            policy = initial
        context = ScoringContext(
            policy=policy,
            policy_fingerprint=policy_key,
            loss=setup.loss,
            datamodule=setup.datamodule,
            source=setup.source,
            cache_dir=setup.cache_dir,
            work_dir=work_dir,
            logp_settings=setup.logp_settings,
            seed=cfg.seed,
            cfg=cfg,
        )
        provenance = {
            "config": {name: plain(cfg.get(name)) for name in SCORING_INPUTS},
            "policy": str(cfg.policy) if cfg.get("policy") else None,
            "model": setup.source.name,
            "key": key,
        }
        ScoreRunner(scorers, shard_size=int(cfg.shard_size)).run(context, provenance)

    # runs that want these scores at the same time (the jobs of a threshold sweep) compute them once: the others
    # wait, then read them (two runners in one folder would each redo the shards the other is computing)
    lock = lock_path(setup.cache_dir, "scores", key)
    def done() -> bool:  # scores.parquet matches its checksum record; a corrupt one is named, moved aside, merged again
        return scores_done(work_dir, setup.cache_dir)

    hit = produce_once(lock, done, compute, what=f"the scores {names} in {work_dir}")
    if hit:
        log.info("scores %s from cache %s", names, work_dir)
    return distributed.on_main(lambda: write_outputs(setup, work_dir, names, hit, start))


def write_outputs(setup: RunSetup, work_dir: Any, names: list[str], hit: bool, start: float) -> dict[str, Any]:
    """Copy the cached ``scores.parquet`` into the stage's directory and write ``scores_summary.json``."""
    assert setup.output_dir is not None
    target = setup.output_dir / "scores.parquet"
    scores, provenance = read_scores(work_dir / "scores.parquet")  # errors name the cache entry, not the copy
    atomic_write(target, lambda tmp: shutil.copyfile(work_dir / "scores.parquet", tmp))
    pair_ids = [pair.pair_id for pair in setup.datamodule.pairs["train"]]
    if scores["pair_id"].tolist() != pair_ids:
        raise RuntimeError(f"cached scores in {work_dir} do not match the training pairs; delete the folder")
    summary = {
        "scores_file": str(target),
        "pairs": len(scores),
        "policy": str(setup.cfg.get("policy") or "initial model"),
        "from_cache": hit,
        "cache_entry": str(work_dir),
        "data_fingerprint": setup.datamodule.fingerprints["train"],
        "elapsed_s": round(time.perf_counter() - start, 1),
        "timings_s": provenance.get("timings_s", {}),
        "statistics": {
            name: {
                "mean": float(np.nanmean(scores[name])),
                "std": float(np.nanstd(scores[name])),
                "min": float(np.nanmin(scores[name])),
                "max": float(np.nanmax(scores[name])),
                "missing": int(np.isnan(scores[name].to_numpy(dtype=float)).sum()),
            }
            for name in names
        },
    }
    write_json(summary, setup.output_dir / "scores_summary.json")
    log.info("scores of %d pairs written to %s", len(scores), target)
    return summary
