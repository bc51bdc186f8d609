"""Selection rules: scores in, kept pair ids out.

Every rule reads a scores table (``pair_id`` + one column per score, see :mod:`prefalign.scoring`) and returns a
:class:`Selection`: the kept pair ids, the rule, its resolved thresholds and the kept fraction. Rules never read
pair metadata (the ground truth of synthetic data lives there); the one exception is :class:`OracleSelection`,
the upper bound on data with known noise, through the ``ground_truth`` score column.

Percentile bands follow the TIF paper's strict form ``delta_small < s < delta_large``, with ``delta`` the
given percentiles of the score's distribution; a band edge at the 0th or 100th percentile is open (keeps the
minimum or maximum). Where a rule takes ``keep_fraction`` instead of thresholds, it solves for symmetric
percentile bands ``(q, 100 - q)`` that keep that fraction (:func:`solve_symmetric_band`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


@dataclass
class Selection:
    """The result of a rule: kept pair ids (in score-file order) and how they were chosen."""

    kept: list[str]
    rule: str
    thresholds: dict[str, Any]
    total: int
    details: dict[str, Any] = field(default_factory=dict)
    # the rule's name in result tables (:meth:`SelectionRule.display_label`)
    label: str = ""

    @property
    def kept_fraction(self) -> float:
        return len(self.kept) / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "kept_fraction": self.kept_fraction, "kept_count": len(self.kept)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Selection":
        return cls(
            data["kept"], data["rule"], data["thresholds"], data["total"], data.get("details", {}), data.get("label", "")
        )


def column(scores: pd.DataFrame, name: str) -> np.ndarray:
    """A score column as float64, with a clear error when it is missing or not finite."""
    if name not in scores.columns:
        available = [c for c in scores.columns if c != "pair_id"]
        raise KeyError(f"the scores have no column '{name}' (available: {available})")
    values = scores[name].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        ids = scores["pair_id"].to_numpy()[bad][:5].tolist()
        raise ValueError(f"score '{name}' is not finite for {int(bad.sum())} pairs, e.g. {ids}")
    return values


def band_mask(values: np.ndarray, low: float, high: float) -> tuple[np.ndarray, dict[str, float]]:
    """``delta_low < v < delta_high`` with ``delta`` the ``low`` / ``high`` percentiles (open at 0 and 100)."""
    if not 0 <= low < high <= 100:
        raise ValueError(f"a percentile band needs 0 <= low < high <= 100, got ({low}, {high})")
    lower = -math.inf if low == 0 else float(np.percentile(values, low))
    upper = math.inf if high == 100 else float(np.percentile(values, high))
    mask = np.ones(len(values), dtype=bool)
    if low > 0:
        mask &= values > lower
    if high < 100:
        mask &= values < upper
    return mask, {"low_percentile": low, "high_percentile": high, "low_value": lower, "high_value": upper}


def solve_symmetric_band(
    kept_fraction_at: Callable[[float], float], target: float, iterations: int = 60
) -> float:
    """The ``q`` of symmetric bands ``(q, 100 - q)`` whose kept fraction is closest to ``target`` from above.

    ``kept_fraction_at(q)`` must be non-increasing in ``q`` (wider bands keep more). Bisection on
    ``q`` in ``[0, 50)``; with discrete data the exact target may not be reachable, and the returned ``q`` keeps
    at least ``target`` (the smallest such fraction found).
    """
    if not 0 < target <= 1:
        raise ValueError(f"keep_fraction must be in (0, 1], got {target}")
    low, high = 0.0, 50.0  # kept_fraction_at(0) is the largest
    if kept_fraction_at(0.0) < target:
        return 0.0
    for _ in range(iterations):
        middle = (low + high) / 2
        if kept_fraction_at(middle) >= target:
            low = middle
        else:
            high = middle
    return low


class SelectionRule:
    """Base class. ``scores`` lists the score columns the rule reads (the pipeline computes those)."""

    name = "rule"
    # the rule's name in result tables; an option of conf/select/ may set its own (``label: TIF``)
    label = ""

    def display_label(self) -> str:
        """The rule's name in result tables: its ``label``, or else its ``name``."""
        return self.label or self.name

    @property
    def scores(self) -> list[str]:
        return []

    def select(self, scores: pd.DataFrame) -> Selection:
        raise NotImplementedError

    def _result(self, scores: pd.DataFrame, mask: np.ndarray, thresholds: dict[str, Any], **details: Any) -> Selection:
        kept = scores["pair_id"].to_numpy()[mask].tolist()
        return Selection(kept, self.name, thresholds, len(scores), details, self.display_label())


