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
  :attr:`Judge.unparsable` and excluded from the means, never counted as wins.

Pairwise outcomes are from the point of view of answer A: 1 (A better), 0.5 (tie), 0 (B better), ``None``
(unparsable); with two orders the outcome is the mean of the parsable ones.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from prefalign.data.records import Text
from prefalign.evaluation.client import ChatClient
from prefalign.rewards import RewardModel


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
    """Base class; ``unparsable`` counts replies that gave no rating or verdict, by kind."""

    name: str = "judge"
    unparsable: Counter = field(default_factory=Counter)

    def single(self, items: list[EvalItem], answers: list[str]) -> list[float | None]:
        raise NotImplementedError

    def pairwise(self, items: list[EvalItem], answers_a: list[str], answers_b: list[str]) -> list[float | None]:
        raise NotImplementedError

    def records(self) -> list[dict[str, Any]]:
        """Raw judgements of the last calls, for the generations file (LLM judges)."""
        return []


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
    """

    def __init__(self, client: ChatClient, use_reference: bool = True, name: str = "openai") -> None:
        super().__init__(name=name)
        self.client = client
        self.use_reference = use_reference
        self._records: list[dict[str, Any]] = []

    def _reference(self, item: EvalItem) -> str:
        return _reference_block(item) if self.use_reference else ""

    def single(self, items: list[EvalItem], answers: list[str]) -> list[float | None]:
        conversations = [
            single_conversation(item.prompt, answer, self._reference(item)) for item, answer in zip(items, answers)
        ]
        replies = self.client.complete_many(conversations, desc="judging (single)")
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
        replies = self.client.complete_many(conversations, desc="judging (pairwise, both orders)")
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
