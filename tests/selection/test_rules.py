"""Selection rules on hand-made score vectors, with hand-checked results."""

import math

import numpy as np
import pandas as pd
import pytest

from prefalign.selection.rules import (
    BandSelection,
    BeesSelection,
    FullSelection,
    LossDiffIRMSelection,
    PZNSelection,
    RandomSelection,
    RankSelection,
    band_mask,
    bees_probability,
    bees_upper_bound,
)


def table(**columns):
    size = len(next(iter(columns.values())))
    return pd.DataFrame({"pair_id": [f"p{i}" for i in range(size)], **columns})


ONE_TO_TEN = [float(v) for v in range(1, 11)]


def test_band_is_strict_between_percentiles():
    # np.percentile(1..10, 10) = 1 + 0.1 * 9 = 1.9 ; 90th = 9.1 -> keeps 2..9
    mask, thresholds = band_mask(np.array(ONE_TO_TEN), 10, 90)
    assert np.array(ONE_TO_TEN)[mask].tolist() == [2, 3, 4, 5, 6, 7, 8, 9]
    assert thresholds["low_value"] == pytest.approx(1.9) and thresholds["high_value"] == pytest.approx(9.1)
    # an edge at the 0th / 100th percentile is open: nothing is cut on that side
    assert band_mask(np.array(ONE_TO_TEN), 0, 100)[0].all()
    with pytest.raises(ValueError, match="0 <= low < high <= 100"):
        band_mask(np.array(ONE_TO_TEN), 60, 40)


def test_band_keep_fraction_gives_symmetric_percentiles():
    selection = BandSelection("influence", keep_fraction=0.8, name="tif").select(table(influence=ONE_TO_TEN))
    # q = 50 * (1 - 0.8) = 10 -> the (10, 90) band above
    assert selection.kept == [f"p{i}" for i in range(1, 9)]
    assert selection.thresholds["low_percentile"] == pytest.approx(10) and selection.kept_fraction == 0.8
    assert selection.rule == "tif"


