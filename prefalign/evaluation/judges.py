"""Judges: a 1-10 "Single" score per answer and pairwise verdicts between two answers.

* :class:`VerifierJudge` uses the built-in data set's checkers: a correct answer beats an incorrect one, equal
  outcomes tie. Single maps correct to 10 and incorrect to 1 (so a Single mean of ``1 + 9 a`` means accuracy
  ``a``).
* :class:`RewardModelJudge`: any Hugging Face sequence-classification reward model; Single is its raw reward
  (not on a 1-10 scale), the pairwise verdict is which answer it rewards more.
* :class:`OpenAIJudge` (``judge=openai``, protocol ``prefalign``): an LLM judge behind an OpenAI-compatible API
  (GPT-4-class models or a local vLLM server), with single-answer grading 1-10 and pairwise comparison; each pair
  is judged in both orders to cancel position bias, the outcome the mean of the two. Prompts were written for
  this project in the spirit of the papers' appendix (MT-Bench style ``[[rating]]`` / ``[[A]]`` verdict
  markers).
* :class:`MTBenchJudge` (``judge=mt_bench``): MT-Bench as FastChat defines it (:mod:`prefalign.evaluation.fastchat`):
  its ``single-v1`` prompt, ``single-math-v1`` with the reference answer for its ``NEED_REF_CATS``, its
  ``[[rating]]`` patterns; pairwise its ``pair-v2`` / ``pair-math-v1`` in both orders, two verdicts that
  disagree a tie (FastChat's ``show_result.py``).
* :class:`ArenaHardJudge` (``judge=arena_hard``): Arena-Hard as arena-hard-auto defines it
  (:mod:`prefalign.evaluation.arena`): the judge answers first, then gives one of five verdicts; two games per
  prompt, a strong verdict 3 battles; WinRate is the share of battles won, with a bootstrap over battles.

Replies without a parsable rating or verdict are counted in :attr:`Judge.unparsable` and excluded from the
means, never counted as wins; they are not cached, so a rerun asks for them again, and an evaluation where more
than ``max_unparsable`` of the replies could not be parsed fails (:meth:`Judge.check_unparsable`) instead of
reporting means of what is left.

Pairwise outcomes are from the point of view of answer A: 1 (A better), 0.5 (tie), 0 (B better), ``None``
(unparsable). What WinRate averages are *battles* (:meth:`Judge.pairwise_battles`): one per prompt, its outcome,
for every judge but Arena-Hard's, whose prompts count as many battles as its verdicts say
(:meth:`Judge.win_rate`).
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prefalign.data.records import Text
from prefalign.evaluation import arena
from prefalign.evaluation.client import ChatClient
from prefalign.evaluation.fastchat import (
    PROMPTS_SOURCE,
    FastChatConstants,
    fastchat_constants,
    file_digest,
    load_judge_prompts,
)
from prefalign.evaluation.metrics import win_rate
from prefalign.rewards import RewardModel

log = logging.getLogger(__name__)


class UnparsableReplies(RuntimeError):
    """More of the judge's replies than ``judge.max_unparsable`` allows gave no rating or verdict."""


@dataclass
class EvalItem:
    """One benchmark prompt, with what a verifier needs when the benchmark has it."""

    item_id: str
    prompt: Text
    checker: dict[str, Any] | None = None
    # a reference answer; MT-Bench's hub set holds one per turn (a list, empty where there is none)
    reference: str | list[str] | None = None
    category: str | None = None


def prompt_text(prompt: Text) -> str:
    """A prompt as plain text for a judge: the string, or a ``User:`` / ``Assistant:`` transcript."""
    if isinstance(prompt, str):
        return prompt
    names = {"user": "User", "assistant": "Assistant", "system": "System"}
    return "\n\n".join(f"{names.get(m['role'], m['role'])}: {m['content']}" for m in prompt)


