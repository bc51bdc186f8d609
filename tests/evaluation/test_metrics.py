"""Win rates, length control and bootstrap intervals on hand-made outcomes; the verifier judge."""

import math

import numpy as np
import pytest

from prefalign.evaluation.judges import EvalItem, VerifierJudge
from prefalign.evaluation.metrics import bootstrap, length_controlled_win_rate, win_rate


def test_win_rate_counts_ties_half_and_reports_unparsable():
    result = win_rate([1.0, 0.5, 0.0, None, 1.0], resamples=200)
    # parsable outcomes 1, 0.5, 0, 1 -> (100 + 50 + 0 + 100) / 4 = 62.5 %
    assert result["value"] == 62.5
    assert (result["wins"], result["ties"], result["losses"], result["unparsable"], result["n"]) == (2, 1, 1, 1, 4)
    assert 0 <= result["ci_low"] <= 62.5 <= result["ci_high"] <= 100


def test_bootstrap_of_a_constant_has_a_zero_width_interval():
    result = bootstrap([7.0] * 20, resamples=100)
    assert result == {"value": 7.0, "ci_low": 7.0, "ci_high": 7.0, "n": 20}
    assert math.isnan(bootstrap([])["value"])


def test_length_control_equals_the_win_rate_at_equal_lengths():
    outcomes = [1.0] * 30 + [0.0] * 10  # 75 % wins, all answers of equal length
    result = length_controlled_win_rate(outcomes, [10] * 40, [10] * 40, resamples=50)
    # with no length difference the model is P = sigmoid(theta) and the MLE is the raw win rate
    assert result["value"] == pytest.approx(75.0, abs=0.2)


def test_length_control_discounts_wins_that_come_from_longer_answers():
    rng = np.random.default_rng(0)
    # the policy's answer is longer on 80 % of prompts; the judge prefers longer answers and is a coin flip at
    # equal length, so the raw win rate is inflated while the length-controlled one should be near 50 %
    difference = np.where(rng.random(3000) < 0.8, 1.0, -1.0) * rng.uniform(5, 40, 3000)
    scale = difference.std()
    outcomes = (rng.random(3000) < 1 / (1 + np.exp(-3 * np.tanh(difference / scale)))).astype(float)
    baseline = np.full(3000, 100.0)
    raw = win_rate(outcomes.tolist(), resamples=10)["value"]
    controlled = length_controlled_win_rate(outcomes.tolist(), (baseline + difference).tolist(), baseline.tolist(), resamples=10)
    assert raw > 65
    assert abs(controlled["value"] - 50) < 4
    assert controlled["length_coefficient"] > 2


def test_verifier_judge():
    item = EvalItem("q", "What is 2 + 3?", {"family": "add1", "operands": [2, 3], "answer": 5})
    judge = VerifierJudge()
    assert judge.single([item, item], ["The answer is 5.", "It is 6."]) == [10.0, 1.0]
    assert judge.pairwise([item] * 3, ["5", "6", "5"], ["6", "5", "5."]) == [1.0, 0.0, 0.5]
    with pytest.raises(ValueError, match="needs a checker"):
        judge.single([EvalItem("x", "free text")], ["answer"])


def test_paired_difference_by_hand():
    from prefalign.evaluation.metrics import paired_difference

    # per-item accuracies of two policies on 5 pairs: differences 1, 0, 0, -1, 1 -> mean 0.2
    first, second = [1, 1, 0, 0, 1], [0, 1, 0, 1, 0]
    result = paired_difference(first, second, resamples=200, seed=0)
    assert result["value"] == pytest.approx(0.2) and result["n"] == 5
    assert (result["first"], result["second"]) == (pytest.approx(0.6), pytest.approx(0.4))
    assert (result["first_better"], result["second_better"]) == (2, 1)
    # the differences take values in [-1, 1]: so does every resampled mean
    assert -1 <= result["ci_low"] <= 0.2 <= result["ci_high"] <= 1
    # a constant shift has no variance over items: the paired interval is a point
    shifted = paired_difference([0.5, 1.5, 2.5], [0.0, 1.0, 2.0], resamples=50)
    assert shifted["ci_low"] == pytest.approx(0.5) and shifted["ci_high"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="one value per item on both sides, got 2 and 3"):
        paired_difference([1, 2], [1, 2, 3])


