"""One training run, from a composed config to a trained policy and its metrics.

With ``select=full`` (the default) this trains on all pairs. With any other selection rule it runs the TIF
paper's pipeline first (:mod:`prefalign.pipeline`): warm-up on all pairs, auxiliary models, scores, selection,
then trains on the selected subset.

Output directory layout (the run's Hydra directory)::

    config.yaml          the resolved config
    data_report.json     dropped and truncated pairs per split (nothing is dropped silently)
    checkpoints/         Lightning checkpoints (last.ckpt); resume with ckpt_path=.../last.ckpt
    tensorboard/         TensorBoard logs (train/*, val/* with TRL's metric names)
    policy/              the final policy in Hugging Face format (save_pretrained + tokenizer)
    metrics.json         final metrics, sizes, timings, and the selection summary
    scores.parquet       per-pair scores (selection runs only)
    selection.json       kept pair ids, the rule and its resolved thresholds (selection runs only)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from prefalign.atomic import write_json
from prefalign.data.datamodule import PreferenceDataModule
from prefalign.logprobs import use_head_chunks
from prefalign.losses import PreferenceLoss
from prefalign.models import ModelSource, save_policy
from prefalign.module import PreferenceModule, precision_options
from prefalign.reference import cached_reference_logps

log = logging.getLogger(__name__)


@dataclass
class RunSetup:
    """What every stage of a run shares: model source, tokenizer, loss and data."""

    cfg: DictConfig
    source: ModelSource
    tokenizer: Any
    loss: PreferenceLoss
    datamodule: PreferenceDataModule
    output_dir: Path
    cache_dir: Path
    # where trainer.fit will train (from trainer.accelerator / trainer.devices): the passes outside fit
    # (reference log-probs, scoring) run there too
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def load_model(self) -> torch.nn.Module:
        """The initial policy (the model source's), on the run's device."""
        return self.source.load_model().to(self.device)


def run_device(trainer: Any) -> torch.device:
    """The device Lightning's ``trainer.fit`` trains on, for the passes that run outside it.

    Reference log-probs, the scorers and held-out metrics run on the model's own device. Models load on the
    CPU and Lightning moves them to its accelerator only inside ``fit`` (and back to the CPU when ``fit``
    ends), so without this a GPU run would compute its reference log-probs and every score on the CPU.

    Args:
        trainer: the ``trainer`` config (``accelerator``: ``auto``, ``cpu``, ``gpu``/``cuda`` or ``mps``;
            ``devices``: a count, ``auto`` or a list of indices, whose first is used).

    Raises:
        ValueError: an accelerator that is not available here, or one prefalign does not know.
    """
    accelerator = str(trainer.get("accelerator", "auto")).lower()
    if accelerator == "auto":  # Lightning's order: MPS, then CUDA, then the CPU
        mps = getattr(torch.backends, "mps", None)
        accelerator = "mps" if mps is not None and mps.is_available() else "cuda" if torch.cuda.is_available() else "cpu"
    if accelerator == "cpu":
        return torch.device("cpu")
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"trainer.accelerator={trainer.get('accelerator')}: no CUDA device is available here "
                "(torch.cuda.is_available() is False); use trainer.accelerator=auto or cpu"
            )
        devices = trainer.get("devices", "auto")
        first = next(iter(devices)) if isinstance(devices, (list, tuple, ListConfig)) and len(devices) else 0
        return torch.device("cuda", int(first))
    if accelerator == "mps":
        return torch.device("mps")
    raise ValueError(f"trainer.accelerator={trainer.get('accelerator')!r}: prefalign knows auto, cpu, gpu, cuda and mps")


def setup_run(cfg: DictConfig) -> RunSetup:
    """Seed, write the resolved config, build the model source, tokenizer, loss and tokenised data."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(cfg.seed, workers=True)
    use_head_chunks(cfg.get("head_chunk_tokens"))  # for every log-prob pass of this run
    source: ModelSource = instantiate(cfg.model)
    tokenizer = source.load_tokenizer()
    loss: PreferenceLoss = instantiate(cfg.loss)
    datamodule: PreferenceDataModule = instantiate(cfg.data)(
        tokenizer=tokenizer, mismatched=loss.requires_mismatched, seed=cfg.seed
    )
    datamodule.setup("fit")
    write_json(datamodule.report, output_dir / "data_report.json")
    cache_dir = Path(str(cfg.paths.cache_dir)).expanduser()
    return RunSetup(cfg, source, tokenizer, loss, datamodule, output_dir, cache_dir, run_device(cfg.trainer))


def attach_reference_logps(
    datamodule: PreferenceDataModule,
    model: torch.nn.Module,
    source: ModelSource,
    cache_dir: str | os.PathLike,
    share_prompt: bool = True,
    splits: tuple[str, ...] = ("train", "val"),
    pack_length: int | None = None,
) -> dict[str, bool]:
    """Give the splits their reference log-probs, from the cache or computed once with the reference model.

    The reference is ``model.reference_path`` when set; otherwise the initial policy itself (``model``
    before any training step), with LoRA adapters disabled.

    Returns:
        For each split, whether the log-probs came from the cache.
    """
    hits = {}
    for split in splits:
        dataset = datamodule.datasets[split]

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
                pack_length=pack_length,
            )
        dataset.reference = logps
        hits[split] = hit
    return hits