class FullSelection(SelectionRule):
    """``full``: keep every pair (training on the full data, the papers' baseline).

    Args:
        keep_fraction: accepted so that one sweep can set ``select.keep_fraction`` for every rule; ``full``
            always keeps everything (and says so in the log when another fraction is given).
    """

    name = "full"
    label = "Full Data"

    def __init__(self, keep_fraction: float | None = None) -> None:
        if keep_fraction not in (None, 1.0):
            log.info("select=full keeps every pair; keep_fraction=%s applies to the other rules of the sweep", keep_fraction)
        self.keep_fraction = keep_fraction

    def select(self, scores: pd.DataFrame) -> Selection:
        return self._result(scores, np.ones(len(scores), dtype=bool), {})


def check_budget(rule: str, keep_fraction: float | None, k: int | None = None, required: bool = True) -> None:
    """A rule's budget, checked when the rule is built (before any warm-up or score): ``keep_fraction`` in
    ``(0, 1]``, ``k`` a non-negative integer, and one of them given when ``required``.

    Raises:
        ValueError: naming the setting (``select.keep_fraction`` or ``select.k``) and the rule.
    """
    if keep_fraction is not None and not (isinstance(keep_fraction, (int, float)) and 0 < keep_fraction <= 1):
        raise ValueError(f"select={rule}: select.keep_fraction must be in (0, 1], got {keep_fraction!r}")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 0):
        raise ValueError(f"select={rule}: select.k must be a non-negative integer, got {k!r}")
    if required and keep_fraction is None and k is None:
        raise ValueError(f"select={rule}: give select.keep_fraction or select.k")


def check_band(rule: str, key: str, low: float, high: float) -> None:
    """A percentile band ``0 <= low < high <= 100``, checked when the rule is built.

    Raises:
        ValueError: naming the setting, e.g. ``select.lossdiff_band=[90, 10]``.
    """
    if not 0 <= low < high <= 100:
        raise ValueError(f"select={rule}: {key} must satisfy 0 <= low < high <= 100, got [{low}, {high}]")


def count_for(total: int, keep_fraction: float | None, k: int | None) -> int:
    """How many pairs to keep: ``k`` when given, else ``round(keep_fraction * total)``."""
    if keep_fraction is None and k is None:
        raise ValueError("give keep_fraction or k")
    if k is not None:
        if k < 0:
            raise ValueError(f"k must be non-negative, got {k}")
        return min(k, total)
    if not 0 < keep_fraction <= 1:  # type: ignore[operator]
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    return int(round(keep_fraction * total))  # type: ignore[operator]


class RandomSelection(SelectionRule):
    """``random``: a uniformly random subset of ``keep_fraction`` (or ``k``) pairs, from ``seed``."""

    name = "random"
    label = "Random"

    def __init__(self, keep_fraction: float | None = 0.64, k: int | None = None, seed: int = 0) -> None:
        check_budget(self.name, keep_fraction, k)
        self.keep_fraction, self.k, self.seed = keep_fraction, k, seed

    def select(self, scores: pd.DataFrame) -> Selection:
        count = count_for(len(scores), self.keep_fraction, self.k)
        mask = np.zeros(len(scores), dtype=bool)
        mask[np.random.default_rng(self.seed).permutation(len(scores))[:count]] = True
        return self._result(scores, mask, {"count": count, "seed": self.seed})