@dataclass
class Judge:
    """Base class; ``replies`` counts an LLM judge's replies by kind, ``unparsable`` those that gave no rating or
    verdict (plus ``pairwise_items``: pairs with no parsable verdict in either order); ``max_unparsable`` is the
    largest share of unparsable replies an evaluation accepts."""

    name: str = "judge"
    unparsable: Counter = field(default_factory=Counter)
    replies: Counter = field(default_factory=Counter)
    max_unparsable: float = 0.05

    def single(self, items: list[EvalItem], answers: list[str]) -> list[float | None]:
        raise NotImplementedError

    def pairwise(self, items: list[EvalItem], answers_a: list[str], answers_b: list[str]) -> list[float | None]:
        raise NotImplementedError

    def pairwise_battles(self, items: list[EvalItem], answers_a: list[str], answers_b: list[str]) -> list[list[float]]:
        """Each item's battles, the scores of answer A that WinRate averages (1 win, 0.5 tie, 0 loss): here one
        battle per item, its :meth:`pairwise` outcome, none when unparsable; a protocol that weights its
        verdicts (:class:`ArenaHardJudge`) gives an item several."""
        return [[] if outcome is None else [outcome] for outcome in self.pairwise(items, answers_a, answers_b)]

    def win_rate(self, battles: list[list[float]], resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
        """WinRate in percent from :meth:`pairwise_battles`: the mean over items of their outcome, ties half, with
        a bootstrap interval over items (:func:`prefalign.evaluation.metrics.win_rate`). A pure function of its
        arguments, so that every rank of a launcher computes it from the battles rank 0 obtained."""
        return win_rate(battle_outcomes(battles), resamples=resamples, seed=seed)

    def check_inputs(self, items: list[EvalItem]) -> None:
        """Raise before anything is generated when the judge cannot judge these items (a missing prompts file,
        an item without the reference its protocol needs); nothing to check by default."""

    def provenance(self) -> dict[str, Any]:
        """Which protocol the judge follows and where its prompts and rules come from (written to ``eval.json``)."""
        return {"protocol": self.name, "judge": type(self).__name__}

    def records(self) -> list[dict[str, Any]]:
        """Raw judgements of the last calls, for the generations file (LLM judges)."""
        return []

    def reply_counts(self) -> dict[str, Any]:
        """Replies received, how many could not be parsed, and the share allowed (all 0 for judges that do not
        send requests)."""
        unparsable = sum(self.unparsable[kind] for kind in self.replies)
        return {"total": sum(self.replies.values()), "unparsable": unparsable, "max_unparsable": self.max_unparsable}

    def check_unparsable(self, replies_file: str | os.PathLike | None = None) -> None:
        """Raise :class:`UnparsableReplies` when more than ``max_unparsable`` of the replies could not be parsed.

        Args:
            replies_file: where the raw replies were written, named in the error.
        """
        counts = self.reply_counts()
        total, unparsable = counts["total"], counts["unparsable"]
        if not unparsable:
            return
        message = f"{unparsable} of {total} judge replies ({100 * unparsable / total:.1f}%) could not be parsed"
        if unparsable / total > self.max_unparsable:
            where = f"; the raw replies are in {replies_file}" if replies_file else ""
            raise UnparsableReplies(
                f"{message}, more than judge.max_unparsable={self.max_unparsable:g} (they were not cached, so a "
                f"rerun asks for them again{where})"
            )
        log.warning("%s; they are left out of the means", message)


def battle_outcomes(battles: list[list[float]]) -> list[float | None]:
    """Each item's outcome for answer A: the mean of its battles, ``None`` for an item without one."""
    return [sum(item) / len(item) if item else None for item in battles]


class VerifierJudge(Judge):
    """The built-in checkers (:func:`prefalign.data.builtin.tasks.check_response`)."""

    def __init__(self, name: str = "verifier") -> None:
        super().__init__(name=name)

    @staticmethod
    def correct(item: EvalItem, answer: str) -> bool:
        from prefalign.data.builtin.tasks import check_response

        if item.checker is None:
            raise ValueError(f"item {item.item_id}: the verifier judge needs a checker (use bench=builtin)")
        return bool(check_response(item.checker, answer))

    def single(self, items: list[EvalItem], answers: list[str]) -> list[float | None]:
        return [10.0 if self.correct(item, answer) else 1.0 for item, answer in zip(items, answers)]

    def pairwise(self, items: list[EvalItem], answers_a: list[str], answers_b: list[str]) -> list[float | None]:
        outcomes = []
        for item, a, b in zip(items, answers_a, answers_b):
            correct_a, correct_b = self.correct(item, a), self.correct(item, b)
            outcomes.append(0.5 if correct_a == correct_b else float(correct_a))
        return outcomes


class RewardModelJudge(Judge):
    """A sequence-classification reward model as judge (see :class:`prefalign.rewards.RewardModel`)."""

    def __init__(
        self, model: str, dtype: str = "float32", max_length: int = 1024, batch_size: int = 8, name: str = "reward_model"
    ) -> None:
        super().__init__(name=name)
        self.reward_model = RewardModel(model, dtype, max_length, batch_size)

    def single(self, items: list[EvalItem], answers: list[str]) -> list[float | None]:
        return self.reward_model.rewards([item.prompt for item in items], answers).tolist()

    def pairwise(self, items: list[EvalItem], answers_a: list[str], answers_b: list[str]) -> list[float | None]:
        prompts = [item.prompt for item in items]
        rewards_a = self.reward_model.rewards(prompts, answers_a)
        rewards_b = self.reward_model.rewards(prompts, answers_b)
        return [0.5 if a == b else float(a > b) for a, b in zip(rewards_a.tolist(), rewards_b.tolist())]


SYSTEM = "You are a careful, impartial judge of answers written by AI assistants."

SINGLE_PROMPT = """Rate the assistant's answer to the user's request on a scale of 1 to 10, judging helpfulness, \
correctness, relevance and clarity. Be strict: a wrong, evasive or off-topic answer gets a low rating \
whatever its length or tone.

[User request]
{prompt}
{reference}
[Assistant answer]
{answer}

First explain your rating in one or two sentences. Then, on the last line, write the rating exactly in the \
form "Rating: [[N]]" with N an integer from 1 to 10."""

PAIRWISE_PROMPT = """Two AI assistants answered the same user request. Decide which answer is better: more \
helpful, correct and harmless. The order in which the answers are shown must not influence you, and length \
only matters where it changes the quality.

[User request]
{prompt}
{reference}
[Answer A]
{answer_a}

[Answer B]
{answer_b}

First compare the answers in one sentence. Then, on the last line, write your verdict exactly as "[[A]]" if \
answer A is better, "[[B]]" if answer B is better, or "[[C]]" if they are equally good."""

RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
RATING_FALLBACK = re.compile(r"rating\s*[:=]\s*(\d+(?:\.\d+)?)", re.IGNORECASE)
VERDICT = re.compile(r"\[\[\s*([ABC])\s*\]\]")


def parse_rating(reply: str) -> float | None:
    """The last ``[[N]]`` (or ``Rating: N``) with 1 <= N <= 10, or ``None``."""
    matches = RATING.findall(reply) or RATING_FALLBACK.findall(reply)
    if not matches:
        return None
    value = float(matches[-1])
    return value if 1 <= value <= 10 else None


def parse_verdict(reply: str) -> str | None:
    """The last ``[[A]]`` / ``[[B]]`` / ``[[C]]`` verdict, or ``None``."""
    matches = VERDICT.findall(reply)
    return matches[-1] if matches else None


def reference_answer(item: EvalItem) -> str | None:
    """The item's reference answer to its first turn: the string, or the first of a per-turn list (MT-Bench's
    hub set); ``None`` when there is none."""
    reference = item.reference
    if isinstance(reference, (list, tuple)):
        reference = reference[0] if reference else None
    return reference if isinstance(reference, str) and reference.strip() else None


def _reference_block(item: EvalItem) -> str:
    reference = reference_answer(item)
    return f"\n[Reference answer]\n{reference}\n" if reference else ""


def single_conversation(prompt: Text, answer: str, reference: str = "") -> list[dict[str, str]]:
    """The chat messages that ask for a 1-10 rating of one answer (:data:`SINGLE_PROMPT`); used by the judge
    and by the ``llm_judge`` score."""
    content = SINGLE_PROMPT.format(prompt=prompt_text(prompt), reference=reference, answer=answer)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]