def build_trainer(cfg: DictConfig, output_dir: Path, checkpoints: bool = True, **overrides: Any) -> L.Trainer:
    """The Lightning trainer with the configured logger and callbacks, writing into ``output_dir``."""
    logger = instantiate(cfg.logger, save_dir=str(output_dir)) if cfg.get("logger") else False
    callbacks = []
    for name, callback in (cfg.get("callbacks") or {}).items():
        if not callback or (name == "checkpoint" and not checkpoints):
            continue
        if name == "checkpoint":
            callback = {**callback, "dirpath": str(output_dir / "checkpoints")}
        callbacks.append(instantiate(callback))
    if not checkpoints:
        overrides["enable_checkpointing"] = False
    options = precision_options({"precision": cfg.trainer.get("precision"), **overrides})
    return instantiate(cfg.trainer, logger=logger, callbacks=callbacks, default_root_dir=str(output_dir), **options)


def final_metrics(trainer: L.Trainer) -> dict[str, float]:
    return {key: float(value) for key, value in sorted(trainer.callback_metrics.items())}


@contextmanager
def compiled_decoder(model: torch.nn.Module, enabled: bool, **options: Any) -> Iterator[None]:
    """Inside the block, the policy's decoder runs ``torch.compile``'d (``compile=true``); eager again after.

    Only the decoder stack (where the time goes) is compiled, with dynamic shapes (packed rows and padded
    batches change width from batch to batch). It is undone on exit, so that the models scored, copied and
    saved afterwards are plain modules. ``python -m bench.compile`` measures whether it pays: on the 2-core CPU,
    training steps of the embedded model ran 1.09x faster once compiled (1.16x in an earlier, unrecorded run),
    after a one-off compilation of 148 s; it pays only for runs much longer than the default.
    """
    if not enabled:
        yield
        return
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    decoder.forward = torch.compile(decoder.forward, dynamic=True, **options)
    try:
        yield
    finally:
        del decoder.forward  # the instance attribute; the class's forward is back


def make_module(cfg: DictConfig, model: torch.nn.Module, loss: PreferenceLoss) -> PreferenceModule:
    return PreferenceModule(
        model,
        loss,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") else None,
        share_prompt=cfg.share_prompt,
        pack_length=cfg.get("pack_length"),
    )


def run_training(cfg: DictConfig) -> dict[str, Any]:
    """Train a policy as configured and write the run's outputs (layout in the module docstring).

    Returns:
        The final metrics (``train/*`` of the last step, ``val/*`` of the last validation) and run facts.
    """
    from prefalign.pipeline import needs_selection, run_selection_pipeline

    start = time.perf_counter()
    setup = setup_run(cfg)
    model = setup.load_model()
    if getattr(model, "peft_config", None):
        model.print_trainable_parameters()
    selecting = needs_selection(cfg)
    cache_hits = {}
    if setup.loss.requires_reference or selecting:
        cache_hits = attach_reference_logps(
            setup.datamodule, model, setup.source, setup.cache_dir, cfg.share_prompt, pack_length=cfg.get("pack_length")
        )
    pipeline: dict[str, Any] = {}
    if selecting:
        model, pipeline = run_selection_pipeline(setup, model)

    module = make_module(cfg, model, setup.loss)
    trainer = build_trainer(cfg, setup.output_dir)
    with compiled_decoder(model, bool(cfg.get("compile", False))):
        trainer.fit(module, datamodule=setup.datamodule, ckpt_path=cfg.get("ckpt_path"))

    policy_dir = save_policy(module.policy, setup.tokenizer, setup.output_dir / "policy")
    metrics = final_metrics(trainer)
    result = {
        **metrics,
        "run": {
            "model": setup.source.name,
            "loss": type(setup.loss).__name__,
            "data": setup.datamodule.source.name,
            "train_pairs": len(setup.datamodule.datasets["train"]),
            "val_pairs": len(setup.datamodule.datasets["val"]),
            "global_steps": trainer.global_step,
            "reference_from_cache": cache_hits,
            "elapsed_s": round(time.perf_counter() - start, 1),
            "output_dir": str(setup.output_dir),
            "policy_dir": str(policy_dir),
        },
    }
    if pipeline:
        result["selection"] = pipeline
    write_json(result, setup.output_dir / "metrics.json")
    if cfg.get("evaluate_after_training"):
        from prefalign.evaluation.run import evaluate_policy

        evaluation = cfg.evaluation
        report = evaluate_policy(setup.output_dir, evaluation.bench, evaluation.judge, evaluation.generation, setup.cache_dir)
        result["evaluation"] = {
            f"{report['benchmark']}-{report['judge']}": {
                "single": report["single"]["policy"]["value"],
                "baseline_single": report["single"]["baseline"]["value"],
                "winrate": report["winrate"]["value"],
            }
        }
        write_json(result, setup.output_dir / "metrics.json")
    summary = ", ".join(f"{k}={metrics[k]:.4f}" for k in ("train/loss", "val/loss", "val/rewards/accuracies") if k in metrics)
    log.info(
        "done in %.0f s: %s\n  outputs: %s\n  policy (Hugging Face format): %s\n  metrics: %s\n  logs: tensorboard --logdir %s",
        result["run"]["elapsed_s"],
        summary,
        setup.output_dir,
        policy_dir,
        setup.output_dir / "metrics.json",
        setup.output_dir / "tensorboard",
    )
    return result