class RankSelection(SelectionRule):
    """``topk`` / ``bottomk``: the ``k`` pairs (or ``keep_fraction``) with the largest / smallest ``score``.

    Ties at the cut are broken by score-file order (stable sort).
    """

    def __init__(self, score: str, keep_fraction: float | None = None, k: int | None = None, largest: bool = True) -> None:
        self.score, self.keep_fraction, self.k, self.largest = score, keep_fraction, k, largest
        self.name = "topk" if largest else "bottomk"
        check_budget(self.name, keep_fraction, k)

    def display_label(self) -> str:
        """``Top-k <score>`` for ``topk`` (the score decides what "top" means), else the label or the name."""
        return self.label or (f"Top-k {self.score}" if self.largest else self.name)

    @property
    def scores(self) -> list[str]:
        return [self.score]

    def select(self, scores: pd.DataFrame) -> Selection:
        values = column(scores, self.score)
        count = count_for(len(values), self.keep_fraction, self.k)
        order = np.argsort(-values if self.largest else values, kind="stable")
        mask = np.zeros(len(values), dtype=bool)
        mask[order[:count]] = True
        cut = float(values[order[count - 1]]) if count else None
        return self._result(scores, mask, {"score": self.score, "count": count, "cut_value": cut})


class BandSelection(SelectionRule):
    """``band`` (and ``tif``, ``lossdiff``, ``irm``): keep pairs whose ``score`` lies strictly inside a
    percentile band (TIF paper, the TIF selector ``I[delta_small < IF < delta_large]``).

    Args:
        score: the score column.
        low, high: percentiles of the band (used when ``keep_fraction`` is null).
        keep_fraction: if given, the band is ``(q, 100 - q)`` with ``q = 50 (1 - keep_fraction)``.
        name: rule name reported in the selection file.
    """

    def __init__(
        self, score: str, low: float = 10.0, high: float = 90.0, keep_fraction: float | None = None, name: str = "band"
    ) -> None:
        self.score, self.low, self.high, self.keep_fraction, self.name = score, low, high, keep_fraction, name
        check_budget(name, keep_fraction, required=False)
        if keep_fraction is None:
            check_band(name, "select.low, select.high", low, high)

    @property
    def scores(self) -> list[str]:
        return [self.score]

    def select(self, scores: pd.DataFrame) -> Selection:
        values = column(scores, self.score)
        low, high = self.low, self.high
        if self.keep_fraction is not None:
            if not 0 < self.keep_fraction <= 1:
                raise ValueError(f"keep_fraction must be in (0, 1], got {self.keep_fraction}")
            low = 50.0 * (1 - self.keep_fraction)
            high = 100.0 - low
        mask, thresholds = band_mask(values, low, high)
        return self._result(scores, mask, {"score": self.score, **thresholds})


class GroupSelection(SelectionRule):
    """``if_group``: one of ``groups`` equal-count groups of pairs ranked by ``score``: the TIF paper's motivating
    experiment (Section 3, its Figure 1), which trains on the small, medium and large thirds of influence and
    follows the validation loss and reward margin.

    The pairs are sorted by the score (equal scores in file order) and cut into ``groups`` consecutive parts whose
    sizes differ by at most one (the larger ones first, as :func:`numpy.array_split` cuts).

    Args:
        score: the score column (``influence`` for the paper's IF groups).
        group: which part, from the smallest scores: ``small`` / ``medium`` / ``large`` for three groups, or its
            index ``0 .. groups - 1``.
        groups: how many parts.
    """

    NAMES = ("small", "medium", "large")

    def __init__(self, score: str = "influence", group: str | int = "medium", groups: int = 3) -> None:
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 2:
            raise ValueError(f"select=if_group: select.groups must be a whole number >= 2, got {groups!r}")
        if isinstance(group, str):
            if groups != 3 or group not in self.NAMES:
                raise ValueError(
                    f"select=if_group: select.group={group!r}: give small, medium or large (with select.groups=3) "
                    f"or an index from 0 to {groups - 1}"
                )
            index = self.NAMES.index(group)
        elif isinstance(group, int) and not isinstance(group, bool) and 0 <= group < groups:
            index = group
        else:
            raise ValueError(f"select=if_group: select.group must be small, medium, large or an index from 0 to {groups - 1}, got {group!r}")
        self.score, self.group, self.groups, self.index = score, group, groups, index
        self.name = f"{score}_{group}"

    def display_label(self) -> str:
        """``small IF third`` and the like for the paper's three groups of influence, else the label or the name."""
        if self.label:
            return self.label
        return f"{self.group} IF third" if self.score == "influence" and isinstance(self.group, str) else self.name

    @property
    def scores(self) -> list[str]:
        return [self.score]

    def select(self, scores: pd.DataFrame) -> Selection:
        values = column(scores, self.score)
        if len(values) < self.groups:
            raise ValueError(f"select=if_group: {len(values)} pairs cannot make {self.groups} groups")
        order = np.argsort(values, kind="stable")
        part = np.array_split(order, self.groups)[self.index]
        mask = np.zeros(len(values), dtype=bool)
        mask[part] = True
        thresholds = {"score": self.score, "group": self.index, "groups": self.groups,
                      "min": float(values[part].min()), "max": float(values[part].max())}
        return self._result(scores, mask, thresholds)


