"""The judges' benchmark protocols, against the loopback judge server (tests/evaluation/judge_server.py).

* MT-Bench as FastChat defines it: its constants read from the installed fschat's source, its rating patterns,
  its reference prompt for the categories of NEED_REF_CATS, its pairwise rule, its per-category temperatures
  reaching generation. The judge prompts are a hand-made ``judge_prompts.jsonl`` in FastChat's format, written
  here with this test's own wording (FastChat's text is never part of the repository).
* Arena-Hard as arena-hard-auto defines it: the five verdicts, the rule for several verdicts, the follow-up of a
  judgement with none, the 3x weighting of strong verdicts worked out by hand, the bootstrap over battles, and the
  authors' config file for the wording.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from prefalign.evaluation import arena, fastchat
from prefalign.evaluation.client import ChatClient
from prefalign.evaluation.judges import ArenaHardJudge, EvalItem, MTBenchJudge
from tests.evaluation.judge_server import JudgeServer

CONF = Path(__file__).resolve().parents[2] / "conf"

# FastChat's judge_prompts.jsonl format (name, type, system_prompt, prompt_template, output_format, category),
# with this test's own wording; the markers SINGLE / REFERENCE / PAIR tell the scripted judge which prompt it got
TEST_PROMPTS = [
    {"name": "single-v1", "type": "single", "system_prompt": "SINGLE judge.", "category": "general",
     "prompt_template": "[Question]\n{question}\n\n[Answer]\n{answer}\n[End]", "output_format": "[[rating]]"},
    {"name": "single-math-v1", "type": "single", "system_prompt": "REFERENCE judge.", "category": "math",
     "prompt_template": "[Question]\n{question}\n\n[Reference]\n{ref_answer_1}\n\n[Answer]\n{answer}\n[End]",
     "output_format": "[[rating]]"},
    {"name": "pair-v2", "type": "pairwise", "system_prompt": "PAIR judge.", "category": "general",
     "prompt_template": "[Question]\n{question}\n\n[A]\n{answer_a}\n\n[B]\n{answer_b}\n[End]", "output_format": "[[A]]"},
    {"name": "pair-math-v1", "type": "pairwise", "system_prompt": "PAIR REFERENCE judge.", "category": "math",
     "prompt_template": "[Question]\n{question}\n\n[Reference]\n{ref_answer_1}\n\n[A]\n{answer_a}\n\n[B]\n{answer_b}\n[End]",
     "output_format": "[[A]]"},
    # a prompt this judge does not use: ignored, as FastChat's other judges' prompts are
    {"name": "single-v1-multi-turn", "type": "single", "system_prompt": "unused", "category": "general",
     "prompt_template": "{question_1}{answer_1}{question_2}{answer_2}", "output_format": "[[rating]]"},
]


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "judge_prompts.jsonl"
    path.write_text("".join(json.dumps(prompt) + "\n" for prompt in TEST_PROMPTS))
    return path


def client_for(server: JudgeServer, tmp_path: Path, **options) -> ChatClient:
    settings = {"concurrency": 2, "max_retries": 1, "backoff": 0.01, "timeout": 10, "cache_path": tmp_path / "cache.sqlite"}
    settings.update(options)
    return ChatClient(server.base_url, "test-judge", **settings)


def between(text: str, start: str, end: str) -> str:
    return re.search(re.escape(start) + r"(.*?)" + re.escape(end), text, re.S).group(1)


def replies_written_in_the_answer(messages: list[dict[str, str]]) -> str:
    """A scripted judge for single grading: each answer holds the judge's reply to it after ``SAY:``."""
    return between(messages[-1]["content"], "[Answer]\n", "\n[End]").split("SAY:", 1)[1]


# --- MT-Bench (FastChat) ---------------------------------------------------------------------------------------


def test_fastchat_constants_are_read_from_the_installed_source():
    constants = fastchat.fastchat_constants()
    assert constants.source.endswith("fastchat/llm_judge/common.py") and Path(constants.source).is_file()
    assert constants.version == importlib.metadata.version("fschat")
    # which of MT-Bench's eight categories get a reference answer; FastChat's file is the authority
    assert {"math", "reasoning", "coding"} <= set(constants.need_ref_cats)
    assert not {"writing", "roleplay", "extraction", "stem", "humanities"} & set(constants.need_ref_cats)
    table = constants.temperature_config
    assert (table["writing"], table["roleplay"], table["extraction"], table["math"]) == (0.7, 0.7, 0.0, 0.0)
    assert (table["coding"], table["reasoning"], table["stem"], table["humanities"]) == (0.0, 0.0, 0.1, 0.1)
    assert constants.provenance() == {"package": "fschat", "version": constants.version, "source": constants.source}


