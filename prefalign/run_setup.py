"""What every stage of a run shares, built from its config: model source, tokenizer, loss, data, device and the
settings of its log-prob passes.

This sits below all the stages (training, scoring, evaluation), so that each of them can build the same
setup from a config without importing another stage.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from prefalign.atomic import write_json
from prefalign.data.datamodule import PreferenceDataModule, datamodule_from_config
from prefalign.keys import plain
from prefalign.logprobs import LogpSettings
from prefalign.losses import PreferenceLoss
from prefalign.models import ModelSource
from prefalign.reference import cached_reference_logps
from prefalign.trainer import run_device

log = logging.getLogger(__name__)


@dataclass
class RunSetup:
    """What every stage of a run shares: model source, tokenizer, loss, data and log-prob settings."""

    cfg: DictConfig
    source: ModelSource
    tokenizer: Any
    loss: PreferenceLoss
    datamodule: PreferenceDataModule
    output_dir: Path | None
    cache_dir: Path
    # where trainer.fit will train (from trainer.accelerator / trainer.devices): the passes outside fit
    # (reference log-probs, scoring) run there too
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    # how every log-prob pass of the run runs the model (training, reference, scoring, held-out evaluation)
    logp_settings: LogpSettings = field(default_factory=LogpSettings)

    def load_model(self) -> torch.nn.Module:
        """The initial policy (the model source's, or ``model.init_from``), on the run's device."""
        return self.source.load_model().to(self.device)

    def attach_reference(self, model: torch.nn.Module | None = None, splits: tuple[str, ...] = ("train", "val")) -> dict[str, bool]:
        """:func:`attach_reference_logps` with this run's settings; ``model`` is the initial policy when it is
        already loaded (it is the reference unless ``model.reference_path`` is set, or under ``init_from``)."""
        return attach_reference_logps(self, model, splits)


def setup_run(cfg: DictConfig, write_files: bool = True) -> RunSetup:
    """Seed, write the resolved config, build the model source, tokenizer, loss, tokenised data and the run's
    log-prob settings (:class:`~prefalign.logprobs.LogpSettings`, the one place they are read from the config).

    Args:
        cfg: the stage's config.
        write_files: write ``config.yaml`` and ``data_report.json`` into ``cfg.paths.output_dir`` (evaluation
            rebuilds a run's setup without writing into it; the setup's ``output_dir`` is then ``None``).
    """
    folder = Path(cfg.paths.output_dir) if write_files else None
    if write_files:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(cfg.seed, workers=True)
    logp_settings = LogpSettings.from_config(cfg)  # checked before any model or data loads
    source: ModelSource = instantiate(cfg.model)
    tokenizer = source.load_tokenizer()
    loss: PreferenceLoss = instantiate(cfg.loss)
    # the data config's restrictions on the pairs (selection, weights, order, flips) are read there, once
    datamodule = datamodule_from_config(cfg.data, tokenizer=tokenizer, mismatched=loss.requires_mismatched, seed=cfg.seed)
    datamodule.setup("fit")
    if write_files:
        write_json(datamodule.report, folder / "data_report.json")
    cache_dir = Path(str(cfg.paths.cache_dir)).expanduser()
    return RunSetup(cfg, source, tokenizer, loss, datamodule, folder, cache_dir, run_device(cfg.trainer), logp_settings)


def reference_pass_settings(cfg: DictConfig, logp_settings: LogpSettings) -> dict[str, Any]:
    """The settings of a run that shape its reference log-prob pass (rounding included): part of its cache key.

    Args:
        cfg: the run's config (attention, batching, precision, device).
        logp_settings: the run's log-prob settings (prompt sharing, packing, vocabulary chunks).
    """
    return {
        **logp_settings.key(),
        "attn_implementation": plain(cfg.model.get("attn_implementation")),
        "eval_batch_size": cfg.data.get("eval_batch_size"),
        "group_by_length": cfg.data.get("group_by_length", True),
        "precision": plain(cfg.trainer.get("precision")),
        "device": str(run_device(cfg.trainer).type),
    }


def attach_reference_logps(
    setup: RunSetup, model: torch.nn.Module | None = None, splits: tuple[str, ...] = ("train", "val")
) -> dict[str, bool]:
    """Give the splits their reference log-probs, from the cache or computed once with the reference model.

    The reference is ``model.reference_path`` when set; otherwise the source's initial weights (``model``
    itself, when it is the freshly loaded initial policy, with LoRA adapters disabled). Under a selection
    (``data.selection``) the whole training split's log-probs are attached and sliced, so the run shares the
    cache entry of the full data.

    Returns:
        For each split, whether the log-probs came from the cache.
    """
    source, datamodule = setup.source, setup.datamodule
    # the policy is its own reference only while it still holds the source's initial weights
    model_is_reference = model is not None and not source.reference_path and not source.init_from
    settings = reference_pass_settings(setup.cfg, setup.logp_settings)
    hits = {}
    for split in splits:
        dataset = datamodule.reference_dataset(split)

        def load_reference() -> torch.nn.Module:
            if model_is_reference:
                return model
            return source.load_reference_model().to(setup.device)

        disable = getattr(model, "disable_adapter", None) if model_is_reference else None
        with disable() if disable is not None else nullcontext():
            logps, hit = cached_reference_logps(
                reference_fingerprint=source.reference_fingerprint(),
                dataset=dataset,
                loader=datamodule.loader(dataset, datamodule.eval_batch_size, shuffle=False),
                cache_dir=setup.cache_dir,
                load_model=load_reference,
                logp_settings=setup.logp_settings,
                split=split,
                settings=settings,
            )
        datamodule.set_reference(split, logps)
        hits[split] = hit
    return hits
