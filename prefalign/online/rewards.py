"""Reward sources for sampled responses: ``r(x, y)`` of each response to a prompt (``conf/reward/``).

* :class:`VerifierReward` (``reward=verifier``): the built-in checkers, an exact reward (1 correct, 0 wrong);
* :class:`AnnotatorReward` (``reward=annotator``): the built-in set's simulated noisy rater applied to new
  answers through their checker, a 1-10 rating drawn from the distributions of the shipped ``score_chosen`` /
  ``score_rejected`` (:data:`prefalign.data.builtin.build.ANNOTATOR`), seeded per response so that a response
  gets the same rating whenever it is rated;
* :class:`JudgeReward` (``reward=reward_model``, ``reward=llm_judge``): any :class:`~prefalign.evaluation.judges.Judge`
  of the evaluation: a Hugging Face sequence-classification reward model (its raw reward) or the
  OpenAI-compatible LLM judge (its 1-10 rating; unparsable replies give no reward, and such a response is left
  out of the pairs).

Every source returns, per response, the reward (``None`` when there is none) and whether the response is
correct by its checker (``None`` without a checker), the ground truth the test bed measures pairs against.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from prefalign.evaluation.judges import EvalItem, Judge, VerifierJudge


def checker_outcomes(items: list[EvalItem], responses: list[str]) -> list[bool | None]:
    """Whether each response is correct by its prompt's checker (``None`` for a prompt without one)."""
    return [VerifierJudge.correct(item, response) if item.checker is not None else None for item, response in zip(items, responses)]


class RewardSource:
    """Base class. ``name`` is the source's name in the responses file and the reports."""

    name = "reward"

    def rewards(self, items: list[EvalItem], responses: list[str], samples: list[int]) -> list[float | None]:
        """The reward of each ``responses[i]`` to ``items[i]`` (``samples[i]``: its sample index)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "class": type(self).__name__}


class VerifierReward(RewardSource):
    """The built-in checkers: 1.0 for a correct response, 0.0 for a wrong one (an exact reward)."""

    def __init__(self, name: str = "verifier") -> None:
        self.name = name

    def rewards(self, items: list[EvalItem], responses: list[str], samples: list[int]) -> list[float | None]:
        missing = [item.item_id for item in items if item.checker is None]
        if missing:
            raise ValueError(f"reward=verifier needs the prompts' checkers; prompt {missing[0]} has none (use prompts=builtin_*)")
        return [1.0 if correct else 0.0 for correct in checker_outcomes(items, responses)]


def response_seed(seed: int, item_id: str, sample: int, response: str) -> int:
    """A seed of its own for one response (64 bits of a SHA-256 of the seed, prompt, sample index and text)."""
    digest = hashlib.sha256(f"{seed}\0{item_id}\0{sample}\0{response}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


class AnnotatorReward(RewardSource):
    """The built-in set's simulated annotator on new answers: a 1-10 rating around 7 (correct) or 4 (wrong).

    The rating is ``round(N(mean, 1.5))`` clipped to [1, 10], the model of the shipped ratings
    (:func:`prefalign.data.builtin.build.annotator_scores`), drawn from a generator seeded by :func:`response_seed`,
    so the rating of a response depends only on the seed, the prompt, its sample index and its text.

    Args:
        seed: the annotator's seed.
        name: the source's name.
    """

    def __init__(self, seed: int = 0, name: str = "annotator") -> None:
        self.seed = seed
        self.name = name

    def rewards(self, items: list[EvalItem], responses: list[str], samples: list[int]) -> list[float | None]:
        from prefalign.data.builtin.build import annotator_scores

        missing = [item.item_id for item in items if item.checker is None]
        if missing:
            raise ValueError(f"reward=annotator rates through the checkers; prompt {missing[0]} has none (use prompts=builtin_*)")
        ratings: list[float | None] = []
        for item, response, sample, correct in zip(items, responses, samples, checker_outcomes(items, responses)):
            rng = np.random.default_rng(response_seed(self.seed, item.item_id, sample, response))
            ratings.append(float(annotator_scores(1, [bool(correct)], rng)[0]))
        return ratings

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "seed": self.seed}


class JudgeReward(RewardSource):
    """A judge's Single score as the reward: a reward model's raw reward, or an LLM judge's 1-10 rating.

    Args:
        judge: a :class:`~prefalign.evaluation.judges.Judge` (``conf/judge/`` options, e.g. ``reward_model`` or
            ``openai``); an unparsable LLM reply gives ``None``, and more of them than the judge's
            ``max_unparsable`` share fails the stage.
        name: the source's name.
    """

    def __init__(self, judge: Judge, name: str = "judge") -> None:
        self.judge = judge
        self.name = name

    def rewards(self, items: list[EvalItem], responses: list[str], samples: list[int]) -> list[float | None]:
        values = self.judge.single(items, responses)
        self.judge.check_unparsable()
        return [None if value is None else float(value) for value in values]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "judge": type(self.judge).__name__, "judge_name": self.judge.name}
