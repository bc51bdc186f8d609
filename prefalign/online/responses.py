"""Responses and rewards for a prompt set: ``k`` sampled responses per prompt, each scored by a reward source.

The work is cut into shards of ``shard_size`` prompts. A shard's responses are generated with
:func:`~prefalign.evaluation.generation.generate_answers` (every batch seeded from the shard's seed and its
position), its ``k`` copies of each prompt side by side, and written atomically as one file; its rewards are
written as a second file, under a key of their own. A run that stops midway resumes at the first shard without a
file, and produces the responses an uninterrupted run with the same settings produces: a shard's seed is
``seed + 1_000_003 * shard`` whatever ran before it. Changing only the reward source reuses the responses.

Cache layout (``<cache_dir>``, keys of :func:`responses_key` and :func:`rewards_key`)::

    responses/<key>/shard-00000.jsonl        prompt_id, sample, response of each of the shard's prompts x k
    rewards/<key>-<reward key>/shard-00000.json   the shard's rewards and checker outcomes, in the same order

Under a launcher (``torchrun ... sample.py``) every process generates its share of each shard's batches
(:func:`~prefalign.evaluation.generation.generate_answers`), rank 0 computes the rewards and writes every file.

The stage's output, ``responses.jsonl``, holds one row per response::

    {"prompt_id", "prompt", "sample", "response", "reward", "correct", "family", "checker",
     "provenance": {"policy", "shard", "seed", "reward"}}

``correct`` is the checker's verdict (``null`` without a checker): ground truth for the analyses, never read by
the pair rules. ``reward`` is ``null`` where the source gave none (an unparsable LLM-judge reply).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from prefalign import distributed
from prefalign.atomic import write_json, write_jsonl
from prefalign.data.sources import read_rows
from prefalign.evaluation.judges import EvalItem
from prefalign.keys import content_key
from prefalign.online.rewards import RewardSource, checker_outcomes

log = logging.getLogger(__name__)

# the seeds of two shards are this far apart (a prime, so that shard seeds never meet a batch offset pattern)
SHARD_SEED_STRIDE = 1_000_003

@dataclass
class SamplingSettings:
    """How responses are sampled (every field is part of the responses' cache key)."""

    samples_per_prompt: int = 4
    temperature: float = 0.7
    top_p: float = 1.0
    max_new_tokens: int = 48
    batch_size: int = 32
    seed: int = 0
    shard_size: int = 64

    def validate(self) -> None:
        if self.samples_per_prompt < 2:
            raise ValueError(f"samples_per_prompt must be at least 2 to build pairs, got {self.samples_per_prompt}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0: greedy decoding gives {self.samples_per_prompt} equal responses")
        if self.shard_size <= 0 or self.batch_size <= 0 or self.max_new_tokens <= 0:
            raise ValueError("shard_size, batch_size and max_new_tokens must be positive")


def items_key(items: list[EvalItem]) -> str:
    """Identifies a prompt set: ids, prompts and checkers."""
    return content_key([[item.item_id, item.prompt, item.checker] for item in items])


def responses_key(policy: str, items: list[EvalItem], settings: SamplingSettings, rendering: dict[str, Any]) -> str:
    """The cache key of sampled responses: the policy's identity, the prompt set, the sampling settings and the
    prompt rendering (``rendering``: chat template use and prompt truncation)."""
    return content_key("responses-v1", policy, items_key(items), vars(settings), rendering)


def rewards_key(reward: RewardSource, reward_settings: dict[str, Any]) -> str:
    """The cache key of a reward source's rewards (its resolved config, ``reward_settings``)."""
    return content_key("rewards-v1", type(reward).__name__, reward_settings)


def shard_seed(seed: int, shard: int) -> int:
    return seed + SHARD_SEED_STRIDE * shard


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The rows of a JSON Lines file (:func:`prefalign.data.sources.read_rows`: a bad line is named)."""
    return [row for _, row in read_rows(path)]


def sample_shards(
    items: list[EvalItem],
    generate: Callable[[list[Any], int], list[str]],
    settings: SamplingSettings,
    responses_dir: Path,
    write: bool = True,
) -> list[list[dict[str, Any]]]:
    """Every shard's responses, generated where its file is missing (and then written, when ``write``).

    Args:
        items: the prompts.
        generate: ``generate(prompts, seed)`` returns one sampled response per prompt, batch seeds derived from
            ``seed`` (:func:`prefalign.evaluation.generation.generate_answers` with the sampling settings).
        settings: the sampling settings.
        responses_dir: the cache entry (:func:`responses_key`).
        write: write the shard files (rank 0 under a launcher; every rank generates its share of each shard).
    """
    settings.validate()
    k, size = settings.samples_per_prompt, settings.shard_size
    starts = list(range(0, len(items), size))
    shards = []
    for shard, start in enumerate(tqdm(starts, desc="sampling shards", dynamic_ncols=True, leave=False)):
        path = responses_dir / f"shard-{shard:05d}.jsonl"
        if path.exists():
            shards.append(read_jsonl(path))
            continue
        chunk = items[start : start + size]
        # the k copies of a prompt side by side: one batch holds several samples of the same prompt
        prompts = [item.prompt for item in chunk for _ in range(k)]
        responses = generate(prompts, shard_seed(settings.seed, shard))
        rows = [
            {"prompt_id": item.item_id, "sample": j, "response": responses[i * k + j]}
            for i, item in enumerate(chunk)
            for j in range(k)
        ]
        if write:
            write_jsonl(rows, path)
        shards.append(rows)
    return shards


def reward_shards(
    items: list[EvalItem],
    shards: list[list[dict[str, Any]]],
    reward: RewardSource,
    rewards_dir: Path,
    write: bool = True,
) -> list[dict[str, list[Any]]]:
    """Every shard's rewards and checker outcomes, computed where the shard's rewards file is missing."""
    by_id = {item.item_id: item for item in items}
    results = []
    for shard, rows in enumerate(tqdm(shards, desc=f"rewards ({reward.name})", dynamic_ncols=True, leave=False)):
        path = rewards_dir / f"shard-{shard:05d}.json"
        if path.exists():
            results.append(json.loads(path.read_text()))
            continue
        shard_items = [by_id[row["prompt_id"]] for row in rows]
        responses = [row["response"] for row in rows]
        # on rank 0 only under a launcher (an LLM judge is asked once, not once per process), shared with the others
        values = distributed.on_main(lambda: {
            "reward": reward.rewards(shard_items, responses, [row["sample"] for row in rows]),
            "correct": checker_outcomes(shard_items, responses),
        })
        if write:
            write_json(values, path)
        results.append(values)
    return results


def response_rows(
    items: list[EvalItem],
    shards: list[list[dict[str, Any]]],
    rewards: list[dict[str, list[Any]]],
    policy: str,
    settings: SamplingSettings,
    reward_name: str,
) -> list[dict[str, Any]]:
    """The rows of ``responses.jsonl`` (module docstring), shard by shard, prompt by prompt, sample by sample."""
    by_id = {item.item_id: item for item in items}
    rows = []
    for shard, (responses, values) in enumerate(zip(shards, rewards, strict=True)):
        for row, reward, correct in zip(responses, values["reward"], values["correct"], strict=True):
            item = by_id[row["prompt_id"]]
            rows.append({
                "prompt_id": item.item_id,
                "prompt": item.prompt,
                "sample": row["sample"],
                "response": row["response"],
                "reward": reward,
                "correct": correct,
                "family": item.category,
                "checker": item.checker,
                "provenance": {"policy": policy, "shard": shard, "seed": shard_seed(settings.seed, shard), "reward": reward_name},
            })
    return rows


def sample_and_reward(
    items: list[EvalItem],
    generate: Callable[[list[Any], int], list[str]],
    reward: RewardSource,
    settings: SamplingSettings,
    cache_dir: Path,
    policy: str,
    rendering: dict[str, Any],
    reward_settings: dict[str, Any],
    write: bool = True,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Responses to ``items`` with their rewards (resumable, cached), and a report (keys, counts, timings)."""
    key = responses_key(policy, items, settings, rendering)
    responses_dir = cache_dir / "responses" / key
    rewards_dir = cache_dir / "rewards" / f"{key}-{rewards_key(reward, reward_settings)}"
    done_before = len(list(responses_dir.glob("shard-*.jsonl"))) if responses_dir.exists() else 0
    start = time.perf_counter()
    shards = sample_shards(items, generate, settings, responses_dir, write)
    sampled = time.perf_counter()
    rewards = reward_shards(items, shards, reward, rewards_dir, write)
    rows = response_rows(items, shards, rewards, policy, settings, reward.name)
    known = [row["reward"] for row in rows if row["reward"] is not None]
    correct = [row["correct"] for row in rows if row["correct"] is not None]
    report = {
        "prompts": len(items),
        "responses": len(rows),
        "shards": len(shards),
        "shards_from_cache": done_before,
        "responses_entry": str(responses_dir),
        "rewards_entry": str(rewards_dir),
        "reward": reward.describe(),
        "missing_rewards": len(rows) - len(known),
        "mean_reward": sum(known) / len(known) if known else None,
        "success_rate": sum(correct) / len(correct) if correct else None,
        "timings_s": {"sampling": round(sampled - start, 1), "rewards": round(time.perf_counter() - sampled, 1)},
    }
    return rows, report
