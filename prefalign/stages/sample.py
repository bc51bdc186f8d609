"""The sampling stage, ``sample.py``: responses of a policy to a prompt set, their rewards, and pairs from them.

Inputs: ``model`` (the source of the initial weights and the tokenizer), ``policy`` (a run directory or
checkpoint; none: the initial weights), ``prompts`` (a prompt set, ``conf/prompts/``: the built-in training,
validation or test prompts, a prompt file or a hub dataset column), ``first_prompt`` / ``num_prompts`` (a slice
of it), the sampling settings, ``reward`` (``conf/reward/``) and ``pairs`` (``conf/pairs/``; ``null``: responses
only). With ``responses=<responses.jsonl or a sample run>`` nothing is sampled: the pairs are built from that
file (another pair rule on the same responses).

Outputs, in the stage's directory::

    config.yaml            the resolved config
    responses.jsonl        every response, its reward, its checker outcome and its provenance
                           (:mod:`prefalign.online.responses`)
    pairs.jsonl            the pairs, an ordinary pairs file (:mod:`prefalign.online.pairs`):
                           python train.py data=local data.source.train_path=<dir>/pairs.jsonl ...
    sample_report.json     counts (responses, pairs, what each rule dropped and why), success rate of the
                           responses, ground-truth noise of the pairs, cache entries, timings

Responses and rewards are cached in resumable shards (:func:`prefalign.online.responses.sample_and_reward`), so
re-running an interrupted command resumes it, and a second pair rule or reward source reuses the responses.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from prefalign import distributed
from prefalign.atomic import write_json, write_jsonl
from prefalign.data.tokenization import PairTokenizer
from prefalign.evaluation.benchmarks import Benchmark
from prefalign.evaluation.generation import generate_answers
from prefalign.keys import judge_inputs, plain
from prefalign.models import ModelSource, directory_fingerprint, resolve_checkpoint_dir
from prefalign.online.pairs import PairRule, build_pairs
from prefalign.online.responses import SamplingSettings, read_jsonl, sample_and_reward
from prefalign.online.rewards import RewardSource

log = logging.getLogger(__name__)


def sampling_settings(cfg: DictConfig) -> SamplingSettings:
    generation = cfg.generation
    settings = SamplingSettings(
        samples_per_prompt=int(cfg.samples_per_prompt),
        temperature=float(generation.temperature),
        top_p=float(generation.top_p),
        max_new_tokens=int(generation.max_new_tokens),
        batch_size=int(generation.batch_size),
        seed=int(generation.seed),
        shard_size=int(cfg.shard_size),
    )
    settings.validate()
    return settings


def prompt_slice(items: list[Any], first: int, count: int | None, where: str) -> list[Any]:
    """``items[first : first + count]``, with an error naming ``where`` when the slice is empty."""
    if first < 0 or (count is not None and count <= 0):
        raise ValueError(f"{where}: first_prompt must be >= 0 and num_prompts > 0 or null, got {first} and {count}")
    chosen = items[first : None if count is None else first + count]
    if not chosen:
        raise ValueError(f"{where}: first_prompt={first} is past the last of its {len(items)} prompts")
    if count is not None and len(chosen) < count:
        log.warning("%s: %d prompts asked for from prompt %d, only %d left", where, count, first, len(chosen))
    return chosen


def responses_file(path: str | Path) -> Path:
    """The responses file a path names: the file itself, or a sample run's ``responses.jsonl``."""
    path = Path(path).expanduser()
    file = path / "responses.jsonl" if path.is_dir() else path
    if not file.exists():
        raise FileNotFoundError(f"responses file {file} does not exist (give a responses.jsonl or a sample.py run)")
    return file


