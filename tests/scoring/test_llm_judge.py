"""The llm_judge score against a real OpenAI-compatible server on loopback (tests/evaluation/judge_server.py)."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import torch

from prefalign.data.records import PreferencePair
from prefalign.evaluation.client import ChatClient
from prefalign.scoring.base import read_scores
from prefalign.scoring.llm_judge import LLMJudgeScorer
from tests.entry import run_cli
from tests.evaluation.judge_server import JudgeServer
from tests.test_pipeline import TOKENIZER


def test_margin_is_the_difference_of_the_two_ratings(tmp_path):
    # the server rates an answer with GOOD 9 and any other 2, and gives no rating to an answer with GARBLE; no two
    # requests are alike (a duplicate could be served from the reply cache, or not, as the threads happen to run)
    pairs = [
        PreferencePair("a", "Say hi", "GOOD hello", "bad"),  # 9 - 2
        PreferencePair("b", "Say hi", "meh", "GOOD hi"),  # 2 - 9: the label disagrees with the judge
        PreferencePair("c", [{"role": "user", "content": "Say hi"}], "GOOD", "GOOD too"),  # 9 - 9
        PreferencePair("d", "Say hi", "GARBLE", "bad too"),  # no rating for chosen: no score
    ]
    context = SimpleNamespace(datamodule=SimpleNamespace(pairs={"train": pairs}))
    batch = {"index": torch.arange(4), "pair_ids": [pair.pair_id for pair in pairs]}
    with JudgeServer(fail_first=1) as server:
        client = ChatClient(server.base_url, "judge", backoff=0.01, cache_path=tmp_path / "replies.sqlite")
        scorer = LLMJudgeScorer(client)
        margins = scorer.score_batch(context, batch, {})
        assert server.requests == 1 + 8  # one failure retried, then both responses of every pair
        again = LLMJudgeScorer(ChatClient(server.base_url, "judge", cache_path=tmp_path / "replies.sqlite"))
        repeated = again.score_batch(context, batch, {})
        # every parsed reply came from the cache; the unparsable one (GARBLE) was not cached and is asked again
        assert server.requests == 10
    assert margins[:3].tolist() == [7.0, -7.0, 0.0]
    assert math.isnan(margins[3]) and scorer.unparsable == 1
    torch.testing.assert_close(repeated, margins, equal_nan=True)


def test_score_py_computes_the_llm_judge_column(tmp_path):
    data = tmp_path / "pairs.jsonl"
    rows = [{"pair_id": f"p{i}", "prompt": f"Question {i}?", "chosen": "GOOD answer" if i % 2 else "plain answer",
             "rejected": "wrong answer"} for i in range(6)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with JudgeServer() as server:
        result = run_cli(
            "score", "model=tiny_llama", "data=local", f"data.source.train_path={data}", f"data.source.val_path={data}",
            "scores=[llm_judge]", f"+scorers.llm_judge.client.base_url={server.base_url}",
            f"paths.cache_dir={tmp_path / 'cache'}", TOKENIZER, f"hydra.run.dir={tmp_path / 'scored'}",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert server.requests == 12
    scores, provenance = read_scores(tmp_path / "scored")
    assert dict(zip(scores["pair_id"], scores["llm_judge"])) == {f"p{i}": 7.0 if i % 2 else 0.0 for i in range(6)}
    assert provenance["scorers"]["llm_judge"]["client"]["base_url"] == server.base_url
