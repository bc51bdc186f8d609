"""Selector analysis: overlap coefficient, correlations and noise counts with numbers worked out by hand."""

import builtins
import math

import numpy as np
import pandas as pd
import pytest

from prefalign.selection.analysis import (
    correlation_table,
    detection_metrics,
    detection_table,
    linear_datamodeling_score,
    noise_table,
    overlap_coefficient,
    overlap_table,
    plot_lds,
    spearman,
    subset_percentile,
    subset_predictions,
)
from prefalign.selection.rules import Selection


def test_overlap_coefficient_by_hand():
    # |{b,c}| / min(3, 4) = 2/3
    assert overlap_coefficient(["a", "b", "c"], ["b", "c", "d", "e"]) == pytest.approx(2 / 3)
    assert overlap_coefficient(["a"], ["a", "b"]) == 1.0  # subset
    assert overlap_coefficient([], ["a"]) == 0.0


def test_overlap_table_is_symmetric():
    selections = {
        "tif": Selection(["a", "b"], "tif", {}, 4),
        "irm": Selection(["b", "c", "d"], "irm", {}, 4),
    }
    table = overlap_table(selections)
    assert table.loc["tif", "tif"] == 1.0
    assert table.loc["tif", "irm"] == table.loc["irm", "tif"] == pytest.approx(1 / 2)


