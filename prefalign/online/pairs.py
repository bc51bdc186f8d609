"""Preference pairs from rated responses (``conf/pairs/``): one rule per class, each over one prompt's rewards.

Every rule sees the rewards ``r_1..r_k`` of one prompt's responses and returns ordered ``(chosen, rejected)``
index pairs. Responses with no reward, equal rewards and identical texts never make a pair, and every such
candidate is counted in the report (:func:`build_pairs`):

* :class:`BestWorst` (``pairs=best_worst``): the highest- against the lowest-rewarded response, one pair per
  prompt (the BeeS paper's iterative DPO, after Xiong et al. 2024 and Dong et al. 2024, "RLHF Workflow");
* :class:`RSDPO` (``pairs=rs_dpo``): every ordered pair ``(j, l)`` with ``sigmoid((r_j - r_l) / tau) > eta``
  (Khaki et al. 2024, "RS-DPO", the reward-gap condition of its Algorithm 1);
* :class:`RewardGap` (``pairs=reward_gap``): every ordered pair with ``r_j - r_l > min_gap``;
* :class:`CurriculumPairs` (``pairs=curriculum``): Curri-DPO's pairs (Pattnaik et al. 2024): the best response
  against each lower-rated one, the pair with the largest gap in stage 1 (easiest), the next in stage 2, and so
  on (the ``stage`` of each pair's metadata), for training the stages one after the other.

The output is an ordinary pairs file (``pairs.jsonl``, the format of :class:`~prefalign.data.sources.LocalSource`):
``score_chosen`` / ``score_rejected`` hold the two rewards, so the ``annotator`` scorer reads the reward margin,
and the metadata holds the prompt, the two sample indices, the rule, the curriculum stage and, with a checker, the
ground truth the test bed measures selection against (``chosen_correct``, ``rejected_correct``,
``label_flipped``: the chosen response is wrong and the rejected one right, ``ambiguous``: both equally right).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

from prefalign.data.records import content_id


class PairRule:
    """Base class: ``pairs(rewards)`` gives the ordered (chosen, rejected) indices of one prompt's responses.

    ``rewards`` holds only responses that have a reward and a distinct text; counts of what the rule turned
    down go to ``counts``.
    """

    name = "pairs"

    def pairs(self, rewards: list[float], counts: Counter) -> list[tuple[int, int]]:
        raise NotImplementedError

    def stage(self, index: int) -> int | None:
        """The curriculum stage of the ``index``-th pair of a prompt (rules without stages: ``None``)."""
        return None

    def describe(self) -> dict[str, Any]:
        return {"rule": self.name, **{key: value for key, value in vars(self).items() if key != "name"}}


def ordered_gaps(rewards: list[float], counts: Counter) -> list[tuple[int, int]]:
    """Every ordered pair ``(j, l)`` with ``r_j > r_l``; unordered pairs of equal rewards are counted as ties."""
    pairs = []
    for j in range(len(rewards)):
        for l in range(j + 1, len(rewards)):
            if rewards[j] == rewards[l]:
                counts["equal_reward"] += 1
            elif rewards[j] > rewards[l]:
                pairs.append((j, l))
            else:
                pairs.append((l, j))
    return pairs


class BestWorst(PairRule):
    """The best against the worst response of each prompt; a prompt whose rewards are all equal gives no pair.

    Among responses tied for the best (or the worst) reward, the first sample is taken.
    """

    name = "best_worst"

    def pairs(self, rewards: list[float], counts: Counter) -> list[tuple[int, int]]:
        if len(rewards) < 2:
            return []
        best = max(range(len(rewards)), key=lambda i: (rewards[i], -i))
        worst = min(range(len(rewards)), key=lambda i: (rewards[i], i))
        if rewards[best] == rewards[worst]:
            counts["equal_reward"] += 1
            return []
        return [(best, worst)]


class RSDPO(PairRule):
    """RS-DPO's pairs: every ordered ``(j, l)`` with ``sigmoid((r_j - r_l) / tau) > eta``.

    Khaki et al. 2024, "RS-DPO: A Hybrid Rejection Sampling and Direct Preference Optimization Method", Algorithm 1
    (the reward gap ``P = 1 / (1 + exp((r_l - r_j) / tau))`` compared with the threshold ``eta``). Equal rewards
    give ``sigmoid(0) = 0.5`` and are never a pair, even with ``eta < 0.5``.

    Args:
        tau: the temperature of the reward gap, in reward units.
        eta: the threshold on ``sigmoid(gap / tau)``, in (0, 1).
    """

    name = "rs_dpo"

    def __init__(self, tau: float = 1.0, eta: float = 0.85) -> None:
        if tau <= 0:
            raise ValueError(f"pairs.tau must be > 0, got {tau}")
        if not 0 < eta < 1:
            raise ValueError(f"pairs.eta must be in (0, 1), got {eta}")
        self.tau = tau
        self.eta = eta

    def pairs(self, rewards: list[float], counts: Counter) -> list[tuple[int, int]]:
        kept = []
        for j, l in ordered_gaps(rewards, counts):
            if 1.0 / (1.0 + math.exp(-(rewards[j] - rewards[l]) / self.tau)) > self.eta:
                kept.append((j, l))
            else:
                counts["below_threshold"] += 1
        return kept


class RewardGap(PairRule):
    """Every ordered pair ``(j, l)`` whose reward gap ``r_j - r_l`` exceeds ``min_gap`` (0: all unequal pairs).

    Args:
        min_gap: the smallest gap kept (exclusive), in reward units, >= 0.
    """

    name = "reward_gap"

    def __init__(self, min_gap: float = 0.0) -> None:
        if min_gap < 0:
            raise ValueError(f"pairs.min_gap must be >= 0, got {min_gap}")
        self.min_gap = min_gap

    def pairs(self, rewards: list[float], counts: Counter) -> list[tuple[int, int]]:
        kept = []
        for j, l in ordered_gaps(rewards, counts):
            if rewards[j] - rewards[l] > self.min_gap:
                kept.append((j, l))
            else:
                counts["below_threshold"] += 1
        return kept


class CurriculumPairs(PairRule):
    """Curri-DPO's pairs: the best response against every lower-rated one, staged from easy to hard by gap.

    Pattnaik et al. 2024, "Curry-DPO: Enhancing Alignment using Curriculum Learning & Ranked Preferences" (Sec. 3):
    with the responses of a prompt ranked by rating, the highest-rated one is the chosen response of every pair and
    each lower-rated one a rejected response; the pair with the largest rating gap is the easiest and comes in
    stage 1, the next-largest in stage 2, and so on (ties in gap keep the sample order). Equal ratings give no pair.

    Args:
        max_stages: keep at most this many pairs per prompt (the easiest ones); ``null``: all ``k - 1``.
    """

    name = "curriculum"

    def __init__(self, max_stages: int | None = None) -> None:
        if max_stages is not None and max_stages < 1:
            raise ValueError(f"pairs.max_stages must be >= 1 or null, got {max_stages}")
        self.max_stages = max_stages

    def pairs(self, rewards: list[float], counts: Counter) -> list[tuple[int, int]]:
        if len(rewards) < 2:
            return []
        best = max(range(len(rewards)), key=lambda i: (rewards[i], -i))
        others = [i for i in range(len(rewards)) if i != best]
        ties = [i for i in others if rewards[i] == rewards[best]]
        if ties:
            counts["equal_reward"] += len(ties)
        lower = sorted((i for i in others if rewards[i] < rewards[best]), key=lambda i: (rewards[i], i))
        if self.max_stages is not None and len(lower) > self.max_stages:
            counts["beyond_max_stages"] += len(lower) - self.max_stages
            lower = lower[: self.max_stages]
        return [(best, i) for i in lower]

    def stage(self, index: int) -> int | None:
        return index + 1


def build_pairs(rows: list[dict[str, Any]], rule: PairRule, pair_prefix: str = "") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Pairs (rows of a pairs file, module docstring) from the rows of a responses file, and a report of counts.

    Args:
        rows: ``responses.jsonl`` rows (``prompt_id``, ``prompt``, ``sample``, ``response``, ``reward``, and
            optionally ``correct``, ``family``, ``checker``).
        rule: the pair rule.
        pair_prefix: prepended to every ``pair_id`` (``<prefix><prompt_id>-s<chosen>-s<rejected>``), e.g. the round
            of an iterative run, so that pair ids stay unique across files.
    """
    by_prompt: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for index, row in enumerate(rows):
        for key in ("prompt_id", "prompt", "sample", "response", "reward"):
            if key not in row:
                raise ValueError(f"responses row {index}: missing key '{key}'")
        by_prompt[row["prompt_id"]].append(row)
    counts: Counter = Counter()
    pairs: list[dict[str, Any]] = []
    prompts_without_pair = 0
    for prompt_id, responses in by_prompt.items():
        usable: list[dict[str, Any]] = []
        seen: set[str] = set()
        for row in sorted(responses, key=lambda r: r["sample"]):
            if row["reward"] is None:
                counts["no_reward"] += 1
            elif row["response"] in seen:  # the same text twice is no preference, whatever the two ratings
                counts["duplicate_response"] += 1
            else:
                seen.add(row["response"])
                usable.append(row)
        chosen_rejected = rule.pairs([float(row["reward"]) for row in usable], counts)
        if not chosen_rejected:
            prompts_without_pair += 1
        for index, (j, l) in enumerate(chosen_rejected):
            pairs.append(pair_row(usable[j], usable[l], rule, rule.stage(index), pair_prefix))
    stages = Counter(pair["metadata"]["stage"] for pair in pairs if pair["metadata"]["stage"] is not None)
    report = {
        "rule": rule.describe(),
        "prompts": len(by_prompt),
        "responses": len(rows),
        "pairs": len(pairs),
        "prompts_without_pair": prompts_without_pair,
        "dropped": {key: counts[key] for key in sorted(counts)},
        "stages": {str(stage): stages[stage] for stage in sorted(stages)},
        "ground_truth": ground_truth([pair["metadata"] for pair in pairs]),
    }
    return pairs, report


