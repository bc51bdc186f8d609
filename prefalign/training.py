"""The training stage: one training run, from a composed config to a trained policy and its metrics.

``python train.py`` trains on all pairs; ``python train.py data.selection=<selection.json>`` on the pairs a
selection kept (``data.weights=<scores.parquet>:<column>`` weights the per-pair losses); ``model.init_from=<run>``
starts the policy from another run's policy while the reference stays the initial weights. The selection
pipeline (``select=<rule>``, :mod:`prefalign.pipeline`) is a sequence of these runs and of the scoring and
selection stages.

Output directory layout (the run's Hydra directory)::

    config.yaml          the resolved config
    data_report.json     dropped and truncated pairs per split (nothing is dropped silently)
    checkpoints/         Lightning checkpoints (last.ckpt); resume with ckpt_path=.../last.ckpt
    tensorboard/         TensorBoard logs (train/*, val/* with TRL's metric names)
    policy/              the final policy in Hugging Face format (save_pretrained + tokenizer)
    metrics.json         final metrics, sizes, timings, and the selection trained on (rule, thresholds, kept)
"""

from __future__ import annotations

import logging
import time
from typing import Any

from omegaconf import DictConfig

from prefalign.atomic import write_json
from prefalign.models import save_policy
from prefalign.run_setup import setup_run
from prefalign.trainer import build_trainer, compiled_decoder, final_metrics, run_module

log = logging.getLogger(__name__)


def run_training(cfg: DictConfig) -> dict[str, Any]:
    """Train a policy as configured and write the run's outputs (layout in the module docstring).

    Returns:
        The final metrics (``train/*`` of the last step, ``val/*`` of the last validation) and run facts.
    """
    start = time.perf_counter()
    setup = setup_run(cfg)
    model = setup.load_model()
    if getattr(model, "peft_config", None):
        model.print_trainable_parameters()
    cache_hits = setup.attach_reference(model) if setup.loss.requires_reference else {}

    module = run_module(cfg, model, setup.loss)
    trainer = build_trainer(cfg, setup.output_dir)
    with compiled_decoder(model, bool(cfg.get("compile", False))):
        trainer.fit(module, datamodule=setup.datamodule, ckpt_path=cfg.get("ckpt_path"))

    policy_dir = save_policy(module.policy, setup.tokenizer, setup.output_dir / "policy")
    metrics = final_metrics(trainer)
    datamodule = setup.datamodule
    result: dict[str, Any] = {
        **metrics,
        "run": {
            "model": setup.source.name,
            "loss": type(setup.loss).__name__,
            "data": datamodule.source.name,
            "data_fingerprint": datamodule.fingerprints["train"],
            "train_pairs": len(datamodule.datasets["train"]),
            "val_pairs": len(datamodule.datasets["val"]),
            "init_from": setup.source.init_from,
            "weights": cfg.data.get("weights"),
            "global_steps": trainer.global_step,
            "reference_from_cache": cache_hits,
            "elapsed_s": round(time.perf_counter() - start, 1),
            "output_dir": str(setup.output_dir),
            "policy_dir": str(policy_dir),
        },
    }
    if datamodule.selection is not None:
        result["selection"] = dict(datamodule.selection)
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