def test_the_constants_follow_whatever_the_source_says(tmp_path, monkeypatch):
    # a stand-in common.py: the values must come from its text (parsed, not imported: it imports what is absent)
    source = tmp_path / "common.py"
    source.write_text(textwrap.dedent('''
        import openai_that_is_not_installed
        NEED_REF_CATS = ["puzzles"]
        one_score_pattern = re.compile("<<(\\d+)>>")
        one_score_pattern_backup = re.compile("<(\\d+)>")
        temperature_config = {"poetry": 1.5}
    '''))
    monkeypatch.setattr(fastchat, "common_source", lambda: source)
    fastchat.fastchat_constants.cache_clear()
    try:
        constants = fastchat.fastchat_constants()
        assert constants.need_ref_cats == ("puzzles",) and constants.temperature_config == {"poetry": 1.5}
        assert constants.parse_rating("score <<7>>") == 7.0 and constants.parse_rating("score <6>") == 6.0
        assert constants.source == str(source)
        source.write_text("NEED_REF_CATS = ['x']\n")
        fastchat.fastchat_constants.cache_clear()
        with pytest.raises(fastchat.FastChatUnavailable, match=r"common\.py: no module-level assignment to temperature_config"):
            fastchat.fastchat_constants()
    finally:
        fastchat.fastchat_constants.cache_clear()


@pytest.mark.parametrize(
    ("reply", "rating"),
    [
        ("Clear and right. Rating: [[8]]", 8.0),
        ("[[8.5]]", 8.5),
        ("I would give it [8].", 8.0),  # FastChat's backup pattern: one pair of brackets
        ("[7] at first sight, but [[8]] on reflection", 8.0),  # the double brackets win wherever they are
        ("[[3]] for style, [[9]] for content", 3.0),  # the first match (FastChat's re.search)
        ("[[11]]", 11.0),  # FastChat does not check the range
        ("Rating: 8/10", None),  # no brackets: FastChat records -1
        ("no rating here", None),
    ],
)
def test_mt_bench_ratings_are_parsed_as_fastchat_parses_them(tmp_path, prompts_file, reply, rating):
    with JudgeServer(respond=replies_written_in_the_answer) as server:
        judge = MTBenchJudge(client_for(server, tmp_path), prompts_file=prompts_file)
        assert judge.single([EvalItem("q", "Write a haiku.", category="writing")], [f"SAY:{reply}"]) == [rating]
    assert judge.unparsable["single"] == (rating is None)


def test_mt_bench_shows_the_reference_to_the_categories_fastchat_names(tmp_path, prompts_file):
    items = [
        EvalItem("w", "Write a toast.", category="writing"),
        EvalItem("m", "What is 2 + 3?", reference=["5", "ignored second-turn reference"], category="math"),
        EvalItem("r", "Who is taller?", reference="Ann", category="reasoning"),
        EvalItem("c", "Reverse a list.", reference=["xs[::-1]"], category="coding"),
        EvalItem("s", "Why is the sky blue?", reference=["not shown: stem needs none"], category="stem"),
    ]
    with JudgeServer(respond=lambda messages: "[[6]]") as server:
        judge = MTBenchJudge(client_for(server, tmp_path, concurrency=1), prompts_file=prompts_file)
        judge.check_inputs(items)
        assert judge.single(items, ["an answer"] * 5) == [6.0] * 5
    sent = {between(body["messages"][-1]["content"], "[Question]\n", "\n\n"): body["messages"] for body in server.bodies}
    system = {question: messages[0]["content"] for question, messages in sent.items()}
    assert system == {"Write a toast.": "SINGLE judge.", "What is 2 + 3?": "REFERENCE judge.",
                      "Who is taller?": "REFERENCE judge.", "Reverse a list.": "REFERENCE judge.",
                      "Why is the sky blue?": "SINGLE judge."}
    # the first turn's reference fills {ref_answer_1}; the template is formatted with FastChat's field names
    assert sent["What is 2 + 3?"][1]["content"] == "[Question]\nWhat is 2 + 3?\n\n[Reference]\n5\n\n[Answer]\nan answer\n[End]"
    assert "[Reference]\nxs[::-1]" in sent["Reverse a list."][1]["content"]
    assert [r["prompt"] for r in judge.records()] == ["single-v1", "single-math-v1", "single-math-v1", "single-math-v1", "single-v1"]
    provenance = judge.provenance()
    assert provenance["protocol"] == "mt_bench" and provenance["fastchat"]["version"] == importlib.metadata.version("fschat")
    assert provenance["prompts_file"] == str(prompts_file) and len(provenance["prompts_sha256"]) == 64


