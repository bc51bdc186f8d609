"""``evaluate.py``: generate answers to a benchmark with a policy and its baseline, judge them, report.

For a policy that is a prefalign run directory, the baseline defaults to the run's reference model (its initial
weights: the SFT model of the papers), the held-out preference metrics use the run's validation pairs, and the
results go to ``<run>/eval/<bench>-<judge>-<generation>-<key>/`` (:func:`result_folder`: a greedy evaluation and a
sampled one, or two ``bench.limit`` values, never share a folder)::

    eval.json            Single (policy and baseline), WinRate, a length-controlled WinRate (the benchmark's:
                         ``lc_winrate`` AlpacaEval 2's by the alpaca-eval package on bench=alpaca_eval,
                         ``lc_winrate_approx`` prefalign's approximation elsewhere), held-out metrics,
                         each with a bootstrap 95% interval and the number of items; judge and settings; the
                         judge's reply counts (``judge_replies``: total, unparsable, the share allowed). Strict
                         JSON: a metric with no value (no parsable outcome) is ``null``, never ``NaN``
    eval.md              the same as a Markdown table
    generations.jsonl    every prompt with both answers, their Single scores, the pairwise outcome and the
                         judge's raw replies, so every number can be traced to text (with
                         ``generation.samples`` > 1 also the policy's further answers and their scores)
    heldout.csv          the held-out metrics pair by pair (``pair_id``, accuracy, margin, loss), from which
                         the sweep tables compare two policies on the same pairs

With ``generation.samples=n`` (n > 1, sampling only) the policy answers every prompt n times, each set with its own
seed (:func:`sample_seed`), and ``eval.json`` adds ``single_of_n``: the policy's Single averaged per prompt over the
n answers, then over prompts (for the verifier judge a success rate, with less sampling noise than one answer).
WinRate and the baseline stay on the first answer. Policy and baseline, and any two policies evaluated with the
same settings, sample every batch from the same seeds (:mod:`prefalign.evaluation.generation`).

The judge decides how its verdicts become WinRate (:meth:`~prefalign.evaluation.judges.Judge.win_rate` of its
:meth:`~prefalign.evaluation.judges.Judge.pairwise_battles`: one battle per prompt, or Arena-Hard's weighted
battles) and says which protocol it follows and where its prompts come from (``judge_protocol`` in ``eval.json``).
``generation.temperature_by_category`` (``generation=mt_bench``: FastChat's MT-Bench temperatures) answers each
prompt at its category's temperature (:func:`prompt_temperatures`; each prompt's in ``generations.jsonl``).

An evaluation where more than ``judge.max_unparsable`` of the judge's replies could not be parsed fails
(:meth:`~prefalign.evaluation.judges.Judge.check_unparsable`) after writing ``generations.jsonl`` (the raw replies)
and before ``eval.json``, so a sweep evaluates that run again once the judge is fixed.

Baseline answers are cached by content (baseline weights, prompts, generation and tokenisation settings), so a
sweep generates them once. Held-out metrics are the validation step's own per-pair values
(:meth:`prefalign.module.PreferenceModule.pair_values`) on the run's setup (:func:`prefalign.run_setup.setup_run`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from transformers import AutoTokenizer

from prefalign import distributed
from prefalign.atomic import atomic_write, lock_path, produce_once, strict_json, write_json
from prefalign.data.tokenization import PairTokenizer
from prefalign.evaluation.benchmarks import Benchmark
from prefalign.evaluation.generation import generate_answers
from prefalign.evaluation.judges import EvalItem, Judge, battle_outcomes
from prefalign.evaluation.metrics import JudgedAnswers, bootstrap, mean_of_known, reported_length_control
from prefalign.folder_lock import hold_folder
from prefalign.keys import content_key, judge_inputs, plain
from prefalign.models import (
    ModelSource,
    directory_fingerprint,
    ensure_pad_token,
    resolve_checkpoint_dir,
)
from prefalign.models import load_checkpoint as load_model_checkpoint
from prefalign.safe_config import load_config

log = logging.getLogger(__name__)


# the parts of a run's config.yaml the evaluation builds objects from (the model, and the run's setup for the
# held-out metrics: model, loss and data); only these are checked, and nothing else of it is ever built
RUN_CONFIG_BUILT = ("model", "loss", "data")


def run_config(path: str | Path) -> DictConfig | None:
    """The resolved config of a prefalign run directory, or ``None`` for a plain checkpoint.

    Raises:
        prefalign.safe_config.UnsafeConfigError: the parts built from it name a ``_target_`` that prefalign's config
            groups do not (a file read back is data, never code).
    """
    config = Path(path) / "config.yaml"
    return load_config(config, keys=RUN_CONFIG_BUILT) if config.exists() else None


def generation_label(settings: DictConfig | dict[str, Any]) -> str:
    """A short, readable name of generation settings: ``greedy`` or ``T0.7`` (with ``-p<top_p>`` when not 1);
    ``fastchat-s0`` (or ``by-category-s0``) for temperatures by category."""
    by_category = settings.get("temperature_by_category")
    if by_category is not None:
        return f"{by_category if isinstance(by_category, str) else 'by-category'}-s{int(settings.get('seed', 0))}"
    temperature = float(settings["temperature"])
    if temperature == 0:
        return "greedy"
    top_p = float(settings.get("top_p", 1.0))
    return f"T{temperature:g}" + (f"-p{top_p:g}" if top_p != 1 else "") + f"-s{int(settings.get('seed', 0))}"


def result_folder(bench_cfg: DictConfig, judge_cfg: DictConfig, settings: DictConfig) -> str:
    """The folder name of an evaluation's results: ``<bench>-<judge>-<generation>-<key>``.

    The key hashes the resolved bench config (``limit`` included), the judge config (less the settings in
    :data:`~prefalign.keys.JUDGE_NO_EFFECT`) and the generation settings, so results are reused only by an evaluation with the
    same settings; computed without instantiating anything (a judge may load a model).
    """
    judge = judge_inputs(judge_cfg)
    generation = plain(settings)
    if int(generation.get("samples", 1)) == 1:  # the setting's default: the keys of earlier results stay valid
        generation.pop("samples", None)
    if generation.get("temperature_by_category") is None:  # likewise
        generation.pop("temperature_by_category", None)
    key = content_key("evaluation-v2", plain(bench_cfg), judge, generation)
    bench = bench_cfg.get("name") or "bench"
    judge_name = judge_cfg.get("name") or str(judge_cfg.get("_target_", "judge")).rsplit(".", 1)[-1]
    return f"{bench}-{judge_name}-{generation_label(settings)}-{key[:8]}"


def load_checkpoint(path: str | Path, dtype: str = "float32") -> tuple[torch.nn.Module, Any]:
    """A causal LM and its tokenizer from a run directory or checkpoint folder, with a clear error if absent."""
    folder = resolve_checkpoint_dir(path)
    return load_model_checkpoint(folder, dtype), ensure_pad_token(AutoTokenizer.from_pretrained(folder))


def baseline_source(baseline: str | None, run_cfg: DictConfig | None) -> tuple[Any, str]:
    """A loader of the baseline model and its fingerprint: ``baseline=<path>``, else the run's reference model."""
    if baseline:
        folder = resolve_checkpoint_dir(baseline)
        return (lambda: load_checkpoint(folder)[0]), f"path:{directory_fingerprint(folder)}"
    if run_cfg is None:
        raise ValueError("the policy is not a prefalign run directory: give the model to compare with, baseline=<path>")
    source: ModelSource = instantiate(run_cfg.model)
    return source.load_reference_model, source.reference_fingerprint()