class LossDiffIRMSelection(SelectionRule):
    """``lossdiff_irm``: keep a pair iff LossDiff *and* IRM both lie inside their percentile bands.

    TIF paper, LossDiff-IRM rule:
    ``I[xi_small < LossDiff < xi_large] AND I[tau_small < IRM < tau_large]``.

    With ``keep_fraction`` the two bands are symmetric and equal, ``(q, 100 - q)`` on both scores, and ``q`` is
    solved so the intersection keeps (at least, and as close as the data allow) that fraction. The paper keeps
    50-64%; (10, 90) on both is the default (about 64% if the two scores were independent).

    Args:
        lossdiff_band, irm_band: ``[low, high]`` percentiles.
        keep_fraction: target kept fraction, replacing the bands when given.
        lossdiff_score, irm_score: column names.
    """

    name = "lossdiff_irm"
    label = "LossDiff-IRM"

    def __init__(
        self,
        lossdiff_band: Sequence[float] = (10.0, 90.0),
        irm_band: Sequence[float] = (10.0, 90.0),
        keep_fraction: float | None = None,
        lossdiff_score: str = "lossdiff",
        irm_score: str = "irm",
    ) -> None:
        self.lossdiff_band = tuple(float(v) for v in lossdiff_band)
        self.irm_band = tuple(float(v) for v in irm_band)
        self.keep_fraction = keep_fraction
        self.lossdiff_score, self.irm_score = lossdiff_score, irm_score
        check_budget(self.name, keep_fraction, required=False)
        if keep_fraction is None:
            for key, band in (("select.lossdiff_band", self.lossdiff_band), ("select.irm_band", self.irm_band)):
                if len(band) != 2:
                    raise ValueError(f"select={self.name}: {key} must be [low, high], got {list(band)}")
                check_band(self.name, key, *band)

    @property
    def scores(self) -> list[str]:
        return [self.lossdiff_score, self.irm_score]

    def select(self, scores: pd.DataFrame) -> Selection:
        lossdiff, irm = column(scores, self.lossdiff_score), column(scores, self.irm_score)

        def both(q_lossdiff: tuple[float, float], q_irm: tuple[float, float]) -> tuple[np.ndarray, dict, dict]:
            mask_a, thresholds_a = band_mask(lossdiff, *q_lossdiff)
            mask_b, thresholds_b = band_mask(irm, *q_irm)
            return mask_a & mask_b, thresholds_a, thresholds_b

        lossdiff_band, irm_band = self.lossdiff_band, self.irm_band
        if self.keep_fraction is not None:
            q = solve_symmetric_band(lambda q: both((q, 100 - q), (q, 100 - q))[0].mean(), self.keep_fraction)
            lossdiff_band = irm_band = (q, 100 - q)
        mask, thresholds_lossdiff, thresholds_irm = both(lossdiff_band, irm_band)
        return self._result(
            scores,
            mask,
            {self.lossdiff_score: thresholds_lossdiff, self.irm_score: thresholds_irm, "keep_fraction": self.keep_fraction},
        )


