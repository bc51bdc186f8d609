"""Selector analysis: overlap coefficient, correlations and noise counts with numbers worked out by hand."""

import builtins
import math

import pandas as pd
import pytest

from prefalign.selection.analysis import (
    correlation_table,
    noise_table,
    overlap_coefficient,
    overlap_table,
    spearman,
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