def run_sampling(cfg: DictConfig) -> dict[str, Any]:
    """Sample, reward and pair (module docstring); returns the report that ``sample_report.json`` holds."""
    start = time.perf_counter()
    output_dir = Path(cfg.paths.output_dir)
    rule: PairRule | None = instantiate(cfg.pairs) if cfg.get("pairs") else None
    if cfg.get("responses"):
        file = responses_file(cfg.responses)
        rows, report = read_jsonl(file), {"responses_file": str(file)}
        if rule is None:
            raise ValueError("responses=... builds pairs from a responses file: give a pair rule (pairs=best_worst)")
    else:
        rows, report = sample_responses(cfg)
    if distributed.is_main():
        output_dir.mkdir(parents=True, exist_ok=True)
        write_jsonl(rows, output_dir / "responses.jsonl")
    if rule is not None:
        pairs, pair_report = build_pairs(rows, rule, str(cfg.get("pair_prefix") or ""))
        report["pairs"] = pair_report
        if distributed.is_main():
            write_jsonl(pairs, output_dir / "pairs.jsonl")
        if not pairs:
            log.warning("no pairs: every prompt's responses had equal rewards (%s)", pair_report["dropped"])
    report["elapsed_s"] = round(time.perf_counter() - start, 1)
    report["outputs"] = {"responses": str(output_dir / "responses.jsonl"), "pairs": str(output_dir / "pairs.jsonl") if rule else None}
    if distributed.is_main():
        write_json(report, output_dir / "sample_report.json")
        pairs_line = f", {report['pairs']['pairs']} pairs ({rule.name})" if rule is not None else ""
        log.info("%d responses%s in %s", len(rows), pairs_line, output_dir)
    return report


def sample_responses(cfg: DictConfig) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Load the policy and the prompts, then :func:`~prefalign.online.responses.sample_and_reward`."""
    settings = sampling_settings(cfg)
    benchmark: Benchmark = instantiate(cfg.prompts)
    items = prompt_slice(benchmark.load(), int(cfg.first_prompt), cfg.get("num_prompts"), f"prompts={benchmark.name}")
    reward: RewardSource = instantiate(cfg.reward)
    source: ModelSource = instantiate(cfg.model)
    tokenizer = source.load_tokenizer()
    pair_tokenizer = PairTokenizer(
        tokenizer,
        max_length=int(cfg.max_prompt_length) + settings.max_new_tokens + 1,
        max_prompt_length=int(cfg.max_prompt_length),
        use_chat_template=cfg.use_chat_template,
    )
    if cfg.get("policy"):
        policy_id = f"path:{directory_fingerprint(resolve_checkpoint_dir(cfg.policy))}"
    else:
        policy_id = f"initial:{source.policy_fingerprint()}"
    model: torch.nn.Module | None = None

    def generate(prompts: list[Any], seed: int) -> list[str]:
        nonlocal model
        if model is None:  # loaded at the first shard to sample (a fully cached run loads nothing)
            model = source.load_policy(cfg.policy) if cfg.get("policy") else source.load_model()
            model.to(distributed.local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu")))
        return generate_answers(
            model, pair_tokenizer, prompts, max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
            top_p=settings.top_p, seed=seed, batch_size=settings.batch_size, desc="sampling",
        )

    rendering = {"max_prompt_length": int(cfg.max_prompt_length), "chat_template": pair_tokenizer.use_chat_template}
    # what can change a reward: the source's config less its name and, for a judge, the request settings
    reward_settings = {key: value for key, value in plain(cfg.reward).items() if key not in ("name", "judge")}
    if cfg.reward.get("judge") is not None:
        reward_settings["judge"] = judge_inputs(cfg.reward.judge)
    rows, report = sample_and_reward(
        items, generate, reward, settings, Path(str(cfg.paths.cache_dir)).expanduser(), policy_id, rendering,
        reward_settings, write=distributed.is_main(),
    )
    report = {
        "policy": str(cfg.policy) if cfg.get("policy") else "initial model",
        "prompts_set": benchmark.name,
        "first_prompt": int(cfg.first_prompt),
        "sampling": vars(settings),
        **report,
    }
    log.info(
        "%d responses to %d prompts (%s), success rate %s", report["responses"], report["prompts"], reward.name,
        "n/a" if report["success_rate"] is None else f"{report['success_rate']:.3f}",
    )
    return rows, report
