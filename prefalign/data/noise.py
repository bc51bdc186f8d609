"""Label noise added at load time: a further fraction of a split's pairs with chosen and rejected swapped.

The built-in set ships with its own noise (about 22% flipped and 10% ambiguous training pairs, clean validation
pairs). ``data.flip_fraction`` and ``data.val_flip_fraction`` make a noisier set without rebuilding it: after
``max_train_pairs`` / ``max_val_pairs``, ``round(fraction * n)`` of the split's not-yet-flipped pairs, drawn with
``data.flip_seed``, have their completions (and their ``score_chosen`` / ``score_rejected``) swapped. Each gets
``metadata["flipped_at_load"] = True`` and, where the data records its ground truth, ``label_flipped = True``, so
the ground-truth score (``select=oracle``) and the analysis see the new noise. A flipped pair keeps its
``pair_id``; its content changes, and with it the data fingerprint every cache key holds.

The validation flips serve the TIF paper's analysis of noise in the validation set: the scorers that read the
validation pairs (influence, LossDiff, IRM) see the noisy ones. The held-out metrics of ``evaluate.py`` and
``bench.paired`` are always taken on the clean validation pairs.

The checks of the fractions and counts that cut a split (:func:`check_fraction`, :func:`check_count`) live here too,
below every stage that reads them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from prefalign.data.records import PreferencePair


def check_fraction(key: str, fraction: float) -> float:
    """``fraction`` as a float in [0, 1); raises ``ValueError`` naming ``key`` otherwise."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 <= fraction < 1:
        raise ValueError(f"{key} must be a fraction in [0, 1), got {fraction!r}")
    return float(fraction)


def check_count(key: str, value: Any, minimum: int = 1, optional: bool = False) -> int | None:
    """``value`` as a count of at least ``minimum`` (``None`` allowed when ``optional``).

    A negative count would otherwise slice from the end: ``max_train_pairs=-5`` would keep all pairs but the last 5.

    Raises:
        ValueError: naming ``key`` and the value.
    """
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        expected = f"a whole number >= {minimum}" + (" or null" if optional else "")
        raise ValueError(f"{key} must be {expected}, got {value!r}")
    return value


def flipped(pair: PreferencePair) -> PreferencePair:
    """``pair`` with chosen and rejected (and their annotator scores) swapped, marked as flipped at load."""
    scores = dict(pair.scores)
    if "score_chosen" in scores or "score_rejected" in scores:
        scores["score_chosen"], scores["score_rejected"] = pair.scores.get("score_rejected"), pair.scores.get("score_chosen")
        scores = {key: value for key, value in scores.items() if value is not None}
    metadata = {**pair.metadata, "flipped_at_load": True}
    if "label_flipped" in pair.metadata:
        metadata["label_flipped"] = True
    return dataclasses.replace(pair, chosen=pair.rejected, rejected=pair.chosen, scores=scores, metadata=metadata)


def flip_pairs(pairs: list[PreferencePair], fraction: float, seed: int, key: str = "data.flip_fraction") -> tuple[list[PreferencePair], int]:
    """Swap the completions of ``round(fraction * len(pairs))`` pairs not flipped already (module docstring).

    Returns:
        The pairs in their order, and how many were flipped.

    Raises:
        ValueError: ``fraction`` outside [0, 1), or more flips asked for than there are unflipped pairs.
    """
    fraction = check_fraction(key, fraction)
    count = int(round(fraction * len(pairs)))
    if count == 0:
        return list(pairs), 0
    candidates = [i for i, pair in enumerate(pairs) if not pair.metadata.get("label_flipped")]
    if count > len(candidates):
        raise ValueError(
            f"{key}={fraction} asks for {count} flips of {len(pairs)} pairs, but only {len(candidates)} are not "
            "flipped already"
        )
    chosen = set(np.random.default_rng(seed).choice(candidates, size=count, replace=False).tolist())
    return [flipped(pair) if i in chosen else pair for i, pair in enumerate(pairs)], count
