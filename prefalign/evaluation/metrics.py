"""Evaluation metrics with bootstrap confidence intervals.

* **Single**: the mean 1-10 judge score of the policy's answers (and of the baseline's).
* **WinRate**: the share of prompts on which the judge prefers the policy's answer to the baseline's, ties
  counting half (the papers' "WinRate against the SFT model"), in percent.
* **Length-controlled win rate** (an approximation of AlpacaEval 2's): a logistic regression of the outcome on
  the standardised length difference, ``P(win) = sigmoid(theta + phi * tanh((len_p - len_b) / s))`` with
  ``s`` the standard deviation of the length differences, fitted by maximum likelihood (ties are targets of
  0.5); the length-controlled win rate is ``sigmoid(theta)``, the predicted win rate at equal lengths.
  AlpacaEval 2 also has a per-instruction difficulty term, which needs many models' outputs and is left out.
* Every metric comes with a percentile bootstrap 95% interval over prompts and the number of items.
* **Paired differences** (:func:`paired_difference`): two policies measured on the same items (same prompts,
  same held-out pairs, same sampling seeds) differ by ``mean(a_i - b_i)``; resampling the items jointly gives an
  interval that is free of the between-item variance both share, much narrower than two separate intervals.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def bootstrap(
    values: Sequence[float],
    statistic: Callable[[np.ndarray], float] = np.mean,
    resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """``statistic`` of ``values`` with a percentile bootstrap 95% interval (over items)."""
    data = np.asarray(values, dtype=np.float64)
    if len(data) == 0:
        return {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": 0}
    rng = np.random.default_rng(seed)
    estimates = [statistic(data[rng.integers(0, len(data), len(data))]) for _ in range(resamples)]
    low, high = np.percentile(estimates, [2.5, 97.5])
    return {"value": float(statistic(data)), "ci_low": float(low), "ci_high": float(high), "n": int(len(data))}


def paired_difference(
    first: Sequence[float], second: Sequence[float], resamples: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """``mean(first_i - second_i)`` over items measured for both, with a paired percentile bootstrap 95% interval
    (the items resampled jointly), the two means, and how many items each side wins.

    Raises:
        ValueError: when the two lists do not have one value per item each (same length).
    """
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"a paired difference needs one value per item on both sides, got {len(a)} and {len(b)}")
    result = bootstrap(a - b, resamples=resamples, seed=seed)
    result.update({"first": float(a.mean()) if len(a) else math.nan, "second": float(b.mean()) if len(b) else math.nan,
                   "first_better": int((a > b).sum()), "second_better": int((a < b).sum())})
    return result


def mean_of_known(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are not ``None`` (unparsable judge replies), or ``None`` if none is known."""
    known = [v for v in values if v is not None]
    return float(np.mean(known)) if known else None


def win_rate(outcomes: Sequence[float | None], resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Win rate in percent (ties half) over the parsable outcomes, with counts and a bootstrap interval."""
    parsable = [o for o in outcomes if o is not None]
    result = bootstrap([100 * o for o in parsable], resamples=resamples, seed=seed)
    result.update(
        {
            "wins": int(sum(o > 0.5 for o in parsable)),
            "ties": int(sum(o == 0.5 for o in parsable)),
            "losses": int(sum(o < 0.5 for o in parsable)),
            "unparsable": len(outcomes) - len(parsable),
        }
    )
    return result


def _fit_length_model(outcomes: np.ndarray, features: np.ndarray, iterations: int = 50) -> tuple[float, float]:
    """Maximum-likelihood ``(theta, phi)`` of ``P = sigmoid(theta + phi * x)`` by Newton's method, with a tiny
    ridge penalty so that separable data keeps finite estimates."""
    design = np.stack([np.ones_like(features), features], axis=1)
    weights = np.zeros(2)
    ridge = 1e-3
    for _ in range(iterations):
        logits = design @ weights
        probabilities = 1 / (1 + np.exp(-logits))
        gradient = design.T @ (outcomes - probabilities) - ridge * weights
        hessian = -(design.T * (probabilities * (1 - probabilities))) @ design - ridge * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        weights = weights - step
        if np.abs(step).max() < 1e-10:
            break
    return float(weights[0]), float(weights[1])


def length_controlled_win_rate(
    outcomes: Sequence[float | None],
    policy_lengths: Sequence[float],
    baseline_lengths: Sequence[float],
    resamples: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Length-controlled win rate in percent (module docstring), with a bootstrap interval."""
    keep = [i for i, o in enumerate(outcomes) if o is not None]
    if len(keep) < 2:
        return {"value": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": len(keep), "length_coefficient": math.nan}
    y = np.array([outcomes[i] for i in keep], dtype=np.float64)
    difference = np.array([policy_lengths[i] - baseline_lengths[i] for i in keep], dtype=np.float64)
    scale = difference.std() or 1.0
    x = np.tanh(difference / scale)

    def statistic(indices: np.ndarray) -> float:
        theta, _ = _fit_length_model(y[indices], x[indices])
        return 100 / (1 + math.exp(-theta))

    everything = np.arange(len(y))
    theta, phi = _fit_length_model(y, x)
    rng = np.random.default_rng(seed)
    estimates = [statistic(rng.integers(0, len(y), len(y))) for _ in range(resamples)]
    low, high = np.percentile(estimates, [2.5, 97.5])
    return {
        "value": statistic(everything),
        "ci_low": float(low),
        "ci_high": float(high),
        "n": len(y),
        "length_coefficient": phi,
    }