class OpenAIJudge(Judge):
    """An LLM judge behind an OpenAI-compatible chat API, with prefalign's own prompts (protocol ``prefalign``).

    The prompts and the parsing are methods (``_single_messages``, ``_rating``, ``_pair_messages``, ``_verdict``,
    ``_combine``) that :class:`MTBenchJudge` replaces with FastChat's; sending, caching and counting are shared.

    Args:
        client: the chat client (base URL, model, key, concurrency, retries, cache).
        use_reference: show the benchmark's reference answer to the judge when there is one.
        name: the judge's name in result folders and tables.
        max_unparsable: the largest share of replies without a rating or verdict that an evaluation accepts
            (:meth:`Judge.check_unparsable`).
    """

    def __init__(
        self, client: ChatClient, use_reference: bool = True, name: str = "openai", max_unparsable: float = 0.05
    ) -> None:
        super().__init__(name=name, max_unparsable=max_unparsable)
        self.client = client
        self.use_reference = use_reference
        self._records: list[dict[str, Any]] = []

    def _reference(self, item: EvalItem) -> str:
        return _reference_block(item) if self.use_reference else ""

    def _single_messages(self, item: EvalItem, answer: str) -> tuple[str, list[dict[str, str]]]:
        """The name of the prompt used and the messages asking for a rating of ``answer``."""
        return "prefalign-single", single_conversation(item.prompt, answer, self._reference(item))

    def _rating(self, reply: str) -> float | None:
        return parse_rating(reply)

    def _pair_messages(self, item: EvalItem, first: str, second: str) -> tuple[str, list[dict[str, str]]]:
        """The name of the prompt used and the messages asking which of two answers (``first`` shown as A) is
        better."""
        content = PAIRWISE_PROMPT.format(
            prompt=prompt_text(item.prompt), reference=self._reference(item), answer_a=first, answer_b=second
        )
        return "prefalign-pairwise", [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]

    def _verdict(self, reply: str) -> str | None:
        """``A``, ``B`` or ``C`` (tie), or ``None``."""
        return parse_verdict(reply)

    @staticmethod
    def _combine(forward: float | None, backward: float | None) -> float | None:
        """The item's outcome for A from its two orders' outcomes: the mean of the parsable ones."""
        scores = [score for score in (forward, backward) if score is not None]
        return sum(scores) / len(scores) if scores else None

    def single(self, items: list[EvalItem], answers: list[str]) -> list[float | None]:
        named = [self._single_messages(item, answer) for item, answer in zip(items, answers)]
        replies = self.client.complete_many(
            [messages for _, messages in named], desc="judging (single)", accept=lambda reply: self._rating(reply) is not None
        )
        self.replies["single"] += len(replies)
        ratings = []
        for item, (prompt_name, _), reply in zip(items, named, replies):
            rating = self._rating(reply)
            if rating is None:
                self.unparsable["single"] += 1
            ratings.append(rating)
            self._records.append(
                {"item_id": item.item_id, "kind": "single", "prompt": prompt_name, "reply": reply, "rating": rating}
            )
        return ratings

    def pairwise(self, items: list[EvalItem], answers_a: list[str], answers_b: list[str]) -> list[float | None]:
        named = []
        for item, a, b in zip(items, answers_a, answers_b):
            named.append(self._pair_messages(item, a, b))  # A shown first
            named.append(self._pair_messages(item, b, a))  # the same pair, positions swapped
        replies = self.client.complete_many(
            [messages for _, messages in named],
            desc="judging (pairwise, both orders)",
            accept=lambda reply: self._verdict(reply) is not None,
        )
        self.replies["pairwise"] += len(replies)
        outcomes: list[float | None] = []
        for index, item in enumerate(items):
            forward, backward = self._verdict(replies[2 * index]), self._verdict(replies[2 * index + 1])
            for verdict in (forward, backward):
                if verdict is None:
                    self.unparsable["pairwise"] += 1
            outcome = self._combine(
                None if forward is None else {"A": 1.0, "B": 0.0, "C": 0.5}[forward],
                None if backward is None else {"A": 0.0, "B": 1.0, "C": 0.5}[backward],
            )
            if outcome is None:
                self.unparsable["pairwise_items"] += 1
            outcomes.append(outcome)
            self._records.append(
                {
                    "item_id": item.item_id,
                    "kind": "pairwise",
                    "prompt": named[2 * index][0],
                    "reply_a_first": replies[2 * index],
                    "reply_b_first": replies[2 * index + 1],
                    "verdicts": [forward, backward],
                    "outcome_for_a": outcome,
                }
            )
        return outcomes

    def records(self) -> list[dict[str, Any]]:
        return list(self._records)

    def provenance(self) -> dict[str, Any]:
        return {
            "protocol": "prefalign",
            "judge": type(self).__name__,
            "wording": "prefalign's own prompts (prefalign.evaluation.judges: SINGLE_PROMPT, PAIRWISE_PROMPT)",
            "pairwise": "both orders, the outcome the mean of the parsable ones",
            "judge_model": self.client.describe(),
        }