def test_mt_bench_pairwise_follows_fastchats_rule(tmp_path, prompts_file):
    # each answer says what the judge replies when it is shown as A: the verdicts of the two orders
    def respond(messages):
        return between(messages[-1]["content"], "[A]\n", "\n\n[B]").split("SAY:", 1)[1]

    cases = {
        # (reply when the policy's answer is A, reply when the baseline's is A) -> outcome for the policy
        "consistent win": ("[[A]]", "[[B]]", 1.0),
        "consistent loss": ("[[B]]", "[[A]]", 0.0),
        "tie": ("[[C]]", "[[C]]", 0.5),
        "inconsistent": ("[[A]]", "[[A]]", 0.5),  # position bias: FastChat counts the pair a tie
        "one error": ("[[A]]", "no verdict", 0.5),  # inconsistent too
        "A named before B": ("[[B]] or rather [[A]]", "[[B]]", 1.0),  # FastChat checks [[A]] first
        "both errors": ("hmm", "no verdict", None),
    }
    items = [EvalItem(name, f"Compare ({name}).", category="writing") for name in cases]  # no two requests alike
    # the suffixes keep the two orders' requests apart (identical ones would come from the reply cache)
    answers_a = [f"SAY:{first} (policy)" for first, _, _ in cases.values()]
    answers_b = [f"SAY:{second} (baseline)" for _, second, _ in cases.values()]
    with JudgeServer(respond=respond) as server:
        judge = MTBenchJudge(client_for(server, tmp_path), prompts_file=prompts_file)
        assert judge.pairwise(items, answers_a, answers_b) == [outcome for _, _, outcome in cases.values()]
        assert server.requests == 2 * len(cases)
    assert judge.unparsable == {"pairwise": 3, "pairwise_items": 1}
    assert {body["messages"][0]["content"] for body in server.bodies} == {"PAIR judge."}


def test_mt_bench_names_what_it_lacks_before_anything_is_generated(tmp_path, prompts_file):
    client = ChatClient("http://127.0.0.1:9/v1", "m")  # never contacted
    math = EvalItem("m1", "What is 2 + 3?", category="math")
    with pytest.raises(FileNotFoundError, match=r"judge\.prompts_file=<path to judge_prompts\.jsonl>: .*FastChat.*v0\.2\.36.*"
                       r"fastchat/llm_judge/data/judge_prompts\.jsonl"):
        MTBenchJudge(client).check_inputs([math])
    missing = tmp_path / "nowhere.jsonl"
    with pytest.raises(FileNotFoundError, match=rf"judge\.prompts_file={re.escape(str(missing))}: no such file"):
        MTBenchJudge(client, prompts_file=missing).check_inputs([math])
    with pytest.raises(ValueError, match=r"item m1 \(category math\) has no reference answer.*bench\.reference_column"):
        MTBenchJudge(client, prompts_file=prompts_file).check_inputs([math])
    # without FastChat's reference prompts (use_reference=false) the same item is judged with single-v1
    MTBenchJudge(client, prompts_file=prompts_file, use_reference=False).check_inputs([math])
    two_turns = EvalItem("t", [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}], category="writing")
    with pytest.raises(ValueError, match=r"item t: the mt_bench judge grades the first turn.*bench\.turns=first"):
        MTBenchJudge(client, prompts_file=prompts_file).check_inputs([two_turns])
    incomplete = tmp_path / "incomplete.jsonl"
    incomplete.write_text(json.dumps(TEST_PROMPTS[0]) + "\n" + json.dumps({"name": "single-math-v1"}) + "\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(incomplete))}:2: missing key 'type'"):
        MTBenchJudge(client, prompts_file=incomplete).check_inputs([])
    incomplete.write_text(json.dumps(TEST_PROMPTS[0]) + "\n")
    with pytest.raises(ValueError, match=r"no judge prompt named 'single-math-v1'"):
        MTBenchJudge(client, prompts_file=incomplete).check_inputs([])