def test_spearman_by_hand_without_scipy(monkeypatch):
    """x = [1, 2, 3, 4], y = [10, 30, 20, 40]: ranks [1,2,3,4] vs [1,3,2,4], d² = 0+1+1+0 = 2,
    rho = 1 - 6·2 / (4·15) = 0.8. SciPy is not a dependency, so block its import to prove none is needed."""
    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name.startswith("scipy"):
            raise ModuleNotFoundError("No module named 'scipy'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    assert spearman(pd.Series([1.0, 2, 3, 4]), pd.Series([10.0, 30, 20, 40])) == pytest.approx(0.8)
    # ties share their mean rank: x ranks [1.5, 1.5, 3], y ranks [1, 2, 3] -> Pearson of ranks = sqrt(3)/2
    assert spearman(pd.Series([1.0, 1, 2]), pd.Series([1.0, 2, 3])) == pytest.approx(math.sqrt(3) / 2)
    table = correlation_table(pd.DataFrame({"pair_id": list("abcd"), "x": [1.0, 2, 3, 4], "y": [10.0, 30, 20, 40]}))
    assert table.loc[0, "spearman"] == pytest.approx(0.8)
    # Pearson by hand: x - 2.5 = [-1.5,-.5,.5,1.5], y - 25 = [-15,5,-5,15]; cov sum = 22.5+(-2.5)+(-2.5)+22.5 = 40;
    # |x|² = 5, |y|² = 500 -> 40 / sqrt(2500) = 0.8
    assert table.loc[0, "pearson"] == pytest.approx(0.8)


def test_noise_table_by_hand():
    truth = pd.DataFrame(
        {
            "pair_id": list("abcd"),
            "label_flipped": [True, False, False, True],
            "ambiguous": [False, True, False, False],
        }
    )
    table = noise_table({"keep_bc": Selection(["b", "c"], "x", {}, 4)}, truth).iloc[0]
    assert table["kept"] == 2 and table["kept_fraction"] == 0.5
    assert table["label_flipped_kept"] == 0 and table["label_flipped_removed"] == 1.0
    assert table["label_flipped_base_rate"] == 0.5
    assert table["ambiguous_kept"] == 1 and table["ambiguous_rate"] == 0.5 and table["ambiguous_removed"] == 0.0


def test_detection_metrics_by_hand():
    # values 1, 2, 2, 3 with positives at 2 (one of the tied pair) and 3; negatives at 1 and 2
    values, positive = [1.0, 2.0, 2.0, 3.0], [False, True, False, True]
    # AUROC: pairs (positive, negative) = (2,1) 1, (2,2) 1/2, (3,1) 1, (3,2) 1 -> 3.5 / 4
    # AUPRC: threshold 3 -> precision 1/1, recall 1/2; threshold 2 (both tied pairs) -> precision 2/3, recall 1;
    # 1/2 * 1 + 1/2 * 2/3 = 5/6
    metrics = detection_metrics(values, positive)
    assert metrics["auroc"] == pytest.approx(3.5 / 4)
    assert metrics["auprc"] == pytest.approx(5 / 6)
    sklearn = pytest.importorskip("sklearn.metrics")
    assert metrics["auroc"] == pytest.approx(sklearn.roc_auc_score(positive, values))
    assert metrics["auprc"] == pytest.approx(sklearn.average_precision_score(positive, values))


def test_detection_table_reads_either_end_and_brackets_the_point_with_its_interval():
    rng = np.random.default_rng(0)
    flipped = rng.random(400) < 0.2
    signal = rng.normal(size=400) + 1.5 * flipped
    scores = pd.DataFrame({"pair_id": [f"p{i}" for i in range(400)], "up": signal, "down": -signal, "none": rng.normal(size=400)})
    truth = pd.DataFrame({"pair_id": scores["pair_id"], "label_flipped": flipped, "ambiguous": np.arange(400) % 2 == 0})
    table = detection_table(scores, truth, resamples=300).set_index(["score", "target"])
    up, down = table.loc[("up", "label_flipped")], table.loc[("down", "label_flipped")]
    assert up["auroc"] > 0.8 and up["flagging_end"] == "high"
    # the negated score: the complementary AUROC, flagged from its low end, and the same AUPRC (that end's)
    assert down["auroc"] == pytest.approx(1 - up["auroc"]) and down["flagging_end"] == "low"
    assert down["auprc"] == pytest.approx(up["auprc"])
    assert up["auprc"] > 2 * up["chance_auprc"] and up["chance_auprc"] == pytest.approx(flipped.mean())
    for row in (up, down, table.loc[("none", "label_flipped")]):
        assert row["auroc_low"] <= row["auroc"] <= row["auroc_high"]
        assert row["auprc_low"] <= row["auprc_high"]
    none = table.loc[("none", "label_flipped")]
    assert none["auroc_low"] < 0.5 < none["auroc_high"]  # chance lies in a pure-noise score's interval


def test_subset_predictions_sum_each_score_over_the_subset():
    scores = pd.DataFrame({"pair_id": ["a", "b", "c"], "x": [1.0, 2.0, 4.0], "y": [0.5, -1.0, 0.0]})
    predictions = subset_predictions(scores, [["a", "b"], ["b", "c"], ["a", "c"]])
    assert predictions["x"].tolist() == [3.0, 6.0, 5.0]
    assert predictions["y"].tolist() == [-0.5, -1.0, 0.5]
    with pytest.raises(KeyError, match="subset 1 holds pairs that are not in the scores: \\['d'\\]"):
        subset_predictions(scores, [["a"], ["d"]])


def test_lds_is_spearman_over_subsets_by_hand():
    # ranks 1 2 3 4 against 1 3 2 4: sum of squared rank differences 2, rho = 1 - 6 * 2 / (4 * 15) = 0.8
    result = linear_datamodeling_score([1.0, 2.0, 3.0, 4.0], [10.0, 30.0, 20.0, 40.0], resamples=200)
    assert result["lds"] == pytest.approx(0.8) and result["subsets"] == 4
    assert linear_datamodeling_score([1, 2, 3], [3, 2, 1], resamples=10)["lds"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="two vectors of one length"):
        linear_datamodeling_score([1, 2, 3], [1, 2])


def test_lds_recovers_a_known_additive_effect():
    """A synthetic test bed where the answer is known: each pair moves the outcome by tau(d), and a subset's
    outcome is the sum of its pairs' effects plus training noise. The true effects score near +1, their negation
    near -1, a score unrelated to them near 0 (its interval covers 0)."""
    generator = np.random.default_rng(0)
    pairs = [f"p{i}" for i in range(60)]
    effect = generator.normal(size=60)
    subsets = [sorted(generator.choice(pairs, 30, replace=False).tolist()) for _ in range(80)]
    position = {pair_id: i for i, pair_id in enumerate(pairs)}
    measured = np.array([effect[[position[p] for p in subset]].sum() for subset in subsets])
    measured += generator.normal(scale=0.3 * measured.std(), size=len(subsets))
    scores = pd.DataFrame({"pair_id": pairs, "true": effect, "negated": -effect, "unrelated": generator.normal(size=60)})
    predictions = subset_predictions(scores, subsets)
    results = {name: linear_datamodeling_score(predictions[name], measured, resamples=500) for name in predictions}
    assert results["true"]["lds"] > 0.9 and results["true"]["ci_low"] > 0.8
    assert results["negated"]["lds"] == pytest.approx(-results["true"]["lds"])
    assert abs(results["unrelated"]["lds"]) < 0.3 and results["unrelated"]["ci_low"] < 0 < results["unrelated"]["ci_high"]


def test_subset_percentile_counts_ties_half():
    assert subset_percentile(3.0, [1.0, 2.0, 3.0, 4.0]) == pytest.approx(0.625)
    assert subset_percentile(9.0, [1.0, 2.0]) == 1.0 and subset_percentile(0.0, [1.0, 2.0]) == 0.0


def test_plot_lds_writes_one_panel_per_target(tmp_path):
    table = pd.DataFrame({"score": ["IF", "random"] * 2, "target": ["val loss"] * 2 + ["val accuracy"] * 2,
                          "lds": [0.6, 0.0, 0.4, -0.1], "ci_low": [0.3, -0.4, 0.1, -0.5], "ci_high": [0.8, 0.4, 0.7, 0.3]})
    path = plot_lds(table, tmp_path)
    assert path == tmp_path / "lds.png" and path.stat().st_size > 1000
