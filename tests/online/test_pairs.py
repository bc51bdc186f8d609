"""Pair rules on hand-made rewards: which pairs each builds, what it drops and why, the pairs file's rows."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from prefalign.online.pairs import BestWorst, CurriculumPairs, RewardGap, RSDPO, build_pairs


def responses(rewards_by_prompt: dict[str, list[float | None]], correct: dict[str, list[bool]] | None = None) -> list[dict]:
    rows = []
    for prompt_id, rewards in rewards_by_prompt.items():
        for sample, reward in enumerate(rewards):
            rows.append({
                "prompt_id": prompt_id, "prompt": f"question {prompt_id}", "sample": sample,
                "response": f"answer {prompt_id}.{sample}", "reward": reward,
                "correct": None if correct is None else correct[prompt_id][sample],
            })
    return rows


def pairs_of(rule, rewards: list[float]) -> tuple[list[tuple[int, int]], Counter]:
    counts: Counter = Counter()
    return rule.pairs(rewards, counts), counts


def test_best_worst_takes_the_extremes_and_skips_all_equal_prompts():
    assert pairs_of(BestWorst(), [0.2, 0.9, -1.0, 0.5]) == ([(1, 2)], Counter())
    # ties for best and for worst: the first sample of each
    assert pairs_of(BestWorst(), [1.0, 0.0, 1.0, 0.0])[0] == [(0, 1)]
    assert pairs_of(BestWorst(), [3.0, 3.0, 3.0]) == ([], Counter(equal_reward=1))


def test_rs_dpo_keeps_pairs_whose_sigmoid_gap_exceeds_eta():
    # gaps: (0,1) 2.0 -> sigmoid 0.881; (0,2) 0.5 -> 0.622; (2,1) 1.5 -> 0.818; eta 0.8 keeps the first and last
    rule = RSDPO(tau=1.0, eta=0.8)
    kept, counts = pairs_of(rule, [2.0, 0.0, 1.5])
    assert kept == [(0, 1), (2, 1)] and counts == Counter(below_threshold=1)
    assert 1 / (1 + math.exp(-1.5)) == pytest.approx(0.8176, abs=1e-4)  # the hand-worked value the rule compares
    # tau scales the gap: with tau = 2 the 2.0 gap gives sigmoid(1) = 0.731 < 0.8, nothing is kept
    assert pairs_of(RSDPO(tau=2.0, eta=0.8), [2.0, 0.0, 1.5])[0] == []
    # equal rewards are never a pair, even when eta < 0.5 would let sigmoid(0) = 0.5 through
    kept, counts = pairs_of(RSDPO(tau=1.0, eta=0.3), [1.0, 1.0, 0.0])
    assert kept == [(0, 2), (1, 2)] and counts == Counter(equal_reward=1)
    with pytest.raises(ValueError, match="eta"):
        RSDPO(eta=1.0)
    with pytest.raises(ValueError, match="tau"):
        RSDPO(tau=0.0)


def test_reward_gap_keeps_every_ordered_pair_above_the_gap():
    kept, counts = pairs_of(RewardGap(), [1.0, 3.0, 1.0, 2.0])
    assert sorted(kept) == [(1, 0), (1, 2), (1, 3), (3, 0), (3, 2)] and counts == Counter(equal_reward=1)
    kept, counts = pairs_of(RewardGap(min_gap=1.0), [1.0, 3.0, 1.0, 2.0])
    assert sorted(kept) == [(1, 0), (1, 2)] and counts == Counter(equal_reward=1, below_threshold=3)


def test_curriculum_pairs_the_best_with_each_lower_response_largest_gap_first():
    rule = CurriculumPairs()
    kept, counts = pairs_of(rule, [6.0, 9.0, 2.0, 9.0, 4.0])
    # best: sample 1 (first of the two 9s); the other 9 ties; lower ones by gap: 2 (gap 7), 4 (5), 0 (3)
    assert kept == [(1, 2), (1, 4), (1, 0)] and counts == Counter(equal_reward=1)
    assert [rule.stage(i) for i in range(3)] == [1, 2, 3]
    kept, counts = pairs_of(CurriculumPairs(max_stages=2), [6.0, 9.0, 2.0, 4.0])
    assert kept == [(1, 2), (1, 3)] and counts == Counter(beyond_max_stages=1)


def test_build_pairs_rows_counts_and_ground_truth():
    rows = responses(
        {"a": [1.0, 0.0, 0.0], "b": [5.0, 5.0, None], "c": [0.0, 1.0, 1.0]},
        correct={"a": [True, False, False], "b": [True, False, True], "c": [True, False, False]},
    )
    rows.append({**rows[0], "sample": 3})  # the same text as sample 0 of prompt a, rated again
    pairs, report = build_pairs(rows, BestWorst(), pair_prefix="r1-")
    assert [p["pair_id"] for p in pairs] == ["r1-a-s0-s1", "r1-c-s1-s0"]
    first, second = pairs
    assert (first["chosen"], first["rejected"], first["score_chosen"], first["score_rejected"]) == ("answer a.0", "answer a.1", 1.0, 0.0)
    truth = {key: first["metadata"][key] for key in ("chosen_correct", "rejected_correct", "label_flipped", "ambiguous")}
    assert truth == {"chosen_correct": True, "rejected_correct": False, "label_flipped": False, "ambiguous": False}
    # prompt c: the verifier-like reward prefers a wrong answer (a noisy label), which the ground truth shows
    assert second["metadata"]["label_flipped"] is True and second["metadata"]["chosen_sample"] == 1
    assert report["pairs"] == 2 and report["prompts"] == 3 and report["prompts_without_pair"] == 1
    assert report["dropped"] == {"duplicate_response": 1, "equal_reward": 1, "no_reward": 1}
    assert report["ground_truth"] == {"pairs": 2, "label_flipped": 1, "ambiguous": 0}


def test_build_pairs_output_is_an_ordinary_pairs_file(tmp_path):
    from prefalign.data.sources import LocalSource
    from prefalign.atomic import write_jsonl

    pairs, _ = build_pairs(responses({"a": [2.0, 1.0, 0.0], "b": [0.0, 3.0, 1.0]}), RewardGap())
    write_jsonl(pairs, tmp_path / "pairs.jsonl")
    loaded = LocalSource(train_path=str(tmp_path / "pairs.jsonl")).load("train") + LocalSource(
        train_path=str(tmp_path / "pairs.jsonl"), val_fraction=0.5).load("val")
    assert {pair.pair_id for pair in loaded} <= {p["pair_id"] for p in pairs} and len(pairs) == 6
    assert loaded[0].scores["score_chosen"] > loaded[0].scores["score_rejected"]


def test_build_pairs_names_the_row_with_a_missing_key():
    with pytest.raises(ValueError, match="responses row 1: missing key 'reward'"):
        build_pairs([{"prompt_id": "a", "prompt": "q", "sample": 0, "response": "x", "reward": 1.0},
                     {"prompt_id": "a", "prompt": "q", "sample": 1, "response": "y"}], BestWorst())

