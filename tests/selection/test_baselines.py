"""The oracle, select.invert, M_AP and the influence groups on hand-made scores, with the results worked out by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from prefalign.data.records import DataError, PreferencePair
from prefalign.scoring.oracle import GroundTruthScorer, ground_truth_code
from prefalign.scoring.proxies import LogpGapScorer
from prefalign.selection.rules import (
    AlignmentPotentialSelection,
    BandSelection,
    GroupSelection,
    InvertedSelection,
    OracleSelection,
    RankSelection,
    zscore,
)
from prefalign.selection.config import rule_config, select_rule


def table(**columns):
    size = len(next(iter(columns.values())))
    return pd.DataFrame({"pair_id": [f"p{i}" for i in range(size)], **columns})


def pair(pair_id, **metadata):
    return PreferencePair(pair_id, "x", "a", "b", metadata=metadata)


def test_ground_truth_codes_from_metadata():
    assert ground_truth_code({"label_flipped": False, "ambiguous": False}, "p") == 0
    assert ground_truth_code({"label_flipped": False, "ambiguous": True}, "p") == 1
    assert ground_truth_code({"label_flipped": True, "ambiguous": False}, "p") == 2
    assert ground_truth_code({"label_flipped": True, "ambiguous": True}, "p") == 2  # flipped wins
    with pytest.raises(DataError, match=r"pair q7: .*\['ambiguous'\]"):
        ground_truth_code({"label_flipped": False}, "q7")


def test_ground_truth_scorer_reads_the_batch_pairs():
    class Context:  # what batch_pairs reads: datamodule.pairs["train"]
        class datamodule:  # noqa: N801
            pairs = {"train": [pair("a", label_flipped=True, ambiguous=False), pair("b", label_flipped=False, ambiguous=False),
                               pair("c", label_flipped=False, ambiguous=True)]}

    values = GroundTruthScorer().score_batch(Context, {"index": torch.tensor([2, 0, 1])}, {})
    assert values.tolist() == [1.0, 2.0, 0.0]


# codes of 10 pairs: 5 clean (p0, p2, p4, p6, p8), 2 ambiguous (p1, p5), 3 flipped (p3, p7, p9)
CODES = [0.0, 1.0, 0.0, 2.0, 0.0, 1.0, 0.0, 2.0, 0.0, 2.0]


def test_oracle_keeps_exactly_the_clean_pairs():
    selection = OracleSelection().select(table(ground_truth=CODES))
    assert selection.kept == ["p0", "p2", "p4", "p6", "p8"]
    assert selection.kept_fraction == 0.5 and selection.details["kept_flipped"] == 0


def test_oracle_at_a_budget():
    scores = table(ground_truth=CODES)
    # 30% of 10 = 3 pairs, all clean: a random three of the five
    small = OracleSelection(keep_fraction=0.3, seed=1).select(scores)
    assert len(small.kept) == 3 and set(small.kept) <= {"p0", "p2", "p4", "p6", "p8"}
    assert OracleSelection(keep_fraction=0.3, seed=1).select(scores).kept == small.kept  # seeded
    # 70% = 7 pairs: the 5 clean ones, then both ambiguous ones, no flipped one
    large = OracleSelection(keep_fraction=0.7).select(scores)
    assert set(large.kept) == {"p0", "p1", "p2", "p4", "p5", "p6", "p8"}
    assert (large.details["kept_clean"], large.details["kept_ambiguous"], large.details["kept_flipped"]) == (5, 2, 0)
    # k = 8: one flipped pair has to fill the budget, and the record says so
    assert OracleSelection(k=8).select(scores).details["kept_flipped"] == 1
    with pytest.raises(ValueError, match="must hold 0 \\(clean\\), 1 or 2"):
        OracleSelection().select(table(ground_truth=[0.0, 3.0]))


def test_invert_keeps_the_complement():
    scores = table(annotator=[5.0, 1.0, 4.0, 2.0, 3.0])
    rule = RankSelection("annotator", k=2)  # keeps the two largest: p0 (5) and p2 (4)
    assert rule.select(scores).kept == ["p0", "p2"]
    dropped = InvertedSelection(rule).select(scores)
    assert dropped.kept == ["p1", "p3", "p4"] and dropped.rule == "topk_dropped"
    assert dropped.kept_fraction == pytest.approx(0.6) and dropped.details["inverted"] == "topk"
    assert dropped.thresholds["cut_value"] == 4.0 and InvertedSelection(rule).scores == ["annotator"]
    # a band (10, 90) on 1..10 keeps 2..9: its complement is the two extremes
    band = InvertedSelection(BandSelection("influence")).select(table(influence=[float(v) for v in range(1, 11)]))
    assert band.kept == ["p0", "p9"]


def test_invert_from_config():
    node = rule_config("tif")
    node.invert = True
    rule = select_rule(node)
    assert isinstance(rule, InvertedSelection) and rule.name == "tif_dropped"
    node = rule_config("full")
    node.invert = True
    with pytest.raises(ValueError, match="select=full cannot be inverted"):
        select_rule(node)
    node = rule_config("random")
    node.invert = "yes"
    with pytest.raises(ValueError, match="select.invert must be true or false"):
        select_rule(OmegaConf.create({**OmegaConf.to_container(node), "seed": 0}))


def test_logp_gap_by_hand():
    shared = {
        "chosen_logps": torch.tensor([-6.0, -2.0]),
        "rejected_logps": torch.tensor([-3.0, -9.0]),
        "chosen_lengths": torch.tensor([3, 2]),
        "rejected_lengths": torch.tensor([1, 3]),
    }
    # |-6/3 - (-3/1)| = |-2 + 3| = 1 ; |-2/2 - (-9/3)| = |-1 + 3| = 2
    assert LogpGapScorer().score_batch(None, {}, shared).tolist() == [1.0, 2.0]


def test_map_by_hand():
    # external margins 1, 2, 3, 6: mean 3, population std sqrt((4 + 1 + 0 + 9) / 4) = sqrt(3.5)
    # gaps 2, 2, 0, 4: mean 2, population std sqrt((0 + 0 + 4 + 4) / 4) = sqrt(2)
    external, gap = [1.0, 2.0, 3.0, 6.0], [2.0, 2.0, 0.0, 4.0]
    z_external = np.array([-2.0, -1.0, 0.0, 3.0]) / np.sqrt(3.5)
    z_gap = np.array([0.0, 0.0, -2.0, 2.0]) / np.sqrt(2.0)
    assert zscore(np.array(external)) == pytest.approx(z_external)
    # M_AP = z_external - z_gap = [-1.069, -0.535, 1.414, 0.189]: the top 2 are p2 then p3
    scores = table(annotator=external, logp_gap=gap)
    selection = AlignmentPotentialSelection(keep_fraction=0.5).select(scores)
    assert selection.kept == ["p2", "p3"]
    assert selection.thresholds["cut_value"] == pytest.approx(3 / np.sqrt(3.5) - 2 / np.sqrt(2))
    # int(0.4 * 4) = 1, as the authors' script rounds down: only p2
    assert AlignmentPotentialSelection().select(scores).kept == ["p2"]
    # with the gap weighted 0 it is the annotator top-k: p3 (6) and p2 (3)
    assert AlignmentPotentialSelection(keep_fraction=0.5, gap_weight=0.0).select(scores).kept == ["p2", "p3"]
    assert AlignmentPotentialSelection(k=1, gap_weight=0.0).select(scores).kept == ["p3"]
    assert zscore(np.array([2.0, 2.0])).tolist() == [0.0, 0.0]


def test_influence_groups_are_equal_count_thirds_in_score_order():
    scores = table(influence=[5.0, 1.0, 3.0, 2.0, 4.0, 6.0, 0.0])
    # sorted: 0 (p6), 1 (p1), 2 (p3), 3 (p2), 4 (p4), 5 (p0), 6 (p5); 7 pairs cut 3 + 2 + 2
    expected = {"small": ["p1", "p3", "p6"], "medium": ["p2", "p4"], "large": ["p0", "p5"]}
    for group, kept in expected.items():
        selection = GroupSelection("influence", group).select(scores)
        assert selection.kept == kept and selection.rule == f"influence_{group}"
    assert GroupSelection("influence", 1).select(scores).thresholds == {
        "score": "influence", "group": 1, "groups": 3, "min": 3.0, "max": 4.0}
    # every pair is in exactly one group
    assert sorted(sum(expected.values(), [])) == sorted(scores["pair_id"])
    with pytest.raises(ValueError, match="give small, medium or large"):
        GroupSelection("influence", "huge")
    with pytest.raises(ValueError, match="select.groups must be a whole number >= 2"):
        GroupSelection("influence", 0, groups=1)
    rule = select_rule(rule_config("if_group"))
    assert isinstance(rule, GroupSelection) and rule.scores == ["influence"] and rule.name == "influence_medium"
