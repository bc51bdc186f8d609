"""Label noise added at load time (``data.flip_fraction``, ``data.val_flip_fraction``): which pairs flip, what a
flip changes, and the ground truth the oracle then reads; and the clean held-out pairs on the test prompts.
Hand-made pairs and the built-in set, no model."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from prefalign.data.builtin.heldout_pairs import TEST_FILE, heldout_pairs
from prefalign.data.builtin.tasks import check_response
from prefalign.data.datamodule import data_split_pairs
from prefalign.data.noise import flip_pairs
from prefalign.data.records import PreferencePair
from prefalign.data.sources import BuiltinSource
from prefalign.scoring.oracle import ground_truth_code


def pairs() -> list[PreferencePair]:
    made = [
        PreferencePair(f"p{i}", f"q{i}", f"good{i}", f"bad{i}", {"score_chosen": 7.0, "score_rejected": 4.0},
                       {"label_flipped": False, "ambiguous": False})
        for i in range(4)
    ]
    made[1].metadata["label_flipped"] = True  # already noisy: never drawn again
    return made


def test_a_flip_swaps_the_completions_and_their_scores_and_is_recorded():
    out, count = flip_pairs(pairs(), 0.5, seed=3)
    # round(0.5 * 4) = 2 flips, drawn from the 3 pairs not flipped already (p0, p2, p3)
    assert count == 2
    new = [pair for pair in out if pair.metadata.get("flipped_at_load")]
    assert len(new) == 2 and "p1" not in {pair.pair_id for pair in new}
    for pair in new:
        i = pair.pair_id[1:]
        assert (pair.chosen, pair.rejected) == (f"bad{i}", f"good{i}")
        assert pair.scores == {"score_chosen": 4.0, "score_rejected": 7.0}
        assert ground_truth_code(pair.metadata, pair.pair_id) == 2
    kept = [pair for pair in out if not pair.metadata.get("flipped_at_load")]
    assert len(kept) == 2 and all(p.chosen.startswith("good") for p in kept)
    # the same seed draws the same pairs; the input is not changed
    again, _ = flip_pairs(pairs(), 0.5, seed=3)
    assert [p.chosen for p in again] == [p.chosen for p in out]
    assert flip_pairs(pairs(), 0.0, seed=3) == (pairs(), 0)


def test_impossible_fractions_are_named():
    with pytest.raises(ValueError, match=r"data.flip_fraction must be a fraction in \[0, 1\), got 1.0"):
        flip_pairs(pairs(), 1.0, seed=0)
    # round(0.9 * 4) = 4 flips, but p1 is flipped already: 3 candidates
    with pytest.raises(ValueError, match="asks for 4 flips of 4 pairs, but only 3 are not flipped already"):
        flip_pairs(pairs(), 0.9, seed=0, key="data.flip_fraction")


def test_the_builtin_validation_split_gets_the_noise_the_config_asks_for():
    data = OmegaConf.create({"source": {"_target_": "prefalign.data.sources.BuiltinSource"}, "max_val_pairs": 40,
                             "val_flip_fraction": 0.25, "flip_seed": 0, "max_train_pairs": 10})
    val = data_split_pairs(data, "val")
    # the shipped validation pairs are clean; 10 of the first 40 are flipped now, and the oracle sees them
    codes = [ground_truth_code(p.metadata, p.pair_id) for p in val]
    assert len(val) == 40 and codes.count(2) == 10 == sum(bool(p.metadata.get("flipped_at_load")) for p in val)
    train = data_split_pairs(data, "train")  # no flip_fraction: as shipped
    assert len(train) == 10 and not any(p.metadata.get("flipped_at_load") for p in train)


def test_the_held_out_pairs_on_the_test_prompts_are_clean_and_unseen():
    source = BuiltinSource(val="test_pairs")
    made = source.load("val")
    assert len(made) == len(heldout_pairs()) > 3000 and len({p.pair_id for p in made}) == len(made)
    # every chosen answer passes its prompt's checker and every rejected one fails it
    checkers = {json.loads(line)["prompt_id"]: json.loads(line)["checker"] for line in TEST_FILE.open()}
    for pair in made[::97]:
        checker = checkers[pair.metadata["prompt_id"]]
        assert check_response(checker, pair.chosen) and not check_response(checker, pair.rejected)
    # on prompts no training or validation pair has
    seen = {p.prompt for p in BuiltinSource().load("train")} | {p.prompt for p in BuiltinSource().load("val")}
    assert not seen & {p.prompt for p in made}
    with pytest.raises(ValueError, match="data.source.val='test': expected one of"):
        BuiltinSource(val="test")
