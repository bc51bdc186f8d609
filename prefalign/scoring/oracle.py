"""The ground truth of data with known noise as a score column: what ``select=oracle`` reads.

This is the one scorer that reads pair metadata. It exists for data whose noise is known (the built-in set, or
any set with ``label_flipped`` / ``ambiguous`` metadata, e.g. after ``data.source.flip_fraction``), so that the
oracle selection can measure the ceiling that no method can pass. No method may read this column.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from prefalign.data.records import DataError
from prefalign.scoring.base import Scorer, ScoringContext
from prefalign.scoring.margins import batch_pairs

CLEAN, AMBIGUOUS, FLIPPED = 0.0, 1.0, 2.0


def ground_truth_code(metadata: dict[str, Any], pair_id: str) -> float:
    """``0`` for a clean pair, ``1`` for an ambiguous one (both answers right or both wrong), ``2`` for a flipped
    one (chosen and rejected swapped); a pair both flipped and ambiguous counts as flipped.

    Raises:
        DataError: naming the pair, when its metadata has no ``label_flipped`` or no ``ambiguous``.
    """
    missing = [key for key in ("label_flipped", "ambiguous") if key not in metadata]
    if missing:
        raise DataError(
            f"pair {pair_id}: the ground_truth score (select=oracle) needs metadata {missing}; it exists only for "
            "data with known noise (data=builtin, or metadata label_flipped / ambiguous in the pairs file)"
        )
    if metadata["label_flipped"]:
        return FLIPPED
    return AMBIGUOUS if metadata["ambiguous"] else CLEAN


class GroundTruthScorer(Scorer):
    """``ground_truth``: 0 clean, 1 ambiguous, 2 flipped, from each pair's metadata (:func:`ground_truth_code`)."""

    name = "ground_truth"
    label = "Ground truth"

    def score_batch(self, context: ScoringContext, batch: dict[str, Any], shared: dict[str, Tensor]) -> Tensor:
        codes = [ground_truth_code(pair.metadata, pair.pair_id) for pair in batch_pairs(context, batch)]
        return torch.tensor(codes, dtype=torch.float64)
