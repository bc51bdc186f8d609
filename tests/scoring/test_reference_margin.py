"""The reference_margin score: hand-worked margins, found by name, and computed by score.py end to end."""

from __future__ import annotations

import pytest
import torch

from prefalign.scoring.base import read_scores
from prefalign.scoring.config import build_scorers
from prefalign.scoring.margins import ReferenceMarginScorer
from tests.entry import run_cli
from tests.test_configs import compose_with

BATCH = {
    "reference": {"chosen_logps": torch.tensor([-3.0, -5.0]), "rejected_logps": torch.tensor([-4.0, -1.0])},
    # 2 and 5 chosen tokens, 4 and 1 rejected tokens
    "chosen_attention_mask": torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]),
    "rejected_attention_mask": torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]]),
}


def test_margins_worked_out_by_hand():
    # sums: -3 - (-4) = 1, -5 - (-1) = -4; per token: -3/2 + 4/4 = -0.5, -5/5 + 1/1 = 0
    assert ReferenceMarginScorer().score_batch(None, BATCH, {}).tolist() == [1.0, -4.0]
    assert ReferenceMarginScorer(length_normalize=True).score_batch(None, BATCH, {}).tolist() == [-0.5, 0.0]
    with pytest.raises(ValueError, match="needs the cached reference log-probs"):
        ReferenceMarginScorer().score_batch(None, {}, {})


def test_found_by_name_with_no_list_to_extend(tmp_path):
    cfg = compose_with("score", ["scores=[reference_margin]", "+scorers.reference_margin.length_normalize=true"], tmp_path)
    (scorer,) = build_scorers(cfg, ["reference_margin"])
    assert isinstance(scorer, ReferenceMarginScorer) and scorer.length_normalize
    assert scorer.settings == {"_target_": "prefalign.scoring.margins.ReferenceMarginScorer", "length_normalize": True}


def test_score_py_computes_it(tmp_path):
    result = run_cli(
        "score", "model=tiny_llama", "data.max_train_pairs=16", "data.max_val_pairs=8",
        # a second configuration of the same class under its own column name
        "scores=[reference_margin,irm,per_token]", "+scorers.per_token.option=reference_margin",
        "+scorers.per_token.length_normalize=true", f"hydra.run.dir={tmp_path}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scores, provenance = read_scores(tmp_path)
    assert len(scores) == 16 and scores["reference_margin"].abs().sum() > 0
    assert provenance["scorers"]["per_token"]["length_normalize"] is True
    assert provenance["scorers"]["reference_margin"]["length_normalize"] is False
    assert not scores["per_token"].equals(scores["reference_margin"])
    # the initial model is its own reference: its IRM is zero, its reference margin is not
    assert scores["irm"].abs().max() < 1e-5