def items_fingerprint(items: list[Any]) -> str:
    return content_key([[item.item_id, item.prompt] for item in items])


HELDOUT_METRICS = ("rewards/accuracies", "rewards/margins", "loss")


def heldout_metrics(
    run_cfg: DictConfig,
    policy: torch.nn.Module,
    cache_dir: Path,
    resamples: int,
    seed: int,
    values_file: Path | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """Reward accuracy, margin and loss of the policy on the run's validation pairs, with bootstrap intervals
    (the means of :func:`heldout_values`); the per-pair values also go to ``values_file`` (CSV, one row per
    pair), so that two policies can be compared pair by pair (:mod:`prefalign.evaluation.tables`). ``limit``:
    the first this many validation pairs only (``bench.limit``)."""
    values = heldout_values(run_cfg, policy, cache_dir, limit)
    if values_file is not None and distributed.is_main():
        import pandas as pd

        frame = pd.DataFrame({"pair_id": values["pair_id"], **{name: values[name] for name in HELDOUT_METRICS}})
        atomic_write(values_file, lambda tmp: frame.to_csv(tmp, index=False))
    return {name: bootstrap(values[name], resamples=resamples, seed=seed) for name in HELDOUT_METRICS}


def heldout_values(
    run_cfg: DictConfig, policy: torch.nn.Module, cache_dir: Path, limit: int | None = None
) -> dict[str, list[Any]]:
    """Per-pair reward accuracy, margin and loss of the policy on the run's validation pairs, and their ids.

    The run's own setup (:func:`prefalign.run_setup.setup_run`, nothing written) and the validation step's
    per-pair values (:meth:`~prefalign.module.PreferenceModule.pair_values`), so the means equal the run's
    ``val/*`` metrics for the same weights. ``limit``: the first this many validation pairs only (as the run's
    ``data.max_val_pairs`` would keep them), reference log-probs included.
    """
    from prefalign.data.restrictions import NO_RESTRICTIONS
    from prefalign.reference import move_to
    from prefalign.run_setup import setup_run
    from prefalign.trainer import make_module

    run_cfg = OmegaConf.create(OmegaConf.to_container(run_cfg, resolve=True))
    run_cfg.paths.cache_dir = str(cache_dir)
    # the validation pairs as loaded, whatever the run chose or flipped (its selection file may be gone): held out
    # on the clean pairs, whatever noise the scorers saw
    for key, value in NO_RESTRICTIONS.config_changes().items():
        OmegaConf.update(run_cfg, key, value, force_add=True)
    if limit is not None:
        kept = run_cfg.data.get("max_val_pairs")
        run_cfg.data.max_val_pairs = int(limit) if kept is None else min(int(kept), int(limit))
    setup = setup_run(run_cfg, write_files=False)
    if setup.loss.requires_reference:
        setup.attach_reference(None, splits=("val",))
    module = make_module(None, None, policy, setup.loss, setup.logp_settings)
    values: dict[str, list[float]] = {}
    device = next(policy.parameters()).device
    module.eval()
    with torch.no_grad():
        for batch in setup.datamodule.eval_loader("val"):
            values.setdefault("pair_id", []).extend(batch["pair_ids"])
            for name, tensor in module.pair_values(move_to(batch, device)).items():
                values.setdefault(name, []).extend(tensor.float().cpu().tolist())
    return values


# the seed of a policy's j-th further sample set (samples > 1): far from the batch offsets added to a seed
SAMPLE_SEED_STRIDE = 1_000_003


def sample_seed(seed: int, sample: int) -> int:
    """The generation seed of sample set ``sample`` (0 is the main set, generated with ``seed`` itself)."""
    return int(seed) + SAMPLE_SEED_STRIDE * int(sample)


def prompt_temperatures(settings: DictConfig, items: list[EvalItem]) -> tuple[list[float] | None, dict[str, Any]]:
    """Each item's generation temperature under ``generation.temperature_by_category``, and what to record.

    ``null`` (the default): ``None``, every prompt at ``generation.temperature``. ``fastchat``: FastChat's
    ``temperature_config`` (MT-Bench's per-category temperatures, read from the installed fschat,
    :mod:`prefalign.evaluation.fastchat`). A mapping: those temperatures by category. A category the table does
    not list gets ``generation.temperature`` (FastChat's ``gen_model_answer.py`` gives it 0.7, the default here).

    Raises:
        ValueError: another value, or an item without a category (the bench's ``category_column``).
    """
    spec = settings.get("temperature_by_category")
    if spec is None:
        return None, {}
    if spec == "fastchat":
        from prefalign.evaluation.fastchat import fastchat_constants

        constants = fastchat_constants()
        table, source = constants.temperature_config, {"temperature_source": constants.provenance()}
    elif isinstance(spec, (dict, DictConfig)):
        table, source = {str(k): float(v) for k, v in spec.items()}, {}
    else:
        raise ValueError(f"generation.temperature_by_category must be null, fastchat or a mapping of category to "
                         f"temperature, got {spec!r}")
    uncategorised = [item.item_id for item in items if item.category is None]
    if uncategorised:
        raise ValueError(f"generation.temperature_by_category needs each prompt's category; {len(uncategorised)} have "
                         f"none (first: {uncategorised[0]}): set the bench's category_column")
    unlisted = sorted({item.category for item in items} - set(table))
    if unlisted:
        log.warning("categories %s are not in the temperature table: generated at generation.temperature=%g",
                    unlisted, float(settings.temperature))
    temperatures = [table.get(item.category, float(settings.temperature)) for item in items]
    return temperatures, {"temperature_by_category": dict(table), **source}


def check_samples(settings: DictConfig) -> int:
    """``generation.samples``, the answers per prompt a policy's Single is averaged over, checked."""
    samples = settings.get("samples", 1)
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"generation.samples must be a whole number >= 1, got {samples!r}")
    if samples > 1 and float(settings.temperature) == 0:
        raise ValueError(f"generation.samples={samples} with greedy decoding (temperature 0) gives {samples} equal answers: "
                         "set generation.temperature > 0 or generation.samples=1")
    return samples


