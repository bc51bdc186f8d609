"""Iterative (online) DPO, ``python train.py online=iterative``: rounds of sampling, rewards, pairs, selection and
training, each a stage of its own (the BeeS paper's online setting, after Xiong et al. 2024).

Round ``r`` (1..``online.rounds``) runs, in ``<run>/round-<r>/``::

    sample/    sample.py: the round's policy answers prompts[(r-1) n : r n] of online.prompts k times, online.reward
               rates every answer, online.pairs makes the pairs  (responses.jsonl, pairs.jsonl, sample_report.json)
    train/     train.py (or, with select=<rule>, the selection pipeline) on the round's pairs: the policy starts from
               the round's policy, the reference is the initial model (online.reference=initial) or the round's
               policy (previous); validation on the run's own validation pairs (<run>/val_pairs.jsonl)
    train/eval/  evaluate.py on the held-out prompts (online.evaluate: cfg.evaluation's bench, judge, generation)

The round's policy is the initial model in round 1 and the previous round's trained policy after that; the policy
a round trains samples the next round. A round whose ``train/metrics.json`` and policy exist is done: re-running the
command resumes at the first unfinished round (its sampling from the finished shards, its training from its last
checkpoint). With ``select=bees`` the BeeS proxy (the implicit-reward model) is trained in round 1 only, as in
the paper: rounds 2.. read round 1's proxy (``scorers.bees_implicit.proxy``).

``<run>/metrics.json`` holds the per-round table (``rounds``: pairs built, pairs kept, train and validation
metrics, held-out success with its 95% interval, wall times) and the last round's metrics at its top level.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from prefalign.atomic import write_json, write_jsonl
from prefalign.config import group_option
from prefalign.data.datamodule import data_split_pairs
from prefalign.data.restrictions import PairRestrictions
from prefalign.stages.sample import run_sampling
from prefalign.stages.pipeline import derive, needs_selection, run_selection_pipeline
from prefalign.stages.train import run_training

log = logging.getLogger(__name__)

REFERENCES = ("initial", "previous")


def check_one_device(cfg: DictConfig) -> None:
    """The rounds run their stages in one process: a training stage of several processes (Lightning would start the
    whole command again in each) is refused until the rounds are launched as one job per stage."""
    devices, nodes = cfg.trainer.get("devices", 1), int(cfg.trainer.get("num_nodes", 1) or 1)
    if str(devices) not in ("1", "None", "auto", "[0]") or nodes > 1 or (str(devices) == "auto" and "ddp" in str(cfg.trainer.get("strategy")).lower()):
        raise ValueError(f"online={cfg.online.runner.rsplit('.', 1)[-1]} trains each round in this process, on one device: "
                         f"trainer.devices={devices} and trainer.num_nodes={nodes} would start the whole command again in "
                         "every process. Run it with trainer.devices=1, or run the rounds' stages (sample.py, train.py) by hand")


def check_online(cfg: DictConfig) -> None:
    check_one_device(cfg)
    online = cfg.online
    if int(online.rounds) < 1:
        raise ValueError(f"online.rounds must be at least 1, got {online.rounds}")
    if online.reference not in REFERENCES:
        raise ValueError(f"online.reference must be one of {REFERENCES}, got {online.reference!r}")
    if online.get("prompts_per_round") is not None and int(online.prompts_per_round) < 1:
        raise ValueError(f"online.prompts_per_round must be a positive number of prompts or null, got {online.prompts_per_round}")
    choices = PairRestrictions.from_config(cfg.data).choices
    if choices:
        named = ", ".join(f"data.{key}" for key in choices)
        raise ValueError(f"online=iterative trains on the pairs of each round: {named} name pairs of another data set; "
                         "drop them")


def round_done(train_dir: Path) -> bool:
    return (train_dir / "metrics.json").exists() and (train_dir / "policy" / "config.json").exists()


def resolved_option(cfg: DictConfig, group: str, node: Any) -> dict[str, Any]:
    """An ``online.<group>`` node as plain data: a config, or an option's name (``online.reward=annotator``)."""
    option = group_option(group, node)
    if isinstance(node, str):
        option._set_parent(cfg)  # interpolations such as ${paths.cache_dir} refer to the run's config
    return OmegaConf.to_container(option, resolve=True)


