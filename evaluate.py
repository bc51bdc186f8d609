"""Evaluate a policy against its SFT baseline: ``python evaluate.py policy=<run dir> [bench=...] [judge=...]``.

``python evaluate.py sweep=<multirun dir>`` evaluates every run of a sweep and writes the papers' result table
(Markdown, CSV) and a WinRate-vs-kept-fraction plot into the sweep directory.
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from prefalign.folder_lock import hold_folder


def run(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate ``cfg.policy`` or every run of ``cfg.sweep``; returns the results. Each result folder is held
    while it is written (:mod:`prefalign.folder_lock`), and a sweep's folder while its tables are."""
    # imported once Hydra has composed the config: a typo or --help is answered before torch loads
    from prefalign.stages.evaluate import run_evaluation

    with hold_folder(cfg.sweep if cfg.get("sweep") else None):
        return run_evaluation(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg: DictConfig) -> float | None:
    result = run(cfg)
    return result.get("winrate", {}).get("value")


if __name__ == "__main__":
    main()
