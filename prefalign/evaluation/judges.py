"""Judges: a 1-10 "Single" score per answer and pairwise verdicts between two answers.

* :class:`VerifierJudge` uses the built-in data set's checkers: a correct answer beats an incorrect one, equal
  outcomes tie. Single maps correct to 10 and incorrect to 1 (so a Single mean of ``1 + 9 a`` means accuracy
  ``a``).
* :class:`RewardModelJudge`: any Hugging Face sequence-classification reward model; Single is its raw reward
  (not on a 1-10 scale), the pairwise verdict is which answer it rewards more.
* :class:`OpenAIJudge`: an LLM judge behind an OpenAI-compatible API (GPT-4-class models or a local vLLM
  server), with single-answer grading 1-10 and pairwise comparison; each pair is judged in both orders to
  cancel position bias. Prompts were written for this project in the spirit of the papers' appendix (MT-Bench
  style ``[[rating]]`` / ``[[A]]`` verdict markers). Replies without a parsable rating or verdict are counted in
  :attr:`Judge.unparsable` and excluded from the means, never counted as wins; they are not cached, so a rerun
  asks for them again, and an evaluation where more than ``max_unparsable`` of the replies could not be parsed
  fails (:meth:`Judge.check_unparsable`) instead of reporting means of what is left.

Pairwise outcomes are from the point of view of answer A: 1 (A better), 0.5 (tie), 0 (B better), ``None``
(unparsable); with two orders the outcome is the mean of the parsable ones.
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from prefalign.data.records import Text
from prefalign.evaluation.client import ChatClient
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
    reference: str | None = None
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


def _reference_block(item: EvalItem) -> str:
    return f"\n[Reference answer]\n{item.reference}\n" if item.reference else ""


def single_conversation(prompt: Text, answer: str, reference: str = "") -> list[dict[str, str]]:
    """The chat messages that ask for a 1-10 rating of one answer (:data:`SINGLE_PROMPT`); used by the judge
    and by the ``llm_judge`` score."""
    content = SINGLE_PROMPT.format(prompt=prompt_text(prompt), reference=reference, answer=answer)
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]


class OpenAIJudge(Judge):
    """An LLM judge behind an OpenAI-compatible chat API.

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

    def single(self, items: list[EvalItem], answers: list[str]) -> list[float | None]:
        conversations = [
            single_conversation(item.prompt, answer, self._reference(item)) for item, answer in zip(items, answers)
        ]
        replies = self.client.complete_many(
            conversations, desc="judging (single)", accept=lambda reply: parse_rating(reply) is not None
        )
        self.replies["single"] += len(replies)
        ratings = []
        for item, reply in zip(items, replies):
            rating = parse_rating(reply)
            if rating is None:
                self.unparsable["single"] += 1
            ratings.append(rating)
            self._records.append({"item_id": item.item_id, "kind": "single", "reply": reply, "rating": rating})
        return ratings

    def pairwise(self, items: list[EvalItem], answers_a: list[str], answers_b: list[str]) -> list[float | None]:
        def conversation(item: EvalItem, first: str, second: str) -> list[dict[str, str]]:
            content = PAIRWISE_PROMPT.format(
                prompt=prompt_text(item.prompt), reference=self._reference(item), answer_a=first, answer_b=second
            )
            return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": content}]

        conversations = []
        for item, a, b in zip(items, answers_a, answers_b):
            conversations.append(conversation(item, a, b))  # A shown first
            conversations.append(conversation(item, b, a))  # the same pair, positions swapped
        replies = self.client.complete_many(
            conversations, desc="judging (pairwise, both orders)", accept=lambda reply: parse_verdict(reply) is not None
        )
        self.replies["pairwise"] += len(replies)
        outcomes: list[float | None] = []
        for index, item in enumerate(items):
            forward, backward = parse_verdict(replies[2 * index]), parse_verdict(replies[2 * index + 1])
            scores = []
            if forward is None:
                self.unparsable["pairwise"] += 1
            else:
                scores.append({"A": 1.0, "B": 0.0, "C": 0.5}[forward])
            if backward is None:
                self.unparsable["pairwise"] += 1
            else:
                scores.append({"A": 0.0, "B": 1.0, "C": 0.5}[backward])
            outcome = sum(scores) / len(scores) if scores else None
            if outcome is None:
                self.unparsable["pairwise_items"] += 1
            outcomes.append(outcome)
            self._records.append(
                {
                    "item_id": item.item_id,
                    "kind": "pairwise",
                    "reply_a_first": replies[2 * index],
                    "reply_b_first": replies[2 * index + 1],
                    "verdicts": [forward, backward],
                    "outcome_for_a": outcome,
                }
            )
        return outcomes

    def records(self) -> list[dict[str, Any]]:
        return list(self._records)
