"""The OpenAI-compatible judge against a real HTTP server on loopback, with the faults of a real one.

Requests go through the ``openai`` package: it retries connection errors, bodies cut short and HTTP 429/5xx
itself (the loopback server asks for a 10 ms pause), and the client retries a 200 whose body is not JSON.
"""

import socket

import pytest

from prefalign.evaluation.client import ChatClient, JudgeUnavailable
from prefalign.evaluation.judges import (
    EvalItem,
    Judge,
    OpenAIJudge,
    UnparsableReplies,
    parse_rating,
    parse_verdict,
    single_conversation,
)
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


@pytest.mark.parametrize("fault", ["http_500", "http_429", "not_json", "cut_short"])
def test_retries_after_server_errors_and_bad_bodies(tmp_path, fault):
    with JudgeServer(faults=[fault, fault]) as server:
        judge = judge_for(server, tmp_path, concurrency=1)
        assert judge.single(ITEMS[:1], ["GOOD"]) == [9.0]
        assert server.requests == 3  # two faults, then success
    assert len(judge.client.cache) == 1


@pytest.mark.parametrize(
    ("fault", "wrong"),
    [
        ("not_json", "a reply with a body that is not JSON"),
        # h11's words (under httpx and httpx2 alike) for a connection closed short of the Content-Length
        ("cut_short", "without sending complete message body"),
        ("http_500", "HTTP 500"),
    ],
)
def test_a_bad_body_that_persists_names_the_url_and_what_was_wrong(tmp_path, fault, wrong):
    with JudgeServer(faults=[fault] * 3) as server:
        judge = judge_for(server, tmp_path, max_retries=2)
        with pytest.raises(JudgeUnavailable) as error:
            judge.single(ITEMS[:1], ["GOOD"])
        assert server.requests == 3
    message = str(error.value)
    assert f"{server.base_url}/chat/completions failed after 3 attempts" in message and wrong in message, message
    assert len(judge.client.cache) == 0


def test_a_refused_request_is_not_retried_and_names_the_status(tmp_path, monkeypatch):
    monkeypatch.delenv("PREFALIGN_TEST_KEY", raising=False)
    with JudgeServer(faults=["http_400"]) as server:
        judge = judge_for(server, tmp_path, api_key_env="PREFALIGN_TEST_KEY")
        with pytest.raises(JudgeUnavailable, match=r"chat/completions refused the request \(HTTP 400: .*\$PREFALIGN_TEST_KEY is not set"):
            judge.single(ITEMS[:1], ["GOOD"])
        assert server.requests == 1


def test_the_key_and_sampling_settings_reach_the_server(tmp_path, monkeypatch):
    monkeypatch.setenv("PREFALIGN_TEST_KEY", "sk-test")
    with JudgeServer() as server:
        judge = judge_for(server, tmp_path, api_key_env="PREFALIGN_TEST_KEY", temperature=0.25, max_tokens=77)
        assert judge.single(ITEMS[:1], ["GOOD"]) == [9.0]
    (body,) = server.bodies
    assert body["model"] == "test-judge" and body["temperature"] == 0.25 and body["max_tokens"] == 77
    assert server.authorizations == ["Bearer sk-test"]


def test_faults_then_a_fixed_server_retried_counted_never_cached(tmp_path):
    # one item meets every fault in turn: two bad bodies (retried), then a reply with no rating (returned)
    with JudgeServer(faults=["not_json", "cut_short", "unparsable"]) as server:
        judge = judge_for(server, tmp_path, concurrency=1)
        assert judge.single(ITEMS[:2], ["GOOD", "BAD"]) == [None, 2.0]
        assert server.requests == 4
        assert judge.unparsable["single"] == 1 and judge.reply_counts()["unparsable"] == 1
        assert len(judge.client.cache) == 1  # the unparsable reply was not cached
        # the server is fixed now: a rerun asks again for the unparsable reply only, and gets a good one
        again = judge_for(server, tmp_path)
        assert again.single(ITEMS[:2], ["GOOD", "BAD"]) == [9.0, 2.0]
        assert server.requests == 5 and not again.unparsable and len(again.client.cache) == 2
        assert judge_for(server, tmp_path).single(ITEMS[:2], ["GOOD", "BAD"]) == [9.0, 2.0]
        assert server.requests == 5


def test_empty_and_unparsable_verdicts_are_not_cached(tmp_path):
    with JudgeServer(faults=["empty", "unparsable"]) as server:
        judge = judge_for(server, tmp_path)
        assert judge.pairwise(ITEMS[:1], ["GOOD"], ["plain"]) == [None]
        assert judge.unparsable == {"pairwise": 2, "pairwise_items": 1}
        assert judge.reply_counts() == {"total": 2, "unparsable": 2, "max_unparsable": 0.05}
        assert len(judge.client.cache) == 0
        assert judge_for(server, tmp_path).pairwise(ITEMS[:1], ["GOOD"], ["plain"]) == [1.0]
        assert server.requests == 4


def test_an_unparsable_reply_left_in_the_cache_is_asked_for_again(tmp_path):
    with JudgeServer(faults=["unparsable"]) as server:
        judge = judge_for(server, tmp_path)
        # a caller that accepts any non-empty reply (the default) caches it, as older versions did for all
        judge.client.complete(single_conversation(ITEMS[0].prompt, "GOOD"))
        assert len(judge.client.cache) == 1
        assert judge.single(ITEMS[:1], ["GOOD"]) == [9.0]
        assert server.requests == 2


def test_more_unparsable_replies_than_allowed_is_an_error_with_the_count():
    judge = Judge(max_unparsable=0.05)
    judge.replies.update(single=200, pairwise=100)
    judge.unparsable.update(single=10, pairwise=5, pairwise_items=2)  # 15 of 300: exactly 5 %, allowed
    judge.check_unparsable()
    judge.unparsable.update(single=20, pairwise=2)
    with pytest.raises(UnparsableReplies, match=r"^37 of 300 judge replies \(12\.3%\) could not be parsed, more than "
                       r"judge\.max_unparsable=0\.05 .*the raw replies are in gen\.jsonl"):
        judge.check_unparsable("gen.jsonl")
    assert Judge(max_unparsable=0.0).reply_counts() == {"total": 0, "unparsable": 0, "max_unparsable": 0.0}
    Judge(max_unparsable=0.0).check_unparsable()  # a judge that sends no requests never fails


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