def sample_config(cfg: DictConfig, round_index: int, policy: str | None, folder: Path) -> DictConfig:
    """The sampling stage of round ``round_index`` (1-based): ``sample.py``'s config, from the run's."""
    online = cfg.online
    count = online.get("prompts_per_round")
    return OmegaConf.create({
        "task_name": "sample",
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "prompts": resolved_option(cfg, "prompts", online.prompts),
        "reward": resolved_option(cfg, "reward", online.reward),
        "pairs": resolved_option(cfg, "pairs", online.pairs),
        "policy": policy,
        "responses": None,
        "samples_per_prompt": int(online.samples_per_prompt),
        "first_prompt": 0 if count is None or online.same_prompts else (round_index - 1) * int(count),
        "num_prompts": None if count is None else int(count),
        # each round samples with seeds of its own
        "generation": {**OmegaConf.to_container(online.generation, resolve=True),
                       "seed": int(online.generation.seed) + 1000 * (round_index - 1)},
        "max_prompt_length": int(cfg.data.max_prompt_length),
        "use_chat_template": cfg.data.use_chat_template,
        "shard_size": int(online.shard_size),
        "pair_prefix": f"r{round_index}-",
        "paths": {"output_dir": str(folder), "cache_dir": str(cfg.paths.cache_dir)},
    })


def train_config(cfg: DictConfig, pairs_file: Path, val_file: Path, policy: str | None, folder: Path, proxy: str | None) -> DictConfig:
    """The training stage of a round: the run's config on the round's pairs, from the round's policy."""
    changes: dict[str, Any] = {
        "data.source": {"_target_": "prefalign.data.sources.LocalSource", "train_path": str(pairs_file),
                        "val_path": str(val_file), "columns": {}, "val_fraction": 0.0},
        "data.max_train_pairs": None,
        "data.max_val_pairs": None,
        # the validation pairs were written with the run's noise: none is added again
        **dataclasses.replace(PairRestrictions.from_config(cfg.data), val_flip_fraction=0.0).config_changes(),
        "paths.output_dir": str(folder),
        "online": None,
        "evaluate_after_training": False,
        "ckpt_path": "last",
        # a rule's scores are those of the round's own policy (BeeS), unless a warm-up per round is asked for
        "pipeline.warmup_epochs": int(cfg.online.get("selection_warmup_epochs", 0)),
    }
    if policy is not None:
        changes["model.init_from"] = policy
        if cfg.online.reference == "previous":
            changes["model.reference_path"] = policy
    if proxy is not None and "bees_implicit" in (cfg.get("scorers") or {}):
        changes["scorers.bees_implicit.proxy"] = proxy
    return derive(cfg, changes)


def bees_proxy(train_dir: Path) -> str | None:
    """The BeeS proxy a round's selection pipeline trained (its score stage's provenance), if any."""
    summary = train_dir / "score" / "scores_summary.json"
    if not summary.exists():
        return None
    entry = Path(json.loads(summary.read_text())["cache_entry"])
    proxy = entry / "bees_implicit_proxy.json"
    return json.loads(proxy.read_text())["proxy"] if proxy.exists() else None


def heldout_success(single: dict[str, Any], judge: str) -> dict[str, Any]:
    """A Single summary of ``eval.json`` with, for the verifier judge (Single = ``1 + 9a``), the success rate ``a``
    and its 95% interval."""
    summary = {"single": single["value"], "single_ci": [single["ci_low"], single["ci_high"]], "n": single["n"]}
    if judge == "verifier":
        to_rate = lambda value: None if value is None else (value - 1.0) / 9.0
        summary |= {"success": to_rate(single["value"]), "success_ci": [to_rate(single["ci_low"]), to_rate(single["ci_high"])]}
    return summary


def prepare_run(cfg: DictConfig) -> tuple[Path, Path, Path]:
    """The run directory (with its ``config.yaml``), the cache root, and ``<run>/val_pairs.jsonl``: the run's
    validation pairs, written once, that every round's (or stage's) training validates on."""
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    val_file = run_dir / "val_pairs.jsonl"
    if not val_file.exists():
        write_jsonl([pair.to_dict() for pair in data_split_pairs(cfg.data, "val")], val_file)
    return run_dir, Path(str(cfg.paths.cache_dir)).expanduser(), val_file