def bees_upper_bound(
    margins: np.ndarray, lower: float = -2.0, divisor: float = 2.0, min_tail: int = 30, tail: str = "closed"
) -> float:
    """The BeeS dynamic upper bound ``U`` of one margin source.

    Start at ``int(max(m) / d)`` (``d = 2`` for implicit margins, 1.5 for external ones), at least ``L + 1``;
    while ``U <= max(m)``: stop when fewer than ``min_tail`` (30) margins lie in the tail above ``U`` or when
    that count is below ``max - U``; otherwise ``U += 1``. (BeeS paper, App. A.1, the two stopping conditions;
    the start and the step follow the released sampler, ``BeeS/m_sampler.py``.)

    Args:
        tail: ``closed``: the tail is ``[U, max]``, as the paper writes it; ``open``: ``(U, max]``, as the released
            sampler counts (``margin > x``), which stops one step earlier where many margins equal ``U``.
    """
    if tail not in ("closed", "open"):
        raise ValueError(f"the BeeS tail must be closed (the paper) or open (the released sampler), got {tail!r}")
    top = float(np.max(margins))
    upper = max(float(int(top / divisor)), lower + 1)
    while upper <= top:
        above = margins >= upper if tail == "closed" else margins > upper
        count = int(np.sum(above & (margins <= top)))
        if count < min_tail or count < top - upper:
            break
        upper += 1
    return upper


def bees_probability(margins: list[np.ndarray], uppers: list[float], lower: float = -2.0, eps: float = 1e-6) -> np.ndarray:
    """The BeeS Bayesian aggregation ``P = prod p_i / (prod p_i + prod (1 - p_i))`` in log-odds form.

    ``p_i = (clip(m_i, L, U_i) - L) / (U_i - L)``, clipped to ``[eps, 1 - eps]``; ``logit P = sum logit p_i``.
    Returns ``logit P`` (monotone in ``P``, and free of the rounding that makes many ``P`` equal to 1).
    """
    log_odds = np.zeros(len(margins[0]))
    for values, upper in zip(margins, uppers):
        p = (np.clip(values, lower, upper) - lower) / (upper - lower)
        p = np.clip(p, eps, 1 - eps)
        log_odds += np.log(p) - np.log1p(-p)
    return log_odds


BEES_FUSIONS = ("bayes", "add", "max", "min")


