"""Train a policy with a preference loss: ``python train.py [loss=dpo] [model=smollm2_135m] [data=builtin]``.

With ``select=<rule>`` it runs the selection pipeline (warm-up, scores, selection, training), a sequence of the
stages ``train.py``, ``score.py`` and ``select.py`` (:mod:`prefalign.pipeline`).
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from prefalign.config import refuse_sweep_without_multirun
from prefalign.pipeline import run_train_command


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run one training job (or the selection pipeline); returns its final metrics (also in ``metrics.json``)."""
    return run_train_command(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    refuse_sweep_without_multirun()
    metrics = run(cfg)
    return metrics.get(cfg.get("optimized_metric"))


if __name__ == "__main__":
    main()