def ground_truth(metadata: list[dict[str, Any]]) -> dict[str, int] | None:
    """How many of these pairs (their ``metadata``) prefer a wrong answer (``label_flipped``) or pair two answers
    both right or both wrong (``ambiguous``), among those whose answers a checker judged; None if none was."""
    known = [m for m in metadata if m.get("chosen_correct") is not None]
    if not known:
        return None
    return {
        "pairs": len(known),
        "label_flipped": sum(m["label_flipped"] for m in known),
        "ambiguous": sum(m["ambiguous"] for m in known),
    }


def pair_row(chosen: dict[str, Any], rejected: dict[str, Any], rule: PairRule, stage: int | None, prefix: str) -> dict[str, Any]:
    """One pairs-file row from two rated responses of a prompt."""
    metadata: dict[str, Any] = {
        "prompt_id": chosen["prompt_id"],
        "family": chosen.get("family"),
        "checker": chosen.get("checker"),
        "chosen_sample": chosen["sample"],
        "rejected_sample": rejected["sample"],
        "rule": rule.name,
        "stage": stage,
        "content_id": content_id(chosen["prompt"], chosen["response"], rejected["response"]),
    }
    if chosen.get("correct") is not None and rejected.get("correct") is not None:
        metadata.update({
            "chosen_correct": bool(chosen["correct"]),
            "rejected_correct": bool(rejected["correct"]),
            "label_flipped": not chosen["correct"] and bool(rejected["correct"]),
            "ambiguous": bool(chosen["correct"]) == bool(rejected["correct"]),
        })
    return {
        "pair_id": f"{prefix}{chosen['prompt_id']}-s{chosen['sample']}-s{rejected['sample']}",
        "prompt": chosen["prompt"],
        "chosen": chosen["response"],
        "rejected": rejected["response"],
        "score_chosen": float(chosen["reward"]),
        "score_rejected": float(rejected["reward"]),
        "metadata": metadata,
    }