def evaluate_step(train_dir: Path, cfg: DictConfig, cache_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A round's (or stage's) held-out evaluation: its policy's success (with the WinRate and held-out pair
    metrics) and its reference's, which is the initial model's in the first round."""
    from prefalign.stages.evaluate import evaluate_run

    report = evaluate_run(train_dir, cfg.evaluation, cache_dir)
    policy = {**heldout_success(report["single"]["policy"], report["judge"]), "winrate": report["winrate"],
              "val": report.get("heldout")}
    return policy, heldout_success(report["single"]["baseline"], report["judge"])


def run_iterative(cfg: DictConfig) -> dict[str, Any]:
    """Run the rounds (module docstring); returns the run's metrics (also ``<run>/metrics.json``)."""
    start = time.perf_counter()
    check_online(cfg)
    run_dir, cache_dir, val_file = prepare_run(cfg)
    policy: str | None = None
    proxy: str | None = None
    initial: dict[str, Any] | None = None
    rounds: list[dict[str, Any]] = []
    result: dict[str, Any] = {}
    for index in range(1, int(cfg.online.rounds) + 1):
        round_dir = run_dir / f"round-{index}"
        train_dir = round_dir / "train"
        round_start = time.perf_counter()
        sample_report = run_sampling(sample_config(cfg, index, policy, round_dir / "sample"))
        if sample_report["pairs"]["pairs"] == 0:
            raise RuntimeError(f"round {index}: no pairs to train on ({sample_report['pairs']['dropped']}); "
                               f"see {round_dir / 'sample' / 'sample_report.json'}")
        sampled = time.perf_counter()
        if round_done(train_dir):
            log.info("round %d: trained already (%s)", index, train_dir)
            result = json.loads((train_dir / "metrics.json").read_text())
        else:
            train_cfg = train_config(cfg, round_dir / "sample" / "pairs.jsonl", val_file, policy, train_dir, proxy)
            result = run_selection_pipeline(train_cfg) if needs_selection(train_cfg) else run_training(train_cfg)
        trained = time.perf_counter()
        if index == 1:  # BeeS: the implicit-reward proxy of round 1 serves every later round
            proxy = bees_proxy(train_dir)
        heldout = None
        if cfg.online.evaluate:
            heldout, reference = evaluate_step(train_dir, cfg, cache_dir)
            if index == 1:  # round 1's reference is the initial model, whatever online.reference says
                initial = reference
        pairs = sample_report["pairs"]
        rounds.append({
            "round": index,
            "policy_sampling": policy or "initial model",
            "prompts": sample_report["prompts"],
            "responses": sample_report["responses"],
            "response_success": sample_report["success_rate"],
            "mean_reward": sample_report["mean_reward"],
            "pairs_built": pairs["pairs"],
            "pairs_dropped": pairs["dropped"],
            "pairs_noise": pairs["ground_truth"],
            "pairs_kept": result["run"]["train_pairs"],
            "metrics": {key: value for key, value in result.items() if key.startswith(("train/", "val/"))},
            "heldout": heldout,
            "wall_s": {"sampling": round(sampled - round_start, 1), "training": round(trained - sampled, 1),
                       "evaluation": round(time.perf_counter() - trained, 1), "round": round(time.perf_counter() - round_start, 1)},
            "dir": str(round_dir),
        })
        policy = str(train_dir)
        summary = {"rounds": rounds, "initial": initial, "online": OmegaConf.to_container(cfg.online, resolve=True)}
        write_json(summary, run_dir / "metrics.json")  # after every round: what is done stays on record
        log.info("round %d of %d done: %d pairs built, %d trained on%s", index, cfg.online.rounds, pairs["pairs"],
                 result["run"]["train_pairs"], "" if heldout is None else f", held-out success {heldout.get('success')}")
    final = {
        **{key: value for key, value in result.items() if key.startswith(("train/", "val/"))},
        "rounds": rounds,
        "initial": initial,
        "online": OmegaConf.to_container(cfg.online, resolve=True),
        "run": {"policy_dir": str(Path(policy) / "policy"), "output_dir": str(run_dir),
                "elapsed_s": round(time.perf_counter() - start, 1)},
    }
    write_json(final, run_dir / "metrics.json")
    return final
