"""Train a policy with a preference loss: ``python train.py [loss=dpo] [model=smollm2_135m] [data=builtin]``.

With ``select=<rule>`` it runs the selection pipeline (warm-up, scores, selection, training), a sequence of the
stages ``train.py``, ``score.py`` and ``select.py`` (:mod:`prefalign.stages.pipeline`). With ``online=iterative`` it runs
rounds of iterative DPO, each a sequence of ``sample.py`` and the training above (:mod:`prefalign.stages.iterative`).
"""

from __future__ import annotations

import logging
import shlex
from typing import Any

import hydra
from hydra.utils import get_method
from omegaconf import DictConfig

# torch, Lightning and transformers load inside run() and main(), once Hydra has composed the config: a typo or
# --help is answered in about a second instead of after the heavy imports
from prefalign.config import (
    FULL_DATA_TARGETS,
    hydra_quoted,
    log_from_rank_zero,
    refuse_multirun_with_process_launch,
    refuse_sweep_without_multirun,
    warn_unread_selection_settings,
)
from prefalign.folder_lock import hold_folder

log = logging.getLogger(__name__)


def trains_all_pairs(cfg: DictConfig) -> bool:
    """Whether ``cfg`` asks for a plain training run (``select=full`` or no ``select``), decided from the config
    alone for the default, so that a plain ``python train.py`` imports no scoring or selection code."""
    node = cfg.get("select")
    if node is None or (node.get("_target_") in FULL_DATA_TARGETS and not node.get("invert", False)):
        return True
    from prefalign.stages.pipeline import needs_selection

    return not needs_selection(cfg)


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job, or the selection pipeline, or with ``online=<option>`` its rounds; then, with
    ``evaluate_after_training=true``, the evaluation. Returns the final metrics (also in ``metrics.json``).

    The run holds its folder's lock throughout (:mod:`prefalign.folder_lock`). Each branch is a stage of
    :mod:`prefalign.stages`, imported only when it runs.
    """
    warn_unread_selection_settings(cfg)
    with hold_folder(cfg.paths.output_dir):
        if cfg.get("online"):
            return get_method(cfg.online.runner)(cfg)  # prefalign.stages.iterative / curriculum
        if trains_all_pairs(cfg):
            from prefalign.stages.train import run_training

            result = run_training(cfg)
        else:
            from prefalign.stages.pipeline import run_selection_pipeline

            result = run_selection_pipeline(cfg)
        if cfg.get("evaluate_after_training") and not result.get("complete"):
            from prefalign.stages.evaluate import evaluate_trained_run

            result = evaluate_trained_run(cfg, result)
        return result


def resume_command(cfg: DictConfig) -> str:
    """The command that resumes this run in its own directory, to paste into a shell as printed (the selection
    pipeline: its warm-up resumes from its own checkpoint, the final run from ``<run>/checkpoints/last.ckpt``).

    A job of a ``-m`` sweep resumes as one run: its own overrides (the swept values of this job), its folder as a
    quoted Hydra value (``0_loss=dpo,model=...`` holds ``=`` and ``,``), no ``-m``, and, when an ``experiment=``
    defines the sweep, ``hydra.sweeper.params=null``: this is one job of it, not the sweep run without ``-m``.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    overrides = [item for item in hydra_cfg.overrides.task if not item.startswith(("hydra.run.dir=", "ckpt_path="))]
    pieces = [*overrides, f"hydra.run.dir={hydra_quoted(str(cfg.paths.output_dir))}", "ckpt_path=last"]
    if hydra_cfg.mode == RunMode.MULTIRUN and hydra_cfg.sweeper is not None and hydra_cfg.sweeper.get("params"):
        pieces.append("hydra.sweeper.params=null")
    return " ".join(["python", "train.py", *(shlex.quote(piece) for piece in pieces)])


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    refuse_sweep_without_multirun()
    refuse_multirun_with_process_launch(cfg)
    log_from_rank_zero()
    from prefalign.checkpointing import TrainingInterrupted

    try:
        metrics = run(cfg)
    except TrainingInterrupted as stop:
        log.warning("%s\nresume with: %s", stop, resume_command(cfg))
        raise SystemExit(stop.exit_code) from None
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