class RecordingModel(torch.nn.Module):
    """Answers every prompt with one fixed token and records the sampling settings of each ``generate`` call."""

    def __init__(self, token_id: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.token_id = token_id
        self.calls: list[tuple[int, dict]] = []

    def generate(self, input_ids, attention_mask, max_new_tokens, pad_token_id, eos_token_id, **sampling):
        self.calls.append((input_ids.shape[0], sampling))
        return torch.cat([input_ids, torch.full((input_ids.shape[0], 1), self.token_id)], dim=1)


def test_per_category_temperatures_reach_generation(tokenizer, monkeypatch):
    from prefalign.data.tokenization import PairTokenizer
    from prefalign.evaluation import generation
    from prefalign.evaluation import policy as run

    items = [EvalItem(f"q{i}", f"Question {i}?", category=category)
             for i, category in enumerate(["writing", "math", "stem", "writing", "coding", "humanities"])]
    settings = OmegaConf.create({"temperature": 0.7, "seed": 0, "temperature_by_category": "fastchat"})
    temperatures, record = run.prompt_temperatures(settings, items)
    table = fastchat.fastchat_constants().temperature_config
    assert temperatures == [table[item.category] for item in items] == [0.7, 0.0, 0.1, 0.7, 0.0, 0.1]
    assert record["temperature_by_category"] == table and record["temperature_source"]["package"] == "fschat"
    assert run.generation_label(settings) == "fastchat-s0"
    # each prompt is generated at its own temperature: greedy for 0, sampled at 0.1 and 0.7
    model = RecordingModel(tokenizer.convert_tokens_to_ids(tokenizer.tokenize("ok"))[0])
    answers = generation.generate_answers(model, PairTokenizer(tokenizer, 64, 48), [item.prompt for item in items],
                                          max_new_tokens=1, temperature=temperatures, batch_size=8)
    assert len(answers) == 6 and all(answers)
    assert sorted((rows, tuple(sorted(sampling.items()))) for rows, sampling in model.calls) == [
        (2, (("do_sample", False),)),
        (2, (("do_sample", True), ("temperature", 0.1), ("top_p", 1.0))),
        (2, (("do_sample", True), ("temperature", 0.7), ("top_p", 1.0))),
    ]
    # without the option every prompt gets generation.temperature, and the folder keys of earlier results hold
    assert run.prompt_temperatures(OmegaConf.create({"temperature": 0.7}), items) == (None, {})
    with pytest.raises(ValueError, match=r"needs each prompt's category; 1 have none \(first: x\)"):
        run.prompt_temperatures(settings, [EvalItem("x", "?")])
    with pytest.raises(ValueError, match=r"temperature_by_category must be null, fastchat or a mapping"):
        run.prompt_temperatures(OmegaConf.create({"temperature": 0.7, "temperature_by_category": "alpaca"}), items)


# --- Arena-Hard (arena-hard-auto) ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("judgment", "verdict"),
    [
        ("My answer: ... My final verdict is [[A>>B]]", "A>>B"),
        ("[[A>B]]", "A>B"),
        ("[[A=B]]", "A=B"),
        ("[[B>A]]", "B>A"),
        ("[[B>>A]]", "B>>A"),
        ("[[A >> B]]", "A>>B"),  # spaces inside the brackets are ignored
        ("[[ A > B ]]", "A>B"),
        ("[[A = B]]", "A=B"),
        ("[[B > A]]", "B>A"),
        ("[[B >> A]]", "B>>A"),
        ("[[A>B]] ... so again: [[A > B]]", "A>B"),  # one verdict, repeated
        ("first [[A>B]], then on reflection [[B>A]]", None),  # different verdicts: unparsable
        ("[[A>>B]] or [[A>B]]", None),
        ("Assistant A is better.", None),  # no verdict at all
        ("[[A<B]]", None),  # not one of the five labels
        ("[[A]]", None),
    ],
)
def test_arena_hard_verdicts(judgment, verdict):
    assert arena.parse_verdict(judgment) == verdict
    assert arena.needs_another_attempt(judgment) == (judgment in {"Assistant A is better."})


