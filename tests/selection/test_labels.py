"""Each rule names its own row in the result tables: the label travels in ``selection.json`` and the table reads it.

The options are read from ``conf/select/``, so a new rule (one class, one YAML) is covered without editing this file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from prefalign.evaluation.tables import method_label
from prefalign.selection.rules import Selection
from prefalign.stages.select import analysis_rule

OPTIONS = sorted(path.stem for path in (Path(__file__).resolve().parents[2] / "conf" / "select").glob("*.yaml"))


@pytest.mark.parametrize("option", OPTIONS)
def test_a_selection_records_its_rules_label_and_the_table_reads_it(option: str) -> None:
    rule = analysis_rule(option, seed=0, keep_fraction=None)
    rng = np.random.default_rng(0)
    scores = pd.DataFrame({"pair_id": [f"p{i}" for i in range(40)]})
    for name in rule.scores:
        # ground_truth is a class (0 clean, 1 ambiguous, 2 flipped); every other score is a real number
        scores[name] = rng.integers(0, 3, size=40).astype(float) if name == "ground_truth" else rng.normal(size=40)
    record = rule.select(scores).to_dict()
    assert record["label"] == rule.display_label() and record["label"]
    assert Selection.from_dict(record).label == record["label"]
    assert method_label({"selection": record}) == record["label"]


# the rows of the papers' tables, as the results table has always named them
PAPER_ROWS = {
    ("full", ()): "Full Data",
    ("oracle", ("ground_truth",)): "Oracle (upper bound)",
    ("random", ()): "Random",
    ("topk", ("annotator",)): "Top-k annotator",
    ("pzn_P", ("annotator",)): "P region",
    ("pzn_Z", ("annotator",)): "Z region",
    ("pzn_N", ("reward_model",)): "N region of reward_model",
    ("pzn_Z", ("ifd",)): "Low-Gap (IFD, Z region)",
    ("tif", ("influence",)): "TIF",
    ("tif_dropped", ("influence",)): "TIF (dropped data)",
    ("lossdiff", ("lossdiff",)): "LossDiff",
    ("irm", ("irm",)): "IRM",
    ("bees", ()): "BeeS",
    ("lossdiff_irm", ("lossdiff", "irm")): "LossDiff-IRM",
    ("map", ()): "M_AP",
    ("influence_large", ("influence",)): "large IF third",
}


@pytest.mark.parametrize(("rule", "scores"), list(PAPER_ROWS))
def test_selections_recorded_without_a_label_keep_their_row_names(rule: str, scores: tuple[str, ...]) -> None:
    assert method_label({"selection": {"rule": rule, "scores": list(scores)}}) == PAPER_ROWS[rule, scores]


def test_a_yaml_label_names_an_option_that_shares_its_class() -> None:
    rule = analysis_rule("tif", seed=0, keep_fraction=None)
    assert type(rule).__name__ == "BandSelection" and rule.display_label() == "TIF"
    assert method_label({}) == "Full Data"
