"""Score every training pair: ``python score.py policy=<run dir> scores=[influence,lossdiff,irm]``.

Writes ``scores.parquet`` (``pair_id`` + one column per score, provenance in the file's metadata) into the
run directory. Work is sharded and cached by content, so re-running an interrupted command resumes it.
``torchrun --nproc_per_node N score.py ... hydra.run.dir=<folder>`` splits the work between N processes and
writes the same files (rank 0 writes them, and logs).
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from prefalign.config import log_from_rank_zero


def run(cfg: DictConfig) -> dict[str, Any]:
    """Compute the configured scores; returns a summary (path, per-score statistics, timings)."""
    # imported once Hydra has composed the config: a typo or --help is answered before torch loads
    from prefalign.stages.score import run_scoring

    return run_scoring(cfg)


@hydra.main(version_base="1.3", config_path="conf", config_name="score")
def main(cfg: DictConfig) -> None:
    log_from_rank_zero()
    run(cfg)


if __name__ == "__main__":
    main()