# the worked example: (verdict when the policy's answer is shown first, verdict when the baseline's is) per prompt
EXAMPLE = {
    "q1": ("[[A>>B]]", "[[B>A]]"),  # policy much better (3 wins), then slightly better shown second (1 win)
    "q2": ("[[A=B]]", "[[A>>B]]"),  # a tie (one battle at 0.5), then the baseline, shown first, much better (3 losses)
    "q3": ("[[B>A]]", "[[A>B]] no, [[B>A]]"),  # the baseline slightly better (1 loss); conflicting: no battle
}


def arena_respond(messages):
    """A scripted Arena-Hard judge: which verdict depends on the prompt and on whose answer is shown first."""
    text = messages[1]["content"]
    question = between(text, "[User prompt]\n", "\n\n")
    policy_first = between(text, "[Start of Assistant A's answer]\n", "\n").startswith("policy")
    return "I would answer: ... " + EXAMPLE[question][0 if policy_first else 1]


def test_arena_hard_weights_strong_verdicts_three_times(tmp_path):
    items = [EvalItem(question, question) for question in EXAMPLE]
    with JudgeServer(respond=arena_respond) as server:
        judge = ArenaHardJudge(client_for(server, tmp_path))
        battles = judge.pairwise_battles(items, [f"policy {q}" for q in EXAMPLE], [f"baseline {q}" for q in EXAMPLE])
        assert server.requests == 6  # two games per prompt; a conflicting verdict is not asked to go on
    # by hand:  q1: 3 wins (A>>B) + 1 win (B>A with the policy as B)           -> [1, 1, 1, 1]
    #           q2: 1 tie (A=B) + 3 losses (A>>B with the baseline as A)        -> [0.5, 0, 0, 0]
    #           q3: 1 loss (B>A with the policy as A) + no battle (conflicting) -> [0]
    assert battles == [[1.0, 1.0, 1.0, 1.0], [0.5, 0.0, 0.0, 0.0], [0.0]]
    # WinRate = battles won / battles = (4 + 0.5 + 0) / 9 = 50 %; the unweighted mean of the per-prompt
    # outcomes (1 + 0.125 + 0) / 3 = 37.5 % would be another number
    result = judge.win_rate(battles, seed=0)
    assert result["value"] == pytest.approx(50.0) and result["battles"] == 9 and result["n"] == 3
    assert (result["wins"], result["ties"], result["losses"], result["unparsable"]) == (1, 0, 2, 0)
    assert result["ci_low"] < 50.0 < result["ci_high"] and result["resampled"] == "battles"
    assert judge.unparsable == {"pairwise": 1}
    records = judge.records()
    assert [r["outcome_for_a"] for r in records] == [1.0, 0.125, 0.0]
    assert [g["verdict"] for g in records[2]["games"]] == ["B>A", None]


def test_arena_hard_bootstrap_resamples_battles():
    # 100 resamples of the 9 battles (arena-hard-auto's num_rounds), 2.5 / 97.5 percentiles of their win rates
    battles = [[1.0, 1.0, 1.0, 1.0], [0.5, 0.0, 0.0, 0.0], [0.0]]
    result = arena.battle_win_rate(battles, resamples=100, seed=3)
    flat = np.array([100 * score for item in battles for score in item])
    rng = np.random.default_rng(3)
    means = [flat[rng.integers(0, 9, 9)].mean() for _ in range(100)]
    assert (result["ci_low"], result["ci_high"]) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    # a prompt with no parsable game is counted, not averaged
    assert arena.battle_win_rate([[], [1.0]], resamples=10)["unparsable"] == 1
    assert arena.game_battles("A>>B", scored_first=False) == [0.0, 0.0, 0.0]
    assert arena.game_battles("B>>A", scored_first=False, strong_weight=5) == [1.0] * 5
    assert arena.game_battles(None, scored_first=True) == []


