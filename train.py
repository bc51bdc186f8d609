"""Train a policy with a preference loss: ``python train.py [loss=dpo] [model=smollm2_135m] [data=builtin]``."""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from prefalign.training import run_training


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job; returns its final metrics (also written to ``metrics.json``)."""
    return run_training(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = run(cfg)
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