# FastChat's judge prompts by role: (name, FastChat's type, FastChat's output_format); the second of each pair
# shows the reference answer and serves the categories of NEED_REF_CATS (fastchat/llm_judge/gen_judgment.py)
MT_BENCH_PROMPTS = {
    "single": (("single-v1", "single", "[[rating]]"), ("single-math-v1", "single", "[[rating]]")),
    "pairwise": (("pair-v2", "pairwise", "[[A]]"), ("pair-math-v1", "pairwise", "[[A]]")),
}


class MTBenchJudge(OpenAIJudge):
    """MT-Bench as FastChat (``lm-sys/FastChat`` v0.2.36, ``fastchat/llm_judge``) defines it.

    * Single: FastChat's ``single-v1`` prompt, or ``single-math-v1`` with the item's reference answer for a
      category of FastChat's ``NEED_REF_CATS`` (math, reasoning, coding); the prompt template formatted with
      ``question``, ``answer`` and ``ref_answer_1`` and sent after its ``system_prompt`` (``run_judge_single``);
      the rating is the first match of FastChat's ``one_score_pattern``, else of ``one_score_pattern_backup``
      (:meth:`~prefalign.evaluation.fastchat.FastChatConstants.parse_rating`).
    * Pairwise: ``pair-v2`` / ``pair-math-v1`` (``question``, ``answer_a``, ``answer_b``, ``ref_answer_1``) in
      both orders; a game's winner is the first of ``[[A]]``, ``[[B]]``, ``[[C]]`` (tie) that the judgement
      contains, in that order (``run_judge_pair``); two games that disagree make a tie, as FastChat's
      ``show_result.py`` counts them (a game with no verdict against one with a verdict too). Where both games
      have no verdict the item is unparsable (FastChat would count it, by accident of its code, as a win of the
      second model).
    * Only the first turn is judged (FastChat's ``single-v1``; its ``-multi-turn`` prompts need both turns'
      answers, which the evaluation does not keep): ``bench.turns=all`` is refused.

    The constants come from the installed fschat's source, the prompts from ``prompts_file``
    (:mod:`prefalign.evaluation.fastchat`); both are named in :meth:`provenance`.

    Args:
        client: the chat client.
        prompts_file: FastChat's ``fastchat/llm_judge/data/judge_prompts.jsonl`` (not shipped by fschat; read on
            first use, so that building the judge touches no file).
        use_reference: FastChat's protocol (true): the reference-based prompts for ``NEED_REF_CATS``; false uses
            ``single-v1`` / ``pair-v2`` everywhere, which is not FastChat's protocol.
        name, max_unparsable: see :class:`OpenAIJudge`.
    """

    def __init__(
        self,
        client: ChatClient,
        prompts_file: str | os.PathLike | None = None,
        use_reference: bool = True,
        name: str = "mt_bench",
        max_unparsable: float = 0.05,
    ) -> None:
        super().__init__(client, use_reference=use_reference, name=name, max_unparsable=max_unparsable)
        self.prompts_file = prompts_file
        self._prompts: dict[str, dict[str, Any]] | None = None

    @property
    def constants(self) -> FastChatConstants:
        return fastchat_constants()

    def prompts(self) -> dict[str, dict[str, Any]]:
        """FastChat's judge prompts from ``prompts_file``, checked to hold the four this judge uses."""
        if self._prompts is None:
            if not self.prompts_file:
                raise FileNotFoundError(
                    f"the mt_bench judge needs judge.prompts_file=<path to judge_prompts.jsonl>: {PROMPTS_SOURCE}"
                )
            prompts = load_judge_prompts(self.prompts_file)
            for name, kind, output_format in (spec for specs in MT_BENCH_PROMPTS.values() for spec in specs):
                if name not in prompts:
                    raise ValueError(f"judge.prompts_file={self.prompts_file}: no judge prompt named {name!r} ({PROMPTS_SOURCE})")
                prompt = prompts[name]
                if prompt["type"] != kind or prompt["output_format"] != output_format:
                    raise ValueError(
                        f"judge.prompts_file={self.prompts_file}: prompt {name!r} has type {prompt['type']!r} and "
                        f"output_format {prompt['output_format']!r}; FastChat's has {kind!r} and {output_format!r}"
                    )
            self._prompts = prompts
        return self._prompts

    def uses_reference(self, item: EvalItem) -> bool:
        """Whether the item is judged with its reference answer: its category is in FastChat's ``NEED_REF_CATS``."""
        return self.use_reference and item.category in self.constants.need_ref_cats

    def check_inputs(self, items: list[EvalItem]) -> None:
        self.prompts()
        for item in items:
            prompt = item.prompt
            if isinstance(prompt, list) and sum(message["role"] == "user" for message in prompt) > 1:
                raise ValueError(
                    f"item {item.item_id}: the mt_bench judge grades the first turn (FastChat's single-v1); "
                    "answers to later turns are not kept for its multi-turn prompts: use bench.turns=first"
                )
            if self.uses_reference(item):
                self._reference_of(item)

    def _fill(self, name: str, fields: dict[str, str]) -> tuple[str, list[dict[str, str]]]:
        """FastChat's prompt ``name`` formatted as ``run_judge_single`` / ``run_judge_pair`` do: the template with
        the fields, after the prompt's system prompt."""
        prompt = self.prompts()[name]
        try:
            content = prompt["prompt_template"].format(**fields)
        except (KeyError, IndexError) as error:
            raise ValueError(
                f"judge.prompts_file={self.prompts_file}: prompt {name!r} asks for {error}, which is none of the "
                f"fields FastChat fills ({', '.join(fields)})"
            ) from None
        return name, [{"role": "system", "content": prompt["system_prompt"]}, {"role": "user", "content": content}]

    def _fields(self, item: EvalItem) -> dict[str, str]:
        prompt = item.prompt
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]["content"]
        fields = {"question": prompt_text(prompt)}
        if self.uses_reference(item):
            fields["ref_answer_1"] = self._reference_of(item)
        return fields

    def _reference_of(self, item: EvalItem) -> str:
        """The reference answer FastChat's reference-based prompts show, or an error naming the item."""
        reference = reference_answer(item)
        if reference is None:
            raise ValueError(
                f"item {item.item_id} (category {item.category}) has no reference answer, which FastChat's "
                f"single-math-v1 shows for the categories {', '.join(self.constants.need_ref_cats)}: give the bench "
                "a reference column (bench.reference_column=reference for HuggingFaceH4/mt_bench_prompts)"
            )
        return reference

    def _single_messages(self, item: EvalItem, answer: str) -> tuple[str, list[dict[str, str]]]:
        (default, with_reference) = (spec[0] for spec in MT_BENCH_PROMPTS["single"])
        return self._fill(with_reference if self.uses_reference(item) else default, {**self._fields(item), "answer": answer})

    def _rating(self, reply: str) -> float | None:
        return self.constants.parse_rating(reply)

    def _pair_messages(self, item: EvalItem, first: str, second: str) -> tuple[str, list[dict[str, str]]]:
        (default, with_reference) = (spec[0] for spec in MT_BENCH_PROMPTS["pairwise"])
        fields = {**self._fields(item), "answer_a": first, "answer_b": second}
        return self._fill(with_reference if self.uses_reference(item) else default, fields)

    def _verdict(self, reply: str) -> str | None:
        for verdict in ("A", "B", "C"):  # FastChat's order: a judgement naming [[A]] and [[B]] is an A
            if f"[[{verdict}]]" in reply:
                return verdict
        return None

    @staticmethod
    def _combine(forward: float | None, backward: float | None) -> float | None:
        if forward is None and backward is None:
            return None
        return forward if forward == backward else 0.5  # inconsistent games are a tie (FastChat's show_result.py)

    def provenance(self) -> dict[str, Any]:
        path = self.prompts_file
        return {
            "protocol": "mt_bench",
            "judge": type(self).__name__,
            "source": "FastChat (lm-sys/FastChat) fastchat/llm_judge: common.py, gen_judgment.py, show_result.py",
            "fastchat": self.constants.provenance(),
            "need_ref_cats": list(self.constants.need_ref_cats) if self.use_reference else [],
            "prompts": {role: [spec[0] for spec in specs] for role, specs in MT_BENCH_PROMPTS.items()},
            "prompts_file": str(path) if path else None,
            "prompts_sha256": file_digest(path) if path and os.path.isfile(os.path.expanduser(path)) else None,
            "judge_model": self.client.describe(),
        }