def test_a_judgement_without_a_verdict_is_asked_to_finish_and_resumed_from_the_cache(tmp_path):
    def respond(messages):
        if len(messages) == 2:
            return "My own answer first: it is 4."  # no verdict yet
        assert messages[2]["role"] == "assistant" and messages[3]["content"] == arena.FOLLOW_UP
        return "Comparing both with mine: [[B>>A]]"

    items = [EvalItem("q", "What is 2 + 2?")]
    with JudgeServer(respond=respond) as server:
        judge = ArenaHardJudge(client_for(server, tmp_path))
        assert judge.pairwise_battles(items, ["policy"], ["baseline"]) == [[0.0] * 3 + [1.0] * 3]
        assert server.requests == 4  # two games, each finished by a follow-up
        (record,) = judge.records()
        assert record["games"][0]["attempts"] == 2
        assert record["games"][0]["judgment"] == "\nMy own answer first: it is 4.\nComparing both with mine: [[B>>A]]"
        # both replies of each game were kept: a rerun sends nothing
        again = ArenaHardJudge(client_for(server, tmp_path))
        assert again.pairwise(items, ["policy"], ["baseline"]) == [0.5]
        assert server.requests == 4
        # with a single attempt the judgement stays without a verdict: unparsable, and not cached
        once = ArenaHardJudge(client_for(server, tmp_path, cache_path=tmp_path / "other.sqlite"), judgment_attempts=1)
        assert once.pairwise(items, ["policy"], ["baseline"]) == [None]
        assert once.unparsable == {"pairwise": 2, "pairwise_items": 1} and len(once.client.cache) == 0


def test_arena_hard_uses_the_authors_config_when_given(tmp_path):
    config = tmp_path / "judge_config.yaml"
    # arena-hard-auto's file layout, with this test's own wording
    config.write_text(textwrap.dedent('''\
        bench_name: arena-hard-v0.1
        judge_model: some-judge
        regex_pattern: \\[\\[([AB<>=]+)\\]\\]
        number_of_judgment_attempts: 2
        system_prompt: "CONFIG SYSTEM PROMPT: answer, then judge."
        prompt_template: ["Q: {question_1}\\nFIRST: {answer_1}\\nSECOND: {answer_2}"]
    '''))
    with JudgeServer(respond=lambda messages: "[[A=B]]") as server:
        judge = ArenaHardJudge(client_for(server, tmp_path), arena_hard_config=config)
        assert judge.pairwise([EvalItem("q", "Why?")], ["one"], ["two"]) == [0.5]
    # both games, in whichever order the two requests arrived
    assert sorted((body["messages"] for body in server.bodies), key=str) == [
        [{"role": "system", "content": "CONFIG SYSTEM PROMPT: answer, then judge."},
         {"role": "user", "content": "Q: Why?\nFIRST: one\nSECOND: two"}],
        [{"role": "system", "content": "CONFIG SYSTEM PROMPT: answer, then judge."},
         {"role": "user", "content": "Q: Why?\nFIRST: two\nSECOND: one"}],
    ]
    wording = judge.provenance()["wording"]
    assert wording["source"] == str(config) and len(wording["sha256"]) == 64
    # without the file: prefalign's wording, labelled as such
    default = ArenaHardJudge(ChatClient("http://127.0.0.1:9/v1", "m")).provenance()
    assert "prefalign's own wording" in default["wording"]["source"] and default["strong_weight"] == 3
    missing = tmp_path / "absent.yaml"
    with pytest.raises(FileNotFoundError, match=rf"judge\.arena_hard_config={re.escape(str(missing))}: no such file.*"
                       r"lmarena/arena-hard-auto.*config/judge_config\.yaml"):
        ArenaHardJudge(ChatClient("http://127.0.0.1:9/v1", "m"), arena_hard_config=missing).check_inputs([])
    config.write_text("prompt_template: ['{question_1}']\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(config))}: missing key 'system_prompt'"):
        ArenaHardJudge(ChatClient("http://127.0.0.1:9/v1", "m"), arena_hard_config=config).check_inputs([])
    with pytest.raises(ValueError, match=r"judge\.strong_weight must be a whole number >= 1, got 0"):
        ArenaHardJudge(ChatClient("http://127.0.0.1:9/v1", "m"), strong_weight=0)


# --- end to end: evaluate_policy with the protocols' configs ---------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer):
    from tests.conftest import tiny_model

    folder = tmp_path_factory.mktemp("tiny_checkpoint")
    tiny_model("llama").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def evaluation_config(tmp_path: Path, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[*overrides, f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path}",
                                                         "generation.batch_size=4", "generation.bootstrap_resamples=20"])
    OmegaConf.resolve(cfg)
    return cfg