class BeesSelection(SelectionRule):
    """``bees``: BeeS (Deng et al., "Less is More"), Bayesian aggregation of external and implicit margins.

    Only pairs with every margin positive are eligible; they are ranked by the aggregated preference
    probability ``P`` (:func:`bees_probability`, bounds from :func:`bees_upper_bound`) and the top ``k`` (or
    ``keep_fraction`` of all pairs) are kept; ties in ``P`` keep score-file order. If fewer pairs are eligible
    than asked for, all eligible pairs are kept and the shortfall is reported.

    The defaults follow the paper where it is explicit (Sec. 3.2 and App. A.1: the Bayesian aggregation, negative
    margins excluded, the tail ``[U, max]``); the authors' released sampler (``BeeS/m_sampler.py``) differs, and
    each difference is an option: ``fusion=add|max|min`` (its other strategies, on the raw margins),
    ``eligible_only=false`` (it takes the top ``k`` whatever the signs), ``tail=open`` (it counts ``margin > U``).

    Args:
        external: column of the external margin (``annotator`` or ``reward_model``).
        implicit: column of the implicit margin (``bees_implicit``).
        keep_fraction, k: how many to keep (``k`` wins when both are set).
        lower: ``L`` (-2 for both sources in the paper).
        external_divisor, implicit_divisor: ``d`` of the upper-bound start (1.5 external, 2 implicit).
        min_tail: the 30 of the upper-bound rule.
        eps: probability clipping of the log-odds form.
        fusion: ``bayes`` (the paper's aggregation) or the sampler's ``add``, ``max``, ``min`` of the two margins.
        eligible_only: keep only pairs whose margins are all positive (the paper: "samples with negative margins
            are excluded"); ``false`` lets ineligible pairs fill the budget, as the released sampler does.
        tail: how the upper-bound rule counts its tail (:func:`bees_upper_bound`).
    """

    name = "bees"
    label = "BeeS"

    def __init__(
        self,
        external: str = "annotator",
        implicit: str = "bees_implicit",
        keep_fraction: float | None = 0.64,
        k: int | None = None,
        lower: float = -2.0,
        external_divisor: float = 1.5,
        implicit_divisor: float = 2.0,
        min_tail: int = 30,
        eps: float = 1e-6,
        fusion: str = "bayes",
        eligible_only: bool = True,
        tail: str = "closed",
    ) -> None:
        self.external, self.implicit = external, implicit
        self.keep_fraction, self.k = keep_fraction, k
        check_budget(self.name, keep_fraction, k)
        self.lower, self.external_divisor, self.implicit_divisor = lower, external_divisor, implicit_divisor
        self.min_tail, self.eps = min_tail, eps
        if fusion not in BEES_FUSIONS:
            raise ValueError(f"select.fusion must be one of {BEES_FUSIONS}, got {fusion!r}")
        if tail not in ("closed", "open"):
            raise ValueError(f"select.tail must be closed (the paper) or open (the released sampler), got {tail!r}")
        self.fusion, self.eligible_only, self.tail = fusion, eligible_only, tail

    @property
    def scores(self) -> list[str]:
        return [self.external, self.implicit]

    def fused(self, external: np.ndarray, implicit: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        """The ranking value of every pair and the bounds it used."""
        if self.fusion == "add":
            return external + implicit, {}
        if self.fusion == "max":
            return np.maximum(external, implicit), {}
        if self.fusion == "min":
            return np.minimum(external, implicit), {}
        uppers = [
            bees_upper_bound(external, self.lower, self.external_divisor, self.min_tail, self.tail),
            bees_upper_bound(implicit, self.lower, self.implicit_divisor, self.min_tail, self.tail),
        ]
        log_odds = bees_probability([external, implicit], uppers, self.lower, self.eps)
        return log_odds, {"lower": self.lower, "upper": {self.external: uppers[0], self.implicit: uppers[1]}}

    def select(self, scores: pd.DataFrame) -> Selection:
        external, implicit = column(scores, self.external), column(scores, self.implicit)
        value, bounds = self.fused(external, implicit)
        eligible = (external > 0) & (implicit > 0)
        count = count_for(len(scores), self.keep_fraction, self.k)
        order = [i for i in np.argsort(-value, kind="stable") if eligible[i] or not self.eligible_only]
        mask = np.zeros(len(scores), dtype=bool)
        mask[order[:count]] = True
        thresholds = {**bounds, "fusion": self.fusion, "count": count, "eligible": int(eligible.sum())}
        available = int(eligible.sum()) if self.eligible_only else len(scores)
        details = {"shortfall": max(0, count - available), "ineligible_kept": int((mask & ~eligible).sum())}
        return self._result(scores, mask, thresholds, **details)


class PZNSelection(SelectionRule):
    """``pzn``: the BeeS paper's P / Z / N margin-region baselines (App. A.1).

    After dropping ``outlier_fraction`` of the pairs at each extreme of the margin, ``P`` keeps the pairs with
    the largest margins, ``N`` the smallest, and ``Z`` a random sample of the pairs with ``|m| <= tau``
    (``tau`` = 1.0 for reward margins, 0.1 for conditional-perplexity margins).

    Args:
        score: the margin column.
        region: ``P``, ``Z`` or ``N``.
        keep_fraction, k: how many to keep (``k`` wins when both are set); ``Z`` keeps fewer if fewer lie near zero.
        tau: the half-width of the zero region.
        outlier_fraction: share of pairs removed at each end before selecting.
        seed: seed of the ``Z`` sample.
    """

    name = "pzn"

    def __init__(
        self,
        score: str = "annotator",
        region: str = "P",
        keep_fraction: float | None = 0.3,
        k: int | None = None,
        tau: float = 1.0,
        outlier_fraction: float = 0.01,
        seed: int = 0,
    ) -> None:
        if region not in ("P", "Z", "N"):
            raise ValueError(f"select.region must be P, Z or N, got {region!r}")
        self.score, self.region, self.keep_fraction, self.k = score, region, keep_fraction, k
        self.tau, self.outlier_fraction, self.seed = tau, outlier_fraction, seed
        self.name = f"pzn_{region}"
        check_budget(self.name, keep_fraction, k)

    def display_label(self) -> str:
        """``P region`` (of the annotator's margin), ``Z region of ifd`` for another score; the Z region of the
        IFD margin is the BeeS paper's Low-Gap baseline (``select=low_gap``)."""
        if self.label:
            return self.label
        if self.region == "Z" and self.score == "ifd":
            return "Low-Gap (IFD, Z region)"
        return f"{self.region} region" + ("" if self.score == "annotator" else f" of {self.score}")

    @property
    def scores(self) -> list[str]:
        return [self.score]

    def select(self, scores: pd.DataFrame) -> Selection:
        values = column(scores, self.score)
        count = count_for(len(values), self.keep_fraction, self.k)
        order = np.argsort(values, kind="stable")
        cut = int(math.floor(self.outlier_fraction * len(values)))
        inliers = order[cut : len(values) - cut]
        if self.region == "P":
            picked = inliers[::-1][:count]
        elif self.region == "N":
            picked = inliers[:count]
        else:
            near = np.sort(inliers[np.abs(values[inliers]) <= self.tau])
            picked = np.random.default_rng(self.seed).permutation(near)[:count]
        mask = np.zeros(len(values), dtype=bool)
        mask[picked] = True
        thresholds = {"score": self.score, "region": self.region, "tau": self.tau, "outliers_removed_each_end": cut}
        return self._result(scores, mask, thresholds, shortfall=max(0, count - len(picked)))


class OracleSelection(SelectionRule):
    """``oracle``: keep the pairs whose ground truth is clean, the ceiling of every selection rule.

    An upper bound, not a method: it reads the ``ground_truth`` column (:mod:`prefalign.scoring.oracle`: 0 clean,
    1 ambiguous, 2 flipped), which comes from metadata that no other rule may read, and exists only for data with
    known noise. Without a budget it keeps exactly the clean pairs. With ``keep_fraction`` (or ``k``) it keeps
    that many, so that it compares with the other rules at the same budget: a random sample (from ``seed``) of the
    clean pairs when there are enough; otherwise every clean pair, then ambiguous ones, then flipped ones, each
    class in a random order, and the number of noisy pairs it had to keep is reported (``details``).

    Args:
        keep_fraction, k: the budget (``k`` wins when both are set); both null keeps the clean pairs.
        seed: the order within each class.
        score: the ground-truth column.
    """

    name = "oracle"
    label = "Oracle (upper bound)"

    def __init__(
        self, keep_fraction: float | None = None, k: int | None = None, seed: int = 0, score: str = "ground_truth"
    ) -> None:
        check_budget(self.name, keep_fraction, k, required=False)
        self.keep_fraction, self.k, self.seed, self.score = keep_fraction, k, seed, score

    @property
    def scores(self) -> list[str]:
        return [self.score]

    def select(self, scores: pd.DataFrame) -> Selection:
        codes = column(scores, self.score)
        unknown = sorted(set(codes.tolist()) - {0.0, 1.0, 2.0})
        if unknown:
            raise ValueError(f"select=oracle: column '{self.score}' must hold 0 (clean), 1 or 2, found {unknown}")
        clean = int((codes == 0).sum())
        if self.keep_fraction is None and self.k is None:
            count = clean
        else:
            count = count_for(len(codes), self.keep_fraction, self.k)
        shuffled = np.random.default_rng(self.seed).permutation(len(codes))
        order = shuffled[np.argsort(codes[shuffled], kind="stable")]  # clean, ambiguous, flipped; random within
        mask = np.zeros(len(codes), dtype=bool)
        mask[order[:count]] = True
        kept = codes[mask]
        details = {
            "clean_pairs": clean,
            "kept_clean": int((kept == 0).sum()),
            "kept_ambiguous": int((kept == 1).sum()),
            "kept_flipped": int((kept == 2).sum()),
        }
        return self._result(scores, mask, {"count": count, "seed": self.seed}, **details)


class InvertedSelection(SelectionRule):
    """``select.invert=true``: the complement of any rule, the pairs it drops (the TIF paper's "w/ Dropped Data"
    rows). Same scores, thresholds and budget as the wrapped rule; its kept fraction is one minus the rule's.

    Args:
        rule: the rule whose dropped pairs are kept.
    """

    def __init__(self, rule: SelectionRule) -> None:
        if isinstance(rule, (FullSelection, InvertedSelection)):
            raise ValueError(f"select.invert=true: select={rule.name} cannot be inverted (it would keep no pairs, or "
                             "be the rule itself)")
        self.rule = rule
        self.name = f"{rule.name}_dropped"

    def display_label(self) -> str:
        """The wrapped rule's label, marked as the paper's "w/ Dropped Data" row."""
        return self.label or f"{self.rule.display_label()} (dropped data)"

    @property
    def scores(self) -> list[str]:
        return self.rule.scores

    def select(self, scores: pd.DataFrame) -> Selection:
        inner = self.rule.select(scores)
        kept = set(inner.kept)
        mask = ~scores["pair_id"].isin(kept).to_numpy()
        return self._result(scores, mask, inner.thresholds, inverted=inner.rule, **inner.details)


def zscore(values: np.ndarray) -> np.ndarray:
    """``(v - mean) / std`` over the data set, with the population standard deviation (NumPy's default, as the
    M_AP authors compute it); a constant column gives zeros."""
    spread = values.std()
    return (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)


class AlignmentPotentialSelection(SelectionRule):
    """``map``: the alignment potential M_AP (Huang et al., "Larger or Smaller Reward Margins to Select
    Preferences for Alignment?", ICML 2025), ``M_AP = z(external margin) - w * z(|log-prob gap|)``.

    The external margin is a reward-model (or annotator) margin ``r_w - r_l``; the gap is the policy's
    ``|s(y_w)/|y_w| - s(y_l)/|y_l||`` (:class:`prefalign.scoring.proxies.LogpGapScorer`); ``z`` z-scores over
    the data set (population standard deviation). The pairs with the largest M_AP are kept, ``k =
    int(keep_fraction * n)`` as the authors' ``metric_selection.py`` (metric ``rm-logp``, ``select_ratio 0.4``,
    ``logp_weight 1``) does; ties keep score-file order.

    Args:
        external: the external margin column (``annotator`` or ``reward_model``).
        gap: the log-prob gap column.
        keep_fraction, k: the budget (``k`` wins when both are set; 0.4 in the paper).
        gap_weight: ``w`` (the authors' ``logp_weight``).
    """

    name = "map"
    label = "M_AP"

    def __init__(
        self,
        external: str = "annotator",
        gap: str = "logp_gap",
        keep_fraction: float | None = 0.4,
        k: int | None = None,
        gap_weight: float = 1.0,
    ) -> None:
        check_budget(self.name, keep_fraction, k)
        self.external, self.gap, self.keep_fraction, self.k, self.gap_weight = external, gap, keep_fraction, k, gap_weight

    @property
    def scores(self) -> list[str]:
        return [self.external, self.gap]

    def select(self, scores: pd.DataFrame) -> Selection:
        potential = zscore(column(scores, self.external)) - self.gap_weight * zscore(column(scores, self.gap))
        count = min(self.k, len(scores)) if self.k is not None else int(self.keep_fraction * len(scores))  # type: ignore[operator]
        order = np.argsort(-potential, kind="stable")
        mask = np.zeros(len(scores), dtype=bool)
        mask[order[:count]] = True
        cut = float(potential[order[count - 1]]) if count else None
        return self._result(scores, mask, {"count": count, "gap_weight": self.gap_weight, "cut_value": cut})