class ArenaHardJudge(OpenAIJudge):
    """Arena-Hard as arena-hard-auto (``lmarena/arena-hard-auto``, v0.1) defines it (:mod:`prefalign.evaluation.arena`).

    Pairwise: every prompt is judged in two games, the answers in both orders; the judge writes its own answer,
    then ends with one of five verdicts; a game without any verdict label gets follow-up turns asking it to
    finish, up to ``judgment_attempts`` replies in all, each reply appended to the judgement after a newline (as
    ``gen_judgment.py`` does). Each game gives battles (a strong verdict ``strong_weight``, a weak one or a tie
    one, an unparsable game none); WinRate is the share of battles won, ties half, with ``bootstrap_resamples``
    resamples of the battles (:func:`~prefalign.evaluation.arena.battle_win_rate`), not
    ``generation.bootstrap_resamples``. An item's pairwise outcome is its share of battles won.

    Single: arena-hard-auto defines no single-answer grading; the 1-10 Single uses prefalign's prompt
    (:class:`OpenAIJudge`), as :meth:`provenance` says.

    The wording: with ``arena_hard_config`` (arena-hard-auto's ``config/judge_config.yaml``) its ``system_prompt``
    and ``prompt_template`` (the authors' wording; the template's ``{question_1}``, ``{answer_1}``,
    ``{answer_2}`` filled, each template a user message); without it prefalign's own wording of the same
    protocol (:data:`~prefalign.evaluation.arena.PREFALIGN_WORDING`). The follow-up turn is prefalign's wording
    either way. Sampling settings are the client's (the config file's own are not read).

    Args:
        client: the chat client.
        arena_hard_config: arena-hard-auto's judge config file, or ``None`` for prefalign's wording.
        judgment_attempts: replies per game at most (arena-hard-auto's ``number_of_judgment_attempts``).
        strong_weight: battles a strong verdict counts for (arena-hard-auto's ``--weight``).
        bootstrap_resamples: bootstrap resamples of the battles (arena-hard-auto's ``--num-rounds``).
        use_reference: show the item's reference answer (``{ref_answer_1}`` of a template that asks for it, and
            the Single prompt); Arena-Hard's prompts have none.
        name, max_unparsable: see :class:`OpenAIJudge`.
    """

    def __init__(
        self,
        client: ChatClient,
        arena_hard_config: str | os.PathLike | None = None,
        judgment_attempts: int = 2,
        strong_weight: int = 3,
        bootstrap_resamples: int = 100,
        use_reference: bool = True,
        name: str = "arena_hard",
        max_unparsable: float = 0.05,
    ) -> None:
        super().__init__(client, use_reference=use_reference, name=name, max_unparsable=max_unparsable)
        for key, value in (("judgment_attempts", judgment_attempts), ("strong_weight", strong_weight),
                           ("bootstrap_resamples", bootstrap_resamples)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"judge.{key} must be a whole number >= 1, got {value!r}")
        self.arena_hard_config = arena_hard_config
        self.judgment_attempts = judgment_attempts
        self.strong_weight = strong_weight
        self.bootstrap_resamples = bootstrap_resamples
        self._wording: arena.Wording | None = None

    def wording(self) -> arena.Wording:
        """The system prompt and templates: the authors' from ``arena_hard_config``, else prefalign's."""
        if self._wording is None:
            self._wording = arena.load_judge_config(self.arena_hard_config) if self.arena_hard_config else arena.PREFALIGN_WORDING
        return self._wording

    def check_inputs(self, items: list[EvalItem]) -> None:
        self.wording()

    def _game_messages(self, item: EvalItem, first: str, second: str) -> list[dict[str, str]]:
        """One game's conversation: ``first`` shown as Assistant A."""
        wording = self.wording()
        fields = {"question_1": prompt_text(item.prompt), "answer_1": first, "answer_2": second}
        reference = reference_answer(item) if self.use_reference else None
        if reference:
            fields["ref_answer_1"] = reference
        messages = [{"role": "system", "content": wording.system_prompt}]
        for template in wording.prompt_templates:
            try:
                messages.append({"role": "user", "content": template.format(**fields)})
            except (KeyError, IndexError) as error:
                raise ValueError(
                    f"{wording.source}: prompt_template asks for {error}, which is none of the fields prefalign "
                    f"fills ({', '.join(fields)})"
                ) from None
        return messages

    def _judge_games(self, conversations: list[list[dict[str, str]]]) -> list[tuple[str, int]]:
        """Each game's judgement (every reply after a newline, as arena-hard-auto joins them) and the replies it
        took. A reply is cached when it ends the game with a verdict, or (not the last attempt) holds no label at
        all, so that a rerun resumes from it; a reply with conflicting or unknown labels is not."""
        attempts = self.judgment_attempts

        def acceptable(attempt: int) -> Callable[[str], bool]:
            def accept(reply: str) -> bool:
                if arena.parse_verdict(reply) is not None:
                    return True
                return attempt < attempts and bool(reply) and arena.needs_another_attempt(reply)

            return accept

        replies = self.client.complete_many(conversations, desc="judging (arena-hard, both orders)", accept=acceptable(1))
        judgments = ["\n" + reply for reply in replies]
        histories = [[*messages, {"role": "assistant", "content": reply}] for messages, reply in zip(conversations, replies)]
        used = [1] * len(conversations)
        for attempt in range(2, attempts + 1):
            pending = [i for i, judgment in enumerate(judgments) if arena.needs_another_attempt(judgment)]
            if not pending:
                break
            follow_ups = [[*histories[i], {"role": "user", "content": arena.FOLLOW_UP}] for i in pending]
            more = self.client.complete_many(follow_ups, desc=f"judging (arena-hard, attempt {attempt})", accept=acceptable(attempt))
            for i, messages, reply in zip(pending, follow_ups, more):
                judgments[i] += "\n" + reply
                histories[i] = [*messages, {"role": "assistant", "content": reply}]
                used[i] = attempt
        return list(zip(judgments, used))

    def pairwise_battles(self, items: list[EvalItem], answers_a: list[str], answers_b: list[str]) -> list[list[float]]:
        conversations = []
        for item, a, b in zip(items, answers_a, answers_b):
            conversations.append(self._game_messages(item, a, b))  # game 1: A shown first
            conversations.append(self._game_messages(item, b, a))  # game 2: B shown first
        games = self._judge_games(conversations)
        self.replies["pairwise"] += len(games)
        battles: list[list[float]] = []
        for index, item in enumerate(items):
            verdicts = [arena.parse_verdict(judgment) for judgment, _ in games[2 * index : 2 * index + 2]]
            self.unparsable["pairwise"] += sum(verdict is None for verdict in verdicts)
            item_battles = arena.game_battles(verdicts[0], True, self.strong_weight) + arena.game_battles(
                verdicts[1], False, self.strong_weight
            )
            if not item_battles:
                self.unparsable["pairwise_items"] += 1
            battles.append(item_battles)
            self._records.append(
                {
                    "item_id": item.item_id,
                    "kind": "pairwise",
                    "prompt": self.wording().name,
                    "games": [
                        {"shown_first": shown, "judgment": judgment, "verdict": verdict, "attempts": used}
                        for shown, (judgment, used), verdict in zip("ab", games[2 * index : 2 * index + 2], verdicts)
                    ],
                    "battles_for_a": item_battles,
                    "outcome_for_a": battle_outcomes([item_battles])[0],
                }
            )
        return battles

    def pairwise(self, items: list[EvalItem], answers_a: list[str], answers_b: list[str]) -> list[float | None]:
        return battle_outcomes(self.pairwise_battles(items, answers_a, answers_b))

    def win_rate(self, battles: list[list[float]], resamples: int = 1000, seed: int = 0) -> dict[str, Any]:
        return arena.battle_win_rate(battles, resamples=self.bootstrap_resamples, seed=seed)

    def provenance(self) -> dict[str, Any]:
        wording = self.wording()
        return {
            "protocol": "arena_hard",
            "judge": type(self).__name__,
            "source": "arena-hard-auto (lmarena/arena-hard-auto) v0.1: gen_judgment.py (two games, get_score, "
            "number_of_judgment_attempts), show_result.py (battles, strong verdicts weighted, bootstrap of battles)",
            "wording": wording.describe(),
            "single": "prefalign's 1-10 prompt (arena-hard-auto defines no single-answer grading)",
            "judgment_attempts": self.judgment_attempts,
            "strong_weight": self.strong_weight,
            "bootstrap_resamples": self.bootstrap_resamples,
            "resampled": "battles",
            "judge_model": self.client.describe(),
        }
