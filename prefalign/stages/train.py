"""The training stage: one training run, from a composed config to a trained policy and its metrics.

``python train.py`` trains on all pairs; ``python train.py data.selection=<selection.json>`` on the pairs a
selection kept (``data.weights=<scores.parquet>:<column>`` weights the per-pair losses); ``model.init_from=<run>``
starts the policy from another run's policy while the reference stays the initial weights. The selection
pipeline (``select=<rule>``, :mod:`prefalign.stages.pipeline`) is a sequence of these runs and of the scoring and
selection stages.

Output directory layout (the run's Hydra directory)::

    config.yaml          the resolved config
    data_report.json     dropped and truncated pairs per split (nothing is dropped silently)
    checkpoints/         last.ckpt: during training (every 10 min by default), on SIGINT/SIGTERM and on exceptions
                         (prefalign/checkpointing.py); resume with ckpt_path=<run>/checkpoints/last.ckpt (or
                         hydra.run.dir=<run> ckpt_path=last). Once the run is finished it keeps the run's progress
                         and settings only, unless callbacks.checkpoint.keep_training_state=true
    tensorboard/         TensorBoard logs (train/*, val/* with TRL's metric names)
    policy/              the final policy in Hugging Face format (save_pretrained + tokenizer)
    metrics.json         final metrics, sizes, timings, peak memory per process, and the selection trained on (rule,
                         thresholds, kept);
                         after a resume that extended the run, ``resumed_with`` ({setting: [first, now]})
    eval/heldout-val.json  the last validation's per-pair values (accuracy, margin, loss, ...), keyed by the policy's
                         files and settings (prefalign/heldout_record.py): paired comparisons read them back
    inrun/               with inrun=influence: every trained pair's influence at every step, and its per-pair
                         summaries as inrun/scores.parquet (prefalign/inrun/record.py)
    .lock                held while the run writes here (prefalign/folder_lock.py): one run per folder
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from prefalign.atomic import write_json
from prefalign.checkpointing import (
    ResumableCheckpoint,
    check_resumed_data,
    read_checkpoint,
    resume_changes,
    run_record,
    training_complete,
)
from prefalign.data.restrictions import PairRestrictions
from prefalign.folder_lock import hold_folder
from prefalign.heldout_record import write_values
from prefalign.models import save_policy
from prefalign.run_setup import setup_run
from prefalign.safe_config import load_config
from prefalign.trainer import GatherFullPolicy, PeakMemory, build_trainer, compiled_decoder, final_metrics, run_module

log = logging.getLogger(__name__)


def run_training(cfg: DictConfig) -> dict[str, Any]:
    """Train a policy as configured and write the run's outputs (layout in the module docstring).

    One run per folder: the run holds its output folder's lock throughout (:mod:`prefalign.folder_lock`). A resume
    (``ckpt_path``) is checked against the checkpoint's recorded settings before anything is loaded
    (:func:`prefalign.checkpointing.resume_changes`).

    Returns:
        The final metrics (``train/*`` of the last step, ``val/*`` of the last validation) and run facts.
    """
    with hold_folder(cfg.paths.output_dir):
        return _run_training(cfg)


def _run_training(cfg: DictConfig) -> dict[str, Any]:
    start = time.perf_counter()
    checkpoint, saved, resumed_with = checked_resume(cfg)  # refused here, before any model loads, if it differs
    if saved is not None and training_complete(saved.progress, cfg.trainer):
        return completed_run(checkpoint, saved.progress, cfg)

    setup = setup_run(cfg)
    if saved is not None:  # the same settings, and the same pairs too (checked before the model loads)
        check_resumed_data(saved, setup.datamodule.fingerprints["train"])
    model = setup.load_model()
    if getattr(model, "peft_config", None):
        model.print_trainable_parameters()
    cache_hits = setup.attach_reference(model) if setup.loss.requires_reference else {}
    module = run_module(cfg, model, setup.loss, setup.logp_settings)

    gathered, memory = GatherFullPolicy(), PeakMemory()
    inrun = inrun_callbacks(cfg, setup)
    trainer = build_trainer(cfg, setup.output_dir, extra_callbacks=[gathered, memory, *inrun])
    checkpointing = [callback for callback in trainer.callbacks if isinstance(callback, ResumableCheckpoint)]
    for callback in checkpointing:  # every checkpoint records the settings a resume must keep
        callback.run_record = run_record(cfg, resumed_with, setup.datamodule.fingerprints["train"])
    log_batch_layout(trainer, setup.datamodule.batch_size)
    with compiled_decoder(model, bool(cfg.get("compile", False))):
        throughput = fit(trainer, module, setup.datamodule, checkpoint)

    metrics = final_metrics(trainer)
    policy_dir = setup.output_dir / "policy"
    if trainer.is_global_zero:  # the other processes of a DDP or FSDP run write nothing
        save_policy(module.policy, setup.tokenizer, policy_dir, state_dict=gathered.state)
    result = {**metrics, "run": {**run_facts(setup, trainer, throughput, cache_hits, start), "memory": memory.per_process}}
    if setup.datamodule.selection is not None:
        result["selection"] = dict(setup.datamodule.selection)
    if resumed_with:
        result["resumed_with"] = resumed_with
    for callback in inrun:
        result["inrun"] = callback.summary()
    if not trainer.is_global_zero:
        return result
    keep_validation_values(module, trainer, setup.output_dir)
    write_json(result, setup.output_dir / "metrics.json")
    for callback in checkpointing:  # the run is complete: its checkpoint keeps what keep_training_state says
        callback.run_finished()
    log_done(result, metrics, throughput, trainer.world_size, setup.output_dir)
    return result


def inrun_callbacks(cfg: DictConfig, setup: Any) -> list[Any]:
    """The in-run influence callback of ``inrun=influence`` (:mod:`prefalign.inrun`), or none."""
    if not cfg.get("inrun"):
        return []
    from hydra.utils import instantiate

    return [instantiate(cfg.inrun, output_dir=str(setup.output_dir), data_fingerprint=setup.datamodule.fingerprints["train"])]


def checked_resume(cfg: DictConfig) -> tuple[str | None, Any, dict[str, list[Any]]]:
    """The checkpoint to resume from (``ckpt_path``), read as data, and the settings the resume changes.

    Returns:
        ``(checkpoint, saved, resumed_with)``: ``(None, None, {})`` for a fresh run.

    Raises:
        ValueError: the resume changes a setting that can change a result
            (:func:`prefalign.checkpointing.resume_changes`), or extends a finished run whose checkpoint kept no
            training state.
    """
    checkpoint = resume_checkpoint(cfg)
    if checkpoint is None:
        return None, None, {}
    saved = read_checkpoint(checkpoint)  # as data (weights_only); a truncated file is named
    resumed_with = resume_changes(saved, cfg)  # another run's settings are refused here
    if not training_complete(saved.progress, cfg.trainer) and not saved.training_state:
        raise ValueError(
            f"ckpt_path={checkpoint}: the run finished at step {saved.progress['global_step']} and its checkpoint "
            "keeps its progress and settings only, not the optimiser's state that extending it needs "
            f"({', '.join(f'{key}={new}' for key, (_, new) in resumed_with.items()) or 'nothing left to train'}). "
            "Start a new run from its policy (model.init_from=<run>, another folder), or keep the whole state "
            "in the runs you mean to extend (callbacks.checkpoint.keep_training_state=true)"
        )
    return checkpoint, saved, resumed_with


def global_batch_size(trainer: Any, batch_size: int) -> int:
    return batch_size * trainer.world_size * trainer.accumulate_grad_batches


def log_batch_layout(trainer: Any, batch_size: int) -> None:
    log.info(
        "%s on %d process(es): global batch %d = %d per device x %d device(s) x %d accumulated",
        type(trainer.strategy).__name__,
        trainer.world_size,
        global_batch_size(trainer, batch_size),
        batch_size,
        trainer.world_size,
        trainer.accumulate_grad_batches,
    )


def keep_validation_values(module: Any, trainer: Any, output_dir: Path) -> Path | None:
    """Keep the last validation's per-pair values as the run's held-out values (:mod:`prefalign.heldout_record`),
    so a paired comparison of runs (``bench.paired``) need not score the policy again. Only when they are the
    final policy's on the validation pairs as loaded: a validation at the last step, one process (each process of
    a DDP run validates a part), no validation labels flipped at load (held-out values are on the clean pairs)."""
    values = module.last_val_pairs
    if not values or trainer.world_size != 1 or module.validated_at_step != trainer.global_step:
        return None
    cfg = load_config(output_dir / "config.yaml", keys=("model", "loss", "data"))
    if PairRestrictions.from_config(cfg.data).flips("val"):
        return None
    return write_values(output_dir, cfg, "val", values)


def fit(trainer: Any, module: Any, datamodule: Any, checkpoint: str | None) -> float:
    """``trainer.fit`` (from ``checkpoint`` when resuming), then a last validation if the run stopped between
    validations; returns the training throughput in pairs per second per device."""
    fit_start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint, weights_only=True)
    throughput = module.pairs_trained / max(time.perf_counter() - fit_start, 1e-9)
    has_val = len(datamodule.datasets["val"]) > 0 and trainer.limit_val_batches != 0
    if has_val and module.validated_at_step != trainer.global_step:
        # a run that stopped before an epoch's end (max_steps) ends with a validation all the same, so that
        # metrics.json and a sweeper's optimized_metric always have val/*
        log.info("training stopped at step %d, before an end-of-epoch validation: validating now", trainer.global_step)
        trainer.validate(module, datamodule=datamodule, verbose=False)
    return throughput


def run_facts(setup: Any, trainer: Any, throughput: float, cache_hits: dict[str, bool], start: float) -> dict[str, Any]:
    """The ``run`` record of ``metrics.json``: what was trained, on what, how and how fast."""
    datamodule = setup.datamodule
    return {
        "model": setup.source.name,
        "loss": type(setup.loss).__name__,
        "data": datamodule.source.name,
        "data_fingerprint": datamodule.fingerprints["train"],
        "train_pairs": len(datamodule.datasets["train"]),
        "val_pairs": len(datamodule.datasets["val"]),
        "init_from": setup.source.init_from,
        "weights": datamodule.restrictions.weights,
        "order_by": datamodule.restrictions.order_by,
        "order": datamodule.restrictions.order,
        "flip_fraction": {split: datamodule.restrictions.flips(split) for split in ("train", "val")},
        "global_steps": trainer.global_step,
        "strategy": type(trainer.strategy).__name__,
        "world_size": trainer.world_size,
        "global_batch_size": global_batch_size(trainer, datamodule.batch_size),
        "train_pairs_per_s_per_device": round(throughput, 2),
        "reference_from_cache": cache_hits,
        "elapsed_s": round(time.perf_counter() - start, 1),
        "output_dir": str(setup.output_dir),
        "policy_dir": str(setup.output_dir / "policy"),
    }


def log_done(result: dict[str, Any], metrics: dict[str, float], throughput: float, world_size: int, output_dir: Path) -> None:
    summary = ", ".join(f"{k}={metrics[k]:.4f}" for k in ("train/loss", "val/loss", "val/rewards/accuracies") if k in metrics)
    summary += f" ({throughput:.1f} pairs/s per device, {world_size} device(s))"
    log.info(
        "done in %.0f s: %s\n  outputs: %s\n  policy (Hugging Face format): %s\n  metrics: %s\n  logs: tensorboard --logdir %s",
        result["run"]["elapsed_s"],
        summary,
        output_dir,
        output_dir / "policy",
        output_dir / "metrics.json",
        output_dir / "tensorboard",
    )


def resume_checkpoint(cfg: DictConfig) -> str | None:
    """The checkpoint ``ckpt_path`` names: a path, or ``last`` for ``<output dir>/checkpoints/last.ckpt`` (none
    there yet: a fresh start, so the same command starts and resumes a run).

    Raises:
        FileNotFoundError: ``ckpt_path`` is a path with no checkpoint.
    """
    path = cfg.get("ckpt_path")
    if path is None:
        return None
    if str(path) == "last":
        last = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        if not last.exists():  # a file, or the folder of a sharded (FSDP) checkpoint
            log.info("ckpt_path=last: no %s yet, starting from the beginning", last)
            return None
        return str(last)
    if not Path(path).exists():
        raise FileNotFoundError(f"ckpt_path={path}: no such checkpoint")
    return str(path)


def completed_run(checkpoint: str, progress: dict[str, int], cfg: DictConfig) -> dict[str, Any]:
    """A resume of a run that has nothing left to do: say so, write nothing, and return the run's own metrics."""
    run_dir = Path(checkpoint).resolve().parent.parent
    metrics_file = run_dir / "metrics.json"
    log.info(
        "the run of %s is complete (%d epoch(s), %d steps; trainer.max_epochs=%s, trainer.max_steps=%s): nothing "
        "to resume, nothing written. Its metrics: %s. To train further, raise trainer.max_epochs or trainer.max_steps",
        checkpoint,
        progress["epochs"],
        progress["global_step"],
        cfg.trainer.get("max_epochs"),
        cfg.trainer.get("max_steps"),
        metrics_file if metrics_file.exists() else "none",
    )
    metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
    return {**metrics, "complete": True}