def test_lossdiff_irm_is_the_intersection_of_both_bands():
    irm = [5.0, 1.0, 2.0, 3.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    selection = LossDiffIRMSelection().select(table(lossdiff=ONE_TO_TEN, irm=irm))
    # lossdiff band (10, 90) keeps values 2..9 = rows 1..8; irm band keeps values 2..9 = rows 0, 2..8
    assert selection.kept == [f"p{i}" for i in (2, 3, 4, 5, 6, 7, 8)]
    assert selection.kept_fraction == 0.7


def test_keep_fraction_solver_for_two_bands():
    # identical scores: the intersection is one band; keeping 60% of 1..10 means keeping 3..8
    selection = LossDiffIRMSelection(keep_fraction=0.6).select(table(lossdiff=ONE_TO_TEN, irm=ONE_TO_TEN))
    assert selection.kept == [f"p{i}" for i in range(2, 8)]
    # the solved q: the 3rd value (3.0) sits at percentile 100 * 2/9 = 22.2; q must stay just below it
    q = selection.thresholds["lossdiff"]["low_percentile"]
    assert 100 * 1 / 9 <= q < 100 * 2 / 9 and q == pytest.approx(100 * 2 / 9, abs=1e-6)
    assert selection.thresholds["irm"]["high_percentile"] == pytest.approx(100 - q)


def test_keep_fraction_solver_on_independent_scores_hits_the_target():
    rng = np.random.default_rng(0)
    scores = table(lossdiff=rng.normal(size=1000).tolist(), irm=rng.normal(size=1000).tolist())
    for target in (0.5, 0.64, 0.8):
        selection = LossDiffIRMSelection(keep_fraction=target).select(scores)
        assert target <= selection.kept_fraction <= target + 0.003


def test_bees_upper_bound_first_condition():
    # max 10, implicit d = 2: start at int(10/2) = 5.
    # U=5: [5,10] holds 40 + 35 + 20 + 1 = 96 >= 30 and >= 10-5 -> U=6: 35 + 20 + 1 = 56 -> U=7: 21 < 30 -> stop
    margins = np.array([5.5] * 40 + [6.5] * 35 + [7.5] * 20 + [10.0] + [0.5] * 50)
    assert bees_upper_bound(margins, lower=-2, divisor=2, min_tail=30) == 7


def test_bees_upper_bound_second_condition():
    # start int(200/2) = 100: [100, 200] holds 51 >= 30, but 51 < 200 - 100 -> stop at once
    margins = np.array([150.0] * 50 + [200.0] + [1.0] * 100)
    assert bees_upper_bound(margins, divisor=2) == 100


def test_bees_upper_bound_is_at_least_lower_plus_one():
    # max 1: int(1/1.5) = 0 >= L + 1 = -1 -> U = 0: [0, 1] holds 41 -> U = 1: holds 1 < 30 -> stop
    margins = np.array([0.5] * 40 + [1.0])
    assert bees_upper_bound(margins, lower=-2, divisor=1.5) == 1
    # all margins negative: int(-3/2) = -1 = L + 1, and U > max so the loop never runs
    assert bees_upper_bound(np.array([-3.0, -4.0]), lower=-2, divisor=2) == -1


def test_bees_probability_by_hand():
    external, implicit = np.array([1.0, 3.0, -1.0]), np.array([2.0, 1.0, 4.0])
    log_odds = bees_probability([external, implicit], uppers=[2.0, 6.0], lower=-2.0)
    probability = 1 / (1 + np.exp(-log_odds))
    # pair 0: p_ex = (1+2)/4 = 0.75, p_im = (2+2)/8 = 0.5 -> P = 0.375 / (0.375 + 0.125) = 0.75
    # pair 1: p_ex = clip(3) -> 1 (then 1 - eps), p_im = 3/8 -> P = 1 up to eps
    # pair 2: p_ex = 1/4, p_im = 6/8 -> P = 0.1875 / (0.1875 + 0.1875) = 0.5
    assert probability[0] == pytest.approx(0.75)
    assert probability[1] == pytest.approx(1.0, abs=1e-5)
    assert probability[2] == pytest.approx(0.5)


def test_bees_keeps_the_top_eligible_pairs():
    scores = table(annotator=[1.0, 3.0, -1.0, 0.5], bees_implicit=[2.0, 1.0, 4.0, 0.1])
    selection = BeesSelection(k=2, min_tail=30).select(scores)
    # p2 has a negative external margin: not eligible although its P is not the lowest
    assert selection.kept == ["p0", "p1"] and selection.thresholds["eligible"] == 3
    short = BeesSelection(k=4).select(scores)
    assert sorted(short.kept) == ["p0", "p1", "p3"] and short.details["shortfall"] == 1


def test_bees_upper_bound_open_tail_as_the_released_sampler_counts():
    # max 10, d = 2: start at 5. Closed tail [U, 10]: U=5 holds 30 + 30 + 1 = 61 -> U=6: 31 -> U=7: 1 < 30 -> 7.
    # Open tail (U, 10], the sampler's `margin > x`: U=5 holds 30 + 1 = 31 (the 5.0s are out) -> U=6: 1 -> 6.
    margins = np.array([5.0] * 30 + [6.0] * 30 + [10.0] + [0.0] * 10)
    assert bees_upper_bound(margins, divisor=2, tail="closed") == 7
    assert bees_upper_bound(margins, divisor=2, tail="open") == 6
    with pytest.raises(ValueError, match="tail"):
        bees_upper_bound(margins, tail="half")


def test_bees_options_of_the_released_sampler_on_hand_made_margins():
    #            p0    p1    p2    p3
    external = [1.0, 3.0, -1.0, 0.5]
    implicit = [2.0, 1.0, 4.0, 0.1]
    scores = table(annotator=external, bees_implicit=implicit)
    # add: 3, 4, 3, 0.6 -> p1 first, then p0 and p2 tie at 3 (file order), p2 ineligible
    assert BeesSelection(k=2, fusion="add").select(scores).kept == ["p0", "p1"]
    assert sorted(BeesSelection(k=2, fusion="add", eligible_only=False).select(scores).kept) == ["p0", "p1"]
    assert BeesSelection(k=3, fusion="add", eligible_only=False).select(scores).details["ineligible_kept"] == 1
    # max: 2, 3, 4, 0.5 -> the sampler keeps p2 (a negative external margin) first; the paper's rule never does
    assert sorted(BeesSelection(k=2, fusion="max", eligible_only=False).select(scores).kept) == ["p1", "p2"]
    assert sorted(BeesSelection(k=2, fusion="max").select(scores).kept) == ["p0", "p1"]
    # min: 1, 1, -1, 0.1 -> p0 and p1 tie at 1 and come first
    minimum = BeesSelection(k=3, fusion="min").select(scores)
    assert sorted(minimum.kept) == ["p0", "p1", "p3"] and minimum.thresholds["fusion"] == "min"
    with pytest.raises(ValueError, match="fusion"):
        BeesSelection(fusion="mean")


def test_pzn_regions():
    values = [-5.0, -2.0, -0.5, 0.2, 0.9, 1.5, 3.0, 8.0, 100.0, -100.0]
    scores = table(annotator=values)
    # outlier_fraction 0.1 removes one pair at each end (-100 and 100)
    p = PZNSelection(region="P", k=2, outlier_fraction=0.1).select(scores)
    assert sorted(p.kept) == ["p6", "p7"]  # 3.0 and 8.0
    n = PZNSelection(region="N", k=2, outlier_fraction=0.1).select(scores)
    assert sorted(n.kept) == ["p0", "p1"]  # -5 and -2
    z = PZNSelection(region="Z", k=2, tau=1.0, outlier_fraction=0.1).select(scores)
    assert set(z.kept) < {"p2", "p3", "p4"} and len(z.kept) == 2
    z_all = PZNSelection(region="Z", k=5, tau=1.0, outlier_fraction=0.1).select(scores)
    assert sorted(z_all.kept) == ["p2", "p3", "p4"] and z_all.details["shortfall"] == 2


def test_rank_random_and_full():
    scores = table(reward_model=[0.3, 0.9, 0.1, 0.5])
    assert RankSelection("reward_model", k=2).select(scores).kept == ["p1", "p3"]
    assert RankSelection("reward_model", keep_fraction=0.5, largest=False).select(scores).kept == ["p0", "p2"]
    first = RandomSelection(keep_fraction=0.5, seed=3).select(scores)
    assert len(first.kept) == 2 and first.kept == RandomSelection(keep_fraction=0.5, seed=3).select(scores).kept
    assert FullSelection().select(scores).kept_fraction == 1.0


def test_errors_name_the_score():
    with pytest.raises(KeyError, match="no column 'irm'"):
        LossDiffIRMSelection().select(table(lossdiff=ONE_TO_TEN))
    with pytest.raises(ValueError, match=r"'influence' is not finite for 1 pairs, e.g. \['p1'\]"):
        BandSelection("influence").select(table(influence=[1.0, math.nan, 2.0]))
