"""The OpenAI-compatible judge against a real HTTP server on loopback."""

import socket

import pytest

from prefalign.evaluation.client import ChatClient, JudgeUnavailable
from prefalign.evaluation.judges import EvalItem, OpenAIJudge, parse_rating, parse_verdict
from tests.evaluation.judge_server import JudgeServer

ITEMS = [EvalItem(f"q{i}", f"Question {i}?") for i in range(4)]


def judge_for(server: JudgeServer, tmp_path, **client_options) -> OpenAIJudge:
    options = {"concurrency": 3, "max_retries": 3, "backoff": 0.01, "timeout": 10, "cache_path": tmp_path / "cache.sqlite"}
    options.update(client_options)
    return OpenAIJudge(ChatClient(server.base_url, "test-judge", **options))


def test_single_grading_and_unparsable_replies(tmp_path):
    with JudgeServer() as server:
        judge = judge_for(server, tmp_path)
        ratings = judge.single(ITEMS, ["GOOD answer", "BAD answer", "GARBLE", "GOOD too"])
    assert ratings == [9.0, 2.0, None, 9.0]
    assert judge.unparsable["single"] == 1


def test_pairwise_judges_both_orders_and_cancels_position_bias(tmp_path):
    with JudgeServer() as server:
        judge = judge_for(server, tmp_path)
        outcomes = judge.pairwise(
            ITEMS, ["GOOD a", "plain a", "plain a", "GARBLE"], ["plain b", "GOOD b", "plain b", "plain b"]
        )
        assert server.requests == 8  # every pair in both orders
    # GOOD wins in both orders; with no GOOD answer the always-"A" judge is a tie once orders are swapped
    assert outcomes == [1.0, 0.0, 0.5, None]
    assert judge.unparsable["pairwise"] == 2 and judge.unparsable["pairwise_items"] == 1
    records = [r for r in judge.records() if r["kind"] == "pairwise"]
    assert records[2]["verdicts"] == ["A", "A"]


def test_cache_means_a_rerun_sends_no_requests(tmp_path):
    answers_a, answers_b = ["GOOD"] * 4, ["plain"] * 4
    with JudgeServer() as server:
        first = judge_for(server, tmp_path).pairwise(ITEMS, answers_a, answers_b)
        sent = server.requests
        second = judge_for(server, tmp_path).pairwise(ITEMS, answers_a, answers_b)
        assert server.requests == sent == 8
    assert first == second == [1.0] * 4


def test_retries_after_server_errors(tmp_path):
    with JudgeServer(fail_first=2) as server:
        judge = judge_for(server, tmp_path, concurrency=1)
        assert judge.single(ITEMS[:1], ["GOOD"]) == [9.0]
        assert server.requests == 3  # two HTTP 500s, then success


def test_unreachable_server_is_named_and_keeps_obtained_replies(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed as soon as the block ends: nothing listens there
    client = ChatClient(f"http://127.0.0.1:{port}/v1", "m", max_retries=1, backoff=0.01, cache_path=tmp_path / "c.sqlite")
    with pytest.raises(JudgeUnavailable, match=rf"127\.0\.0\.1:{port}/v1/chat/completions failed after 2 attempts"):
        OpenAIJudge(client).single(ITEMS[:1], ["GOOD"])
    # replies obtained before an outage stay cached
    with JudgeServer() as server:
        judge = OpenAIJudge(ChatClient(server.base_url, "m", cache_path=tmp_path / "c.sqlite"))
        judge.single(ITEMS[:2], ["GOOD", "BAD"])
    assert len(judge.client.cache) == 2


def test_parsers():
    assert parse_rating("ok\nRating: [[7]]") == 7.0
    assert parse_rating("Rating: 8") == 8.0
    assert parse_rating("[[11]]") is None and parse_rating("no rating") is None
    assert parse_verdict("blah [[B]]") == "B" and parse_verdict("[[A]] then [[C]]") == "C"
    assert parse_verdict("A is better") is None