def evaluate_policy(
    policy_path: str | Path,
    bench_cfg: DictConfig,
    judge_cfg: DictConfig,
    settings: DictConfig,
    cache_dir: Path,
    output_dir: Path | None = None,
    baseline: str | None = None,
    folder_name: str | None = None,
) -> dict[str, Any]:
    """Evaluate one policy on one benchmark with one judge (module docstring); returns ``eval.json``'s content.

    Args:
        policy_path: a run directory or a Hugging Face checkpoint folder.
        bench_cfg, judge_cfg: ``bench`` and ``judge`` config nodes.
        settings: ``temperature``, ``top_p``, ``seed``, ``batch_size``, ``bootstrap_resamples``, ``heldout``.
        cache_dir: cache root (baseline generations, reference log-probs, judge replies).
        output_dir: where to write; default ``<run>/eval/<folder_name>`` (or ``./eval/<folder_name>`` for a
            checkpoint).
        baseline: a checkpoint to compare with instead of the run's reference model.
        folder_name: the result folder's name; default :func:`result_folder` of the settings.

    The evaluation holds the result folder's lock while it writes there (:mod:`prefalign.folder_lock`).
    """
    policy_path = Path(policy_path)
    folder_name = folder_name or result_folder(bench_cfg, judge_cfg, settings)
    if output_dir is None:
        root = policy_path if (policy_path / "config.yaml").exists() else Path.cwd()
        output_dir = root / "eval" / folder_name
    with hold_folder(output_dir):
        return _evaluate_policy(policy_path, bench_cfg, judge_cfg, settings, cache_dir, Path(output_dir), baseline, folder_name)