def test_two_way_bootstrap_resamples_seeds_and_items():
    from prefalign.evaluation.metrics import bootstrap, hierarchical_paired_difference, two_way_bootstrap

    # every item alike within a seed, seeds at 0 and 10: all the variance is the seeds'. The mean is 5; an item
    # bootstrap would give a zero-width interval, the two-way one spans the seeds' draws (0, 5 or 10 as means)
    matrix = [[0.0] * 6, [10.0] * 6]
    result = two_way_bootstrap(matrix, resamples=400)
    assert result["value"] == 5.0 and result["seeds"] == 2 and result["n"] == 6
    assert result["ci_low"] == 0.0 and result["ci_high"] == 10.0
    # one seed: the item bootstrap, draw for draw
    one = two_way_bootstrap([[1.0, 2.0, 4.0, 8.0]], resamples=300, seed=3)
    plain = bootstrap([1.0, 2.0, 4.0, 8.0], resamples=300, seed=3)
    assert (one["value"], one["ci_low"], one["ci_high"]) == (plain["value"], plain["ci_low"], plain["ci_high"])
    # a paired difference that is the same at every seed and item has no spread at all: the pairing is kept
    first = [[3.0, 5.0, 7.0], [1.0, 2.0, 9.0]]
    second = [[1.0, 3.0, 5.0], [-1.0, 0.0, 7.0]]
    diff = hierarchical_paired_difference(first, second, resamples=200)
    assert diff["value"] == diff["ci_low"] == diff["ci_high"] == 2.0
    assert diff["first_better"] == 3 and diff["second_better"] == 0 and diff["seeds"] == 2
    with pytest.raises(ValueError, match="same seeds and items"):
        hierarchical_paired_difference(first, [[1.0, 2.0, 3.0]])


def test_variance_components_by_hand():
    from prefalign.evaluation.metrics import variance_components

    # per-seed means 0.5 and 1.5; within each seed the items sit +-0.5 around it: item variance 4 x 0.25 / 3 = 1/3
    parts = variance_components([[1, 0, 1, 0], [2, 1, 2, 1]])
    assert parts["sd_item"] == pytest.approx((1 / 3) ** 0.5)
    # var(seed means) = 0.5 (ddof 1), less (1/3) / 4 the items explain: 5/12
    assert parts["sd_seed"] == pytest.approx((5 / 12) ** 0.5)
    # seeds that agree exactly leave no seed variance (floored at 0, not negative)
    assert variance_components([[1, 0, 1, 0], [1, 0, 1, 0]])["sd_seed"] == 0.0
    assert variance_components([1, 0, 1, 0])["sd_seed"] != variance_components([1, 0, 1, 0])["sd_seed"]  # nan: one seed
    with pytest.raises(ValueError, match="at least two items"):
        variance_components([[1.0], [2.0]])


def test_minimum_detectable_difference_by_hand():
    from prefalign.evaluation.metrics import minimum_detectable_difference

    # (1.959964 + 0.841621) x sqrt(0.25 / 900 + 0.0004 / 3) = 2.801585 x 0.0202759
    assert minimum_detectable_difference(0.5, 300, 0.02, 3) == pytest.approx(0.0568046, abs=1e-6)
    # no seed variance: the items alone, as a paired t-test's normal approximation
    assert minimum_detectable_difference(0.5, 100, 0.0, 1) == pytest.approx(2.801585 * 0.05, abs=1e-6)
    # more items cannot beat the seed term; more seeds can
    assert minimum_detectable_difference(0.5, 10**9, 0.03, 1) == pytest.approx(2.801585 * 0.03, abs=1e-6)
    assert minimum_detectable_difference(0.5, 300, 0.03, 4) < minimum_detectable_difference(0.5, 300, 0.03, 1) / 1.9
    with pytest.raises(ValueError, match="at least one item and one seed"):
        minimum_detectable_difference(0.5, 300, 0.02, 0)
