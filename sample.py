"""Sample responses, reward them and build pairs: ``python sample.py [policy=<run dir>] reward=verifier pairs=best_worst``.

Writes ``responses.jsonl``, ``pairs.jsonl`` and ``sample_report.json`` into the run directory
(:mod:`prefalign.stages.sample`). Sampling is sharded and cached by content, so re-running an interrupted command
resumes it; ``responses=<run dir> pairs=rs_dpo`` builds other pairs from the same responses.
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from prefalign.config import log_from_rank_zero
from prefalign.folder_lock import hold_folder


def run(cfg: DictConfig) -> dict[str, Any]:
    """Sample, reward and pair; returns the report (``sample_report.json``). Holds the run folder's lock
    (:mod:`prefalign.folder_lock`)."""
    # imported once Hydra has composed the config: a typo or --help is answered before torch loads
    from prefalign.stages.sample import run_sampling

    with hold_folder(cfg.paths.output_dir):
        return run_sampling(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="sample")
def main(cfg: DictConfig) -> None:
    log_from_rank_zero()
    run(cfg)


if __name__ == "__main__":
    main()