def _evaluate_policy(
    policy_path: Path,
    bench_cfg: DictConfig,
    judge_cfg: DictConfig,
    settings: DictConfig,
    cache_dir: Path,
    output_dir: Path,
    baseline: str | None,
    folder_name: str,
) -> dict[str, Any]:
    start = time.perf_counter()
    samples = check_samples(settings)
    run_cfg = run_config(policy_path)
    benchmark: Benchmark = instantiate(bench_cfg)
    judge: Judge = instantiate(judge_cfg)
    items = benchmark.load()
    judge.check_inputs(items)  # a missing prompts file or reference fails here, before any generation
    temperatures, temperature_record = prompt_temperatures(settings, items)
    output_dir.mkdir(parents=True, exist_ok=True)
    log.info("evaluating %s on %s (%d prompts) with the %s judge", policy_path, benchmark.name, len(items), judge.name)
    benchmark.length_control.prepare()  # fails now, not after generating, if AlpacaEval's difficulty table is missing

    policy, tokenizer = load_checkpoint(policy_path, run_cfg.model.dtype if run_cfg is not None else "float32")
    device = distributed.local_device(torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    policy.to(device)
    max_length = int(run_cfg.data.max_length) if run_cfg is not None else 2048
    max_prompt = int(run_cfg.data.max_prompt_length) if run_cfg is not None else 1024
    pair_tokenizer = PairTokenizer(tokenizer, max_length=max_length + benchmark.max_new_tokens, max_prompt_length=max_prompt)
    generation = {
        "max_new_tokens": benchmark.max_new_tokens,
        "temperature": float(settings.temperature),
        "top_p": float(settings.top_p),
        "seed": int(settings.seed),
        "batch_size": int(settings.batch_size),
        **temperature_record,  # the per-category temperatures, when there are (part of the baseline's cache key)
    }
    sampling = {key: generation[key] for key in ("max_new_tokens", "temperature", "top_p", "seed", "batch_size")}
    if temperatures is not None:
        sampling["temperature"] = temperatures
    prompts = [item.prompt for item in items]
    policy_answers = generate_answers(policy, pair_tokenizer, prompts, desc="generating (policy)", **sampling)
    # the further samples of the policy (samples > 1), each set with its own seed, the same for every policy
    # evaluated with these settings, so that two policies' samples are paired
    more_answers = [
        generate_answers(
            policy, pair_tokenizer, prompts, desc=f"generating (policy, sample {j + 1} of {samples})",
            **{**sampling, "seed": sample_seed(generation["seed"], j)},
        )
        for j in range(1, samples)
    ]

    load_baseline, baseline_fingerprint = baseline_source(baseline, run_cfg)
    key = content_key("generations-v2", baseline_fingerprint, items_fingerprint(items), generation, max_length, max_prompt)
    cached = cache_dir / "generations" / f"{key}.json"
    generated: list[str] = []

    def generate_baseline() -> None:
        baseline_model = load_baseline().to(device)
        generated.extend(generate_answers(baseline_model, pair_tokenizer, prompts, desc="generating (baseline)", **sampling))
        del baseline_model
        if distributed.is_main():  # every rank holds the gathered answers; one writes them
            write_json(generated, cached)

    # the evaluations of a sweep's runs share one baseline: those that run at the same time generate its answers
    # once (the others wait for them)
    lock = lock_path(cache_dir, "generations", key)
    if produce_once(lock, cached.exists, generate_baseline, what=f"the baseline answers {cached}"):
        baseline_answers = json.loads(cached.read_text())
        log.info("baseline answers from cache %s", cached)
    else:
        baseline_answers = generated

    resamples, seed = int(settings.bootstrap_resamples), int(settings.seed)

    def judged() -> tuple[list, list, list, list, dict, dict]:
        """The judge's verdicts, on rank 0 only under a launcher (an LLM judge is asked once, not once per rank),
        with ``generations.jsonl`` written and the share of unparsable replies checked."""
        single_policy = judge.single(items, policy_answers)
        single_baseline = judge.single(items, baseline_answers)
        # the battles WinRate averages: one per prompt (its outcome), or Arena-Hard's weighted ones
        battles = judge.pairwise_battles(items, policy_answers, baseline_answers)
        outcomes = battle_outcomes(battles)
        single_samples = [judge.single(items, answers) for answers in more_answers]
        records = {r["item_id"]: [] for r in judge.records()}
        for record in judge.records():
            records[record["item_id"]].append(record)
        with open(output_dir / "generations.jsonl", "w") as stream:
            for index, item in enumerate(items):
                line = {
                    "item_id": item.item_id,
                    "prompt": item.prompt,
                    "policy_answer": policy_answers[index],
                    "baseline_answer": baseline_answers[index],
                    "single_policy": single_policy[index],
                    "single_baseline": single_baseline[index],
                    "outcome_for_policy": outcomes[index],
                    **({"temperature": temperatures[index]} if temperatures is not None else {}),
                    **(
                        {
                            "policy_samples": [answers[index] for answers in more_answers],
                            "single_policy_samples": [scores[index] for scores in single_samples],
                        }
                        if more_answers
                        else {}
                    ),
                    "judge_replies": records.get(item.item_id, []),
                }
                stream.write(json.dumps(strict_json(line)) + "\n")
        # before eval.json, so that a failed evaluation leaves nothing a sweep would reuse
        judge.check_unparsable(output_dir / "generations.jsonl")
        return single_policy, single_baseline, battles, single_samples, dict(judge.unparsable), judge.reply_counts()

    single_policy, single_baseline, battles, single_samples, unparsable, reply_counts = distributed.on_main(judged)
    outcomes = battle_outcomes(battles)
    policy_lengths = [len(tokenizer(a, add_special_tokens=False).input_ids) for a in policy_answers]
    baseline_lengths = [len(tokenizer(a, add_special_tokens=False).input_ids) for a in baseline_answers]

    def single_summary(values: list[float | None]) -> dict[str, Any]:
        parsable = [v for v in values if v is not None]
        return {**bootstrap(parsable, resamples=resamples, seed=seed), "unparsable": len(values) - len(parsable)}

    result: dict[str, Any] = {
        "benchmark": benchmark.name,
        "judge": judge.name,
        "judge_protocol": judge.provenance(),
        "setting": generation_label(settings),
        "folder": folder_name,
        "policy": str(policy_path),
        "baseline": baseline or "reference model of the run",
        "items": len(items),
        "single": {"policy": single_summary(single_policy), "baseline": single_summary(single_baseline)},
        "winrate": judge.win_rate(battles, resamples=resamples, seed=seed),
        **benchmark.length_control(
            JudgedAnswers(outcomes, policy_answers, baseline_answers, policy_lengths, baseline_lengths), seed=seed
        ),
        "mean_length": {"policy": float(np.mean(policy_lengths)), "baseline": float(np.mean(baseline_lengths))},
        "unparsable_replies": unparsable,
        "judge_replies": reply_counts,
        "generation": generation,
    }
    if samples > 1:
        per_prompt = [mean_of_known([single_policy[i], *(scores[i] for scores in single_samples)]) for i in range(len(items))]
        result["single_of_n"] = {"samples": samples, "policy": single_summary(per_prompt)}
    if run_cfg is not None and settings.get("heldout", True):
        # bench.limit (a quick look) limits the held-out pass too: on the built-in data it is 300 pairs otherwise
        result["heldout"] = heldout_metrics(
            run_cfg, policy, cache_dir, resamples, seed, output_dir / "heldout.csv", limit=bench_cfg.get("limit")
        )
    result["elapsed_s"] = round(time.perf_counter() - start, 1)
    if not distributed.is_main():  # the other ranks of a launcher: rank 0 writes the results
        return result

    write_json(result, output_dir / "eval.json")  # strict JSON: null, never NaN
    (output_dir / "eval.md").write_text(eval_markdown(result))
    log.info(
        "%s / %s: Single %.2f (baseline %.2f), WinRate %.1f%% [%.1f, %.1f], n=%d -> %s",
        benchmark.name,
        judge.name,
        result["single"]["policy"]["value"],
        result["single"]["baseline"]["value"],
        result["winrate"]["value"],
        result["winrate"]["ci_low"],
        result["winrate"]["ci_high"],
        result["winrate"]["n"],
        output_dir / "eval.json",
    )
    return result


def eval_markdown(result: dict[str, Any]) -> str:
    def row(name: str, metric: dict[str, Any], unit: str = "") -> str:
        return f"| {name} | {metric['value']:.2f}{unit} | [{metric['ci_low']:.2f}, {metric['ci_high']:.2f}] | {metric['n']} |"

    lines = [
        f"# {result['benchmark']} / {result['judge']} judge",
        "",
        f"Policy `{result['policy']}` against {result['baseline']}.",
        "",
        "| metric | value | 95% CI | n |",
        "| --- | --- | --- | --- |",
        row("Single (policy)", result["single"]["policy"]),
        row("Single (baseline)", result["single"]["baseline"]),
        *([row(f"Single (policy, mean of {result['single_of_n']['samples']} samples)", result["single_of_n"]["policy"])]
          if "single_of_n" in result else []),
        row("WinRate vs baseline", result["winrate"], " %"),
    ]
    length_control = reported_length_control(result)
    if length_control is not None:
        lines.append(row(f"{length_control[0]} vs baseline", length_control[1], " %"))
    for name, metric in result.get("heldout", {}).items():
        lines.append(row(f"held-out {name}", metric))
    wins, replies = result["winrate"], result["judge_replies"]
    lines += [
        "",
        f"Wins / ties / losses: {wins['wins']} / {wins['ties']} / {wins['losses']}; "
        f"unparsable judge replies: {replies['unparsable']} of {replies['total']}.",
    ]
    return "\n".join(lines) + "\n"
