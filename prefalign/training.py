"""One training run, from a composed config to a trained policy and its metrics.

Output directory layout (the run's Hydra directory)::

    config.yaml          the resolved config
    data_report.json     dropped and truncated pairs per split (nothing is dropped silently)
    checkpoints/         Lightning checkpoints (last.ckpt); resume with ckpt_path=.../last.ckpt
    tensorboard/         TensorBoard logs (train/*, val/* with TRL's metric names)
    policy/              the final policy in Hugging Face format (save_pretrained + tokenizer)
    metrics.json         final metrics, sizes and timings
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from prefalign.data.datamodule import PreferenceDataModule
from prefalign.losses import PreferenceLoss
from prefalign.models import ModelSource, save_policy
from prefalign.module import PreferenceModule
from prefalign.reference import cached_reference_logps

log = logging.getLogger(__name__)


def write_json(data: Any, path: str | os.PathLike) -> None:
    """Write JSON atomically (temporary file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    with os.fdopen(handle, "w") as stream:
        json.dump(data, stream, indent=2, default=float)
    os.replace(tmp, path)


def attach_reference_logps(
    datamodule: PreferenceDataModule,
    model: torch.nn.Module,
    source: ModelSource,
    cache_dir: str | os.PathLike,
    share_prompt: bool = True,
) -> dict[str, bool]:
    """Give every split its reference log-probs, from the cache or computed once with the reference model.

    The reference is ``model.reference_path`` when set; otherwise the initial policy itself (``model``
    before any training step), with LoRA adapters disabled.

    Returns:
        For each split, whether the log-probs came from the cache.
    """
    hits = {}
    for split, dataset in datamodule.datasets.items():

        def load_reference() -> torch.nn.Module:
            if source.reference_path:
                return source.load_reference_model().to(next(model.parameters()).device)
            return model

        disable = getattr(model, "disable_adapter", None)
        with disable() if disable is not None and not source.reference_path else nullcontext():
            logps, hit = cached_reference_logps(
                reference_fingerprint=source.reference_fingerprint(),
                dataset=dataset,
                loader=datamodule.eval_loader(split),
                cache_dir=cache_dir,
                load_model=load_reference,
                share_prompt=share_prompt,
                split=split,
            )
        dataset.reference = logps
        hits[split] = hit
    return hits


def build_trainer(cfg: DictConfig, output_dir: Path) -> L.Trainer:
    """The Lightning trainer with the configured logger and callbacks, writing into ``output_dir``."""
    logger = instantiate(cfg.logger, save_dir=str(output_dir)) if cfg.get("logger") else False
    callbacks = [instantiate(callback) for callback in (cfg.get("callbacks") or {}).values() if callback]
    return instantiate(cfg.trainer, logger=logger, callbacks=callbacks, default_root_dir=str(output_dir))


def final_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {key: float(value) for key, value in sorted(trainer.callback_metrics.items())}


def run_training(cfg: DictConfig) -> dict[str, Any]:
    """Train a policy as configured and write the run's outputs (layout in the module docstring).

    Returns:
        The final metrics (``train/*`` of the last step, ``val/*`` of the last validation) and run facts.
    """
    start = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(cfg.seed, workers=True)

    source: ModelSource = instantiate(cfg.model)
    tokenizer = source.load_tokenizer()
    loss: PreferenceLoss = instantiate(cfg.loss)
    datamodule: PreferenceDataModule = instantiate(cfg.data)(
        tokenizer=tokenizer, mismatched=loss.requires_mismatched, seed=cfg.seed
    )
    datamodule.setup("fit")
    write_json(datamodule.report, output_dir / "data_report.json")

    model = source.load_model()
    if getattr(model, "peft_config", None):
        model.print_trainable_parameters()
    cache_hits = {}
    if loss.requires_reference:
        cache_hits = attach_reference_logps(datamodule, model, source, cfg.paths.cache_dir, cfg.share_prompt)

    module = PreferenceModule(
        model,
        loss,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        share_prompt=cfg.share_prompt,
    )
    trainer = build_trainer(cfg, output_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    policy_dir = save_policy(module.policy, tokenizer, output_dir / "policy")
    metrics = final_metrics(trainer)
    result = {
        **metrics,
        "run": {
            "model": source.name,
            "loss": type(loss).__name__,
            "data": datamodule.source.name,
            "train_pairs": len(datamodule.datasets["train"]),
            "val_pairs": len(datamodule.datasets["val"]),
            "global_steps": trainer.global_step,
            "reference_from_cache": cache_hits,
            "elapsed_s": round(time.perf_counter() - start, 1),
            "output_dir": str(output_dir),
            "policy_dir": str(policy_dir),
        },
    }
    write_json(result, output_dir / "metrics.json")
    summary = ", ".join(f"{k}={metrics[k]:.4f}" for k in ("train/loss", "val/loss", "val/rewards/accuracies") if k in metrics)
    log.info(
        "done in %.0f s: %s\n  outputs: %s\n  policy (Hugging Face format): %s\n  metrics: %s\n  logs: tensorboard --logdir %s",
        result["run"]["elapsed_s"],
        summary,
        output_dir,
        policy_dir,
        output_dir / "metrics.json",
        output_dir / "tensorboard",
    )
    return result
