"""Responses and rewards: the reward sources on hand-checked answers, and sampling that resumes exactly.

``sample.py`` runs in-process (:func:`tests.entry.run_cli`), except the run that is killed: a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from prefalign.evaluation.benchmarks import BuiltinBenchmark
from prefalign.evaluation.judges import EvalItem, RewardModelJudge
from prefalign.online.responses import SamplingSettings, sample_shards
from prefalign.online.rewards import AnnotatorReward, JudgeReward, VerifierReward
from tests.entry import run_cli

ROOT = Path(__file__).resolve().parents[2]
ADD = EvalItem("p-1", "What is 1 + 8?", {"family": "add1", "operands": [1, 8], "answer": 9})


def test_builtin_training_prompts_are_the_distinct_prompts_of_the_pairs():
    items = BuiltinBenchmark(split="train").load()
    assert len(items) == len({item.item_id for item in items}) == 1045  # of the 90 x 12 planned, those with a pair
    assert all(item.checker is not None for item in items)
    assert len(BuiltinBenchmark(split="val").load()) == 300 and len(BuiltinBenchmark().load()) == 300
    with pytest.raises(ValueError, match="split"):
        BuiltinBenchmark(split="dev")


def test_verifier_reward_is_one_for_a_correct_answer():
    assert VerifierReward().rewards([ADD, ADD], ["1 + 8 = 9", "The answer is 11."], [0, 1]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="prompt q has none"):
        VerifierReward().rewards([EvalItem("q", "hello")], ["hi"], [0])


def test_annotator_reward_is_seeded_per_response_and_follows_the_shipped_distribution():
    annotator = AnnotatorReward(seed=3)
    first = annotator.rewards([ADD, ADD], ["1 + 8 = 9", "10"], [0, 1])
    assert annotator.rewards([ADD, ADD], ["1 + 8 = 9", "10"], [0, 1]) == first  # the same rating whenever rated
    assert annotator.rewards([ADD], ["10"], [1]) == first[1:]  # whatever is rated with it
    # the shipped model: round(N(7, 1.5)) for a correct answer, round(N(4, 1.5)) for a wrong one, in [1, 10]
    right = annotator.rewards([ADD] * 2000, ["9"] * 2000, list(range(2000)))
    wrong = annotator.rewards([ADD] * 2000, ["8"] * 2000, list(range(2000)))
    assert abs(np.mean(right) - 7.0) < 0.15 and abs(np.mean(wrong) - 4.0) < 0.15
    assert abs(np.std(wrong) - 1.5) < 0.15 and set(right) <= set(map(float, range(1, 11)))
    # a correct answer out-rates a wrong one about as often as the shipped scores do (P(N(3, 1.5 * sqrt 2) > 0.5))
    assert 0.85 < np.mean(np.array(right) > np.array(wrong)) < 0.95


def test_judge_reward_is_the_reward_models_reward(tiny_reward_model):
    judge = RewardModelJudge(str(tiny_reward_model))
    items = [ADD, EvalItem("p-2", "Say hi.")]
    expected = judge.reward_model.rewards([item.prompt for item in items], ["9", "hi"]).tolist()
    assert JudgeReward(judge).rewards(items, ["9", "hi"], [0, 0]) == pytest.approx(expected)


def test_llm_judge_reward_is_its_rating_and_no_reward_when_unparsable(tmp_path):
    from prefalign.evaluation.client import ChatClient
    from prefalign.evaluation.judges import OpenAIJudge, UnparsableReplies
    from prefalign.online.pairs import BestWorst, build_pairs
    from tests.evaluation.judge_server import JudgeServer

    items = [EvalItem("q", "Question?")] * 3
    with JudgeServer() as server:
        client = ChatClient(server.base_url, "test-judge", backoff=0.01, cache_path=tmp_path / "cache.sqlite")
        judge = OpenAIJudge(client, max_unparsable=0.5)
        rewards = JudgeReward(judge, name="llm_judge").rewards(items, ["GOOD answer", "BAD answer", "GARBLE"], [0, 1, 2])
        assert rewards == [9.0, 2.0, None]  # the test server rates GOOD 9, BAD 2, and garbles GARBLE
        rows = [{"prompt_id": "q", "prompt": "Question?", "sample": j, "response": text, "reward": reward}
                for j, (text, reward) in enumerate(zip(["GOOD answer", "BAD answer", "GARBLE"], rewards))]
        pairs, report = build_pairs(rows, BestWorst())
        assert [(p["chosen"], p["rejected"]) for p in pairs] == [("GOOD answer", "BAD answer")]
        assert report["dropped"] == {"no_reward": 1}
        strict = OpenAIJudge(ChatClient(server.base_url, "test-judge", backoff=0.01, cache_path=tmp_path / "c2.sqlite"))
        with pytest.raises(UnparsableReplies):  # 1 of 3 > the default 5%: the stage fails, nothing is written
            JudgeReward(strict).rewards(items, ["GOOD answer", "BAD answer", "GARBLE"], [0, 1, 2])


class Crash(RuntimeError):
    pass


def test_sampling_resumes_where_it_stopped_and_gives_the_uninterrupted_responses(tmp_path, tokenizer):
    from prefalign.data.tokenization import PairTokenizer
    from prefalign.evaluation.generation import generate_answers
    from tests.conftest import tiny_model

    model, pair_tokenizer = tiny_model("llama"), PairTokenizer(tokenizer, max_length=80, max_prompt_length=64)
    items = BuiltinBenchmark(split="train", limit=10).load()
    settings = SamplingSettings(samples_per_prompt=3, max_new_tokens=6, batch_size=4, shard_size=3, seed=5)
    calls = []

    def generate(prompts, seed, crash_at=None):
        calls.append(seed)
        if crash_at is not None and len(calls) == crash_at:
            raise Crash("killed while sampling shard 2")
        return generate_answers(model, pair_tokenizer, prompts, max_new_tokens=6, temperature=0.7, seed=seed, batch_size=4)

    whole = sample_shards(items, generate, settings, tmp_path / "whole")
    assert len(whole) == 4 and sum(len(s) for s in whole) == 30
    calls.clear()
    with pytest.raises(Crash):
        sample_shards(items, lambda p, s: generate(p, s, crash_at=3), settings, tmp_path / "resumed")
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == ["shard-00000.jsonl", "shard-00001.jsonl"]
    calls.clear()
    resumed = sample_shards(items, generate, settings, tmp_path / "resumed")
    assert len(calls) == 2  # only the shards without a file were sampled again
    assert resumed == whole
    # the k samples of a prompt differ (sampling, not copies of one answer)
    assert len({row["response"] for row in whole[0][:3]}) > 1


def test_sample_cli_killed_midway_resumes_to_the_same_responses(tmp_path):
    # 10 shards of 2 prompts with short answers: the kill comes after the third, long before the last
    args = ["model=tiny_llama", "num_prompts=20", "samples_per_prompt=2", "shard_size=2", "generation.max_new_tokens=4",
            "generation.batch_size=4", "reward=annotator", "pairs=reward_gap"]
    killed_cache = tmp_path / "cache-killed"
    # a real process, killed from outside; the resumed and the uninterrupted run run in this one
    process = subprocess.Popen([sys.executable, "sample.py", *args, f"paths.cache_dir={killed_cache}",
                                f"hydra.run.dir={tmp_path / 'killed'}"], cwd=ROOT, env={**os.environ, "HYDRA_FULL_ERROR": "1"},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    shards = lambda: list(killed_cache.glob("responses/*/shard-*.jsonl"))
    while len(shards()) < 3 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)  # no chance to clean up: a machine that went away
    process.wait()
    done = len(shards())
    assert 3 <= done < 10, f"the kill came after {done} of 10 shards"
    assert process.returncode == -signal.SIGKILL

    for cache, name in ((killed_cache, "rerun"), (tmp_path / "cache-whole", "whole")):
        result = run_cli("sample", *args, f"paths.cache_dir={cache}", f"hydra.run.dir={tmp_path / name}")
        assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "rerun" / "sample_report.json").read_text())
    assert report["shards_from_cache"] == done and report["responses"] == 40
    for name in ("responses.jsonl", "pairs.jsonl"):
        assert (tmp_path / "rerun" / name).read_text() == (tmp_path / "whole" / name).read_text()


def test_sample_py_on_a_prompt_file_with_a_reward_model(tmp_path, tiny_reward_model):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "question": f"Name a colour, {i}."}) + "\n" for i in range(5)))
    result = run_cli("sample", "model=tiny_llama", "prompts=file", f"prompts.path={prompts}", "prompts.prompt_column=question",
                     "prompts.id_column=id", "samples_per_prompt=3", "generation.max_new_tokens=6", "reward=reward_model",
                     f"reward.judge.model={tiny_reward_model}", "reward.judge.dtype=float32", "pairs=reward_gap",
                     f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "responses.jsonl").read_text().splitlines()]
    assert [row["prompt_id"] for row in rows[:4]] == ["q0", "q0", "q0", "q1"] and len(rows) == 15
    assert all(isinstance(row["reward"], float) and row["correct"] is None for row in rows)  # no checker: no truth
    # the rewards are the reward model's, and every pair of a prompt's distinct rewards is a pair (reward_gap, 0)
    judge = RewardModelJudge(str(tiny_reward_model))
    expected = judge.reward_model.rewards([rows[0]["prompt"]], [rows[0]["response"]]).tolist()
    assert rows[0]["reward"] == pytest.approx(expected[0], rel=1e-5)
    report = json.loads((tmp_path / "run" / "sample_report.json").read_text())
    expected_pairs = 0
    for prompt in ("q0", "q1", "q2", "q3", "q4"):
        distinct = {}
        for row in rows:
            if row["prompt_id"] == prompt:
                distinct.setdefault(row["response"], row["reward"])
        values = list(distinct.values())
        expected_pairs += sum(values[j] != values[l] for j in range(len(values)) for l in range(j + 1, len(values)))
    assert expected_pairs > 0 and report["pairs"]["pairs"] == expected_pairs and report["pairs"]["ground_truth"] is None
