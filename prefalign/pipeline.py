"""The TIF paper's selection pipeline, in one command: ``python train.py select=lossdiff_irm``.

1. **Warm-up**: train on all pairs for ``pipeline.warmup_epochs`` (the paper: one epoch), giving ``theta``.
2. **Scores** the rule needs (``lossdiff`` trains its auxiliary model on the validation set, ``bees_implicit``
   its proxy, ``influence`` takes one validation backward pass), computed for every training pair against
   ``theta``.
3. **Selection**: the rule keeps a subset (``selection.json``).
4. **Training** on the subset, continuing from ``theta`` (``pipeline.restart_from=warmup``, the paper's
   default) or from the initial weights (``restart_from=reference``); done by :func:`run_training`.

Every intermediate artifact is cached by content under ``paths.cache_dir``: the warm-up policy under a key
of the initial weights, data, loss, optimiser, schedule, batch size, seed and epochs; the scores under the
warm-up key and the scorers' configs; auxiliary models likewise. A multirun over thresholds, kept fractions or
final-training seeds therefore warms up and scores once.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import AutoModelForCausalLM

from prefalign.atomic import write_json
from prefalign.models import DTYPES, release_padding_row, save_policy
from prefalign.scoring.base import ScoreRunner, ScoringContext, read_scores
from prefalign.selection.rules import FullSelection, SelectionRule
from prefalign.training import RunSetup, build_trainer, compiled_decoder, final_metrics, make_module

log = logging.getLogger(__name__)

DONE = "prefalign_done.json"


def needs_selection(cfg: DictConfig) -> bool:
    """Whether ``select`` asks for anything but the full data."""
    return cfg.get("select") is not None and not isinstance(instantiate(cfg.select), FullSelection)


def content_key(*parts: Any) -> str:
    payload = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:20]


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def warmup_key(setup: RunSetup) -> str:
    """Identifies the warm-up policy: everything that changes its weights."""
    cfg = setup.cfg
    trainer = {key: cfg.trainer.get(key) for key in ("precision", "gradient_clip_val", "accumulate_grad_batches")}
    return content_key(
        "warmup-v1",
        setup.source.fingerprint(),
        setup.source.lora,
        setup.datamodule.datasets["train"].fingerprint(),
        setup.loss.hparams(),
        _plain(cfg.optimizer),
        _plain(cfg.get("scheduler")),
        trainer,
        setup.datamodule.batch_size,
        cfg.seed,
        cfg.pipeline.warmup_epochs,
        cfg.share_prompt,
        cfg.get("pack_length"),
    )


def load_policy_from(folder: Path, setup: RunSetup) -> torch.nn.Module:
    """A cached policy: the peft adapter on top of the initial weights under LoRA, else the full model."""
    if (folder / "adapter").exists():
        from peft import PeftModel

        return PeftModel.from_pretrained(setup.source.load_base_model(), folder / "adapter", is_trainable=True)
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=DTYPES[setup.source.dtype], attn_implementation=setup.source.attn_implementation
    )
    return release_padding_row(model)


def warm_up(setup: RunSetup, model: torch.nn.Module) -> tuple[torch.nn.Module, str, bool]:
    """The warm-up policy ``theta``: from the cache, or trained on all pairs and cached.

    Returns:
        The policy, its cache key, and whether it came from the cache.
    """
    epochs = int(setup.cfg.pipeline.warmup_epochs)
    if epochs == 0:
        log.warning("pipeline.warmup_epochs=0: scoring the initial model (IRM is then zero for every pair)")
        return model, f"initial:{setup.source.fingerprint()}", False
    key = warmup_key(setup)
    folder = setup.cache_dir / "warmup" / key
    if (folder / DONE).exists():
        log.info("warm-up policy from cache %s", folder)
        device = next(model.parameters()).device
        return load_policy_from(folder, setup).to(device), key, True
    log.info("warm-up: %d epoch(s) on all %d training pairs", epochs, len(setup.datamodule.datasets["train"]))
    module = make_module(setup.cfg, model, setup.loss)
    trainer = build_trainer(setup.cfg, setup.output_dir / "warmup", checkpoints=False, max_epochs=epochs)
    device = next(model.parameters()).device
    with compiled_decoder(model, bool(setup.cfg.get("compile", False))):
        trainer.fit(module, datamodule=setup.datamodule)
    save_policy(model, setup.tokenizer, folder)
    write_json({"key": key, "metrics": final_metrics(trainer)}, folder / DONE)
    # Lightning leaves the model on the CPU when fit ends; the scorers run where the run trains
    return model.to(device), key, False


def scoring_context(setup: RunSetup, policy: torch.nn.Module, policy_key: str, work_dir: Path) -> ScoringContext:
    trainer = setup.cfg.trainer
    return ScoringContext(
        policy=policy,
        policy_fingerprint=policy_key,
        loss=setup.loss,
        datamodule=setup.datamodule,
        source=setup.source,
        cache_dir=setup.cache_dir,
        work_dir=work_dir,
        share_prompt=setup.cfg.share_prompt,
        pack_length=setup.cfg.get("pack_length"),
        seed=setup.cfg.seed,
        trainer_options={key: trainer.get(key) for key in ("accelerator", "devices", "precision", "gradient_clip_val")},
    )


def instantiate_scorers(cfg: DictConfig, names: list[str]) -> list[Any]:
    catalogue = cfg.get("scorers") or {}
    missing = [name for name in names if name not in catalogue]
    if missing:
        raise KeyError(f"no scorer config for {missing}; available: {sorted(catalogue)} (conf/score/)")
    scorers = [instantiate(catalogue[name]) for name in names]
    for name, scorer in zip(names, scorers):
        if scorer.name != name:
            raise ValueError(f"scorers.{name} produces the column '{scorer.name}'; the key must match it")
    return scorers


def compute_scores(
    setup: RunSetup, policy: torch.nn.Module, policy_key: str, names: list[str], shard_size: int = 256
) -> tuple[pd.DataFrame, bool]:
    """The scores ``names`` of every training pair under ``policy``, from the cache or computed and cached.

    The result is also copied to ``<output_dir>/scores.parquet``.
    """
    pair_ids = [pair.pair_id for pair in setup.datamodule.pairs["train"]]
    if not names:
        return pd.DataFrame({"pair_id": pair_ids}), True
    scorers = instantiate_scorers(setup.cfg, names)
    key = content_key(
        "scores-v1",
        policy_key,
        setup.datamodule.datasets["train"].fingerprint(),
        setup.datamodule.datasets["val"].fingerprint(),
        setup.loss.hparams(),
        [(scorer.name, scorer.fingerprint()) for scorer in scorers],
    )
    work_dir = setup.cache_dir / "scores" / key
    hit = (work_dir / "scores.parquet").exists()
    if hit:
        log.info("scores %s from cache %s", names, work_dir)
    else:
        context = scoring_context(setup, policy, policy_key, work_dir)
        provenance = {"model": setup.source.name, "checkpoint": policy_key, "config": _plain(setup.cfg.get("scorers"))}
        ScoreRunner(scorers, shard_size=shard_size).run(context, provenance)
    shutil.copyfile(work_dir / "scores.parquet", setup.output_dir / "scores.parquet")
    scores, _ = read_scores(work_dir / "scores.parquet")
    if scores["pair_id"].tolist() != pair_ids:
        raise RuntimeError(f"cached scores in {work_dir} do not match the training pairs; delete the folder")
    return scores, hit


def run_selection_pipeline(setup: RunSetup, model: torch.nn.Module) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Warm-up, scores, selection; restricts the training data to the kept pairs.

    Returns:
        The model to train on the subset (the warm-up policy or a fresh initial model) and a summary.
    """
    cfg = setup.cfg
    rule: SelectionRule = instantiate(cfg.select)
    policy, policy_key, warmup_hit = warm_up(setup, model)
    # the rule's scores, plus any extra ones asked for the analysis (computed in the same pass, never used here)
    names = list(dict.fromkeys([*rule.scores, *(cfg.pipeline.get("extra_scores") or [])]))
    scores, scores_hit = compute_scores(setup, policy, policy_key, names, int(cfg.pipeline.shard_size))
    selection = rule.select(scores)
    if not selection.kept:
        raise ValueError(f"select={selection.rule} kept no pairs (thresholds: {selection.thresholds})")
    (setup.output_dir / "selection.json").write_text(selection.to_json())
    setup.datamodule.restrict("train", selection.kept)
    log.info(
        "selection %s kept %d of %d pairs (%.1f%%)",
        selection.rule,
        len(selection.kept),
        selection.total,
        100 * selection.kept_fraction,
    )
    restart = cfg.pipeline.restart_from
    if restart == "reference":
        policy = setup.load_model()
    elif restart != "warmup":
        raise ValueError(f"pipeline.restart_from must be warmup or reference, got {restart!r}")
    summary = {
        "rule": selection.rule,
        "thresholds": selection.thresholds,
        "kept_count": len(selection.kept),
        "total": selection.total,
        "kept_fraction": selection.kept_fraction,
        "scores": rule.scores,
        "extra_scores": [name for name in names if name not in rule.scores],
        "warmup_from_cache": warmup_hit,
        "scores_from_cache": scores_hit,
        "warmup_key": policy_key,
        "restart_from": restart,
    }
    return policy, summary