def test_mt_bench_evaluation_end_to_end(tmp_path, checkpoint, prompts_file, monkeypatch):
    from prefalign.evaluation import policy as run

    bench = tmp_path / "mt_bench.jsonl"
    rows = [("writing", []), ("math", ["5"]), ("stem", []), ("coding", ["xs[::-1]"])]
    bench.write_text("".join(json.dumps({"prompt": [f"Question about {category}?", "a second turn"], "category": category,
                                         "reference": reference}) + "\n" for category, reference in rows))
    seen = []
    real = run.generate_answers
    monkeypatch.setattr(run, "generate_answers", lambda *args, **kwargs: seen.append(kwargs["temperature"]) or real(*args, **kwargs))
    def respond(messages):  # 7 for every answer, a tie for every pair
        return "[[C]]" if messages[0]["content"].startswith("PAIR") else "[[7]]"

    with JudgeServer(respond=respond) as server:
        cfg = evaluation_config(tmp_path, ["bench=mt_bench", f"bench.path={bench}", "bench.reference_column=reference",
                                           "bench.max_new_tokens=3", "judge=mt_bench", f"judge.prompts_file={prompts_file}",
                                           f"judge.client.base_url={server.base_url}", "generation=mt_bench"])
        folder = run.result_folder(cfg.bench, cfg.judge, cfg.generation)
        assert folder.startswith("mt_bench-mt_bench-fastchat-s0-")
        report = run.evaluate_policy(checkpoint, cfg.bench, cfg.judge, cfg.generation, tmp_path / "cache",
                                     tmp_path / "out", baseline=str(checkpoint))
    assert seen == [[0.7, 0.0, 0.1, 0.0]] * 2  # policy and baseline, each prompt at its category's temperature
    assert report["generation"]["temperature_by_category"] == fastchat.fastchat_constants().temperature_config
    assert report["judge_protocol"]["protocol"] == "mt_bench" and report["judge_protocol"]["fastchat"]["package"] == "fschat"
    assert report["single"]["policy"]["value"] == 7.0 and report["winrate"]["value"] == 50.0
    lines = [json.loads(line) for line in (tmp_path / "out" / "generations.jsonl").read_text().splitlines()]
    assert [line["temperature"] for line in lines] == [0.7, 0.0, 0.1, 0.0]
    # writing, math, stem, coding: the reference prompts for math and coding, for the policy and the baseline alike
    prompts = [[record["prompt"] for record in line["judge_replies"]] for line in lines]
    assert prompts == [["single-v1"] * 2 + ["pair-v2"], ["single-math-v1"] * 2 + ["pair-math-v1"],
                       ["single-v1"] * 2 + ["pair-v2"], ["single-math-v1"] * 2 + ["pair-math-v1"]]
    saved = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert saved["judge_protocol"]["need_ref_cats"] == list(fastchat.fastchat_constants().need_ref_cats)


def test_arena_hard_evaluation_end_to_end(tmp_path, checkpoint):
    from prefalign.evaluation import policy as run

    bench = tmp_path / "arena.jsonl"
    bench.write_text("".join(json.dumps({"question_id": f"a{i}", "category": "hard", "turns": [{"content": f"Task {i}"}]})
                             + "\n" for i in range(3)))
    # the answers are the same model's: a judge that always prefers the first answer strongly is pure position
    # bias, 3 battles won in one game and 3 lost in the other
    with JudgeServer(respond=lambda messages: "[[A>>B]]" if messages[0]["content"] == arena.PREFALIGN_SYSTEM else None) as server:
        cfg = evaluation_config(tmp_path, ["bench=arena_hard", f"bench.path={bench}", "bench.max_new_tokens=3",
                                           "judge=arena_hard", f"judge.client.base_url={server.base_url}", "generation=greedy"])
        report = run.evaluate_policy(checkpoint, cfg.bench, cfg.judge, cfg.generation, tmp_path / "cache",
                                     tmp_path / "out", baseline=str(checkpoint))
    assert report["winrate"]["battles"] == 3 * 6 and report["winrate"]["value"] == 50.0
    assert report["winrate"]["resampled"] == "battles" and report["winrate"]["ties"] == 3
    assert report["judge_protocol"]["protocol"] == "arena_hard" and report["judge_protocol"]["bootstrap_resamples"] == 100
    # Single (no arena-hard prompt exists for it) is prefalign's; the test server rates a non-GOOD answer 2
    assert report["single"]["policy"]["value"] == 2.0
    lines = [json.loads(line) for line in (tmp_path / "out" / "generations.jsonl").read_text().splitlines()]
    assert all(line["outcome_for_policy"] == 0.5 for line in lines)
    pairwise = [record for line in lines for record in line["judge_replies"] if record["kind"] == "pairwise"]
    assert [record["battles_for_a"] for record in pairwise] == [[1.0] * 3 + [0.0] * 3] * 3
