"""Build the built-in preference data set (``data=builtin``) from a seed.

Run as::

    python -m prefalign.data.builtin.build            # seed 0, writes prefalign/data/builtin/files/

It takes about 15 minutes on an idle 2-core CPU (the shipped files took 24 minutes while other jobs shared
the CPU), almost all of it generation with the embedded model (SmolLM2-135M-Instruct); everything else is
pure Python and deterministic from ``--seed``. Greedy decoding is deterministic and sampling reseeds torch
per batch, so the same command on the same software reproduces the files.

How the data is made
--------------------
1. **Prompts.** For every task family of :mod:`prefalign.data.builtin.tasks` the family's items are shuffled
   with the seed and cut into test, validation and training items, so an item (e.g. the sum 23 + 45, the
   country France) lives in one split only; test and validation prompts use one random phrasing per item,
   training prompts cycle through the phrasings of the training items. Every family contributes the same
   number of test prompts, validation prompts and training pairs.
2. **Candidate responses** per training and validation prompt: the embedded model's greedy answer and
   ``--num-samples`` samples at temperature ``--temperature`` (``--max-new-tokens`` new tokens, the
   tokenizer's chat template with SmolLM2's default system prompt), plus the family's programmatic right
   and wrong variants (short and verbose forms, typical model mistakes). Identical texts are kept once
   (a model answer wins over an identical variant). **Every candidate is labelled by the family's checker**;
   a variant whose checker label differs from the label it was meant to have is dropped and counted in the
   manifest (``variant_label_mismatches``, 0 for the shipped build).
3. **Pairs.** A clean pair is one correct and one incorrect candidate of the same prompt, chosen = correct.
   With probability ``--on-policy-fraction`` a pair is drawn among those that contain at least one model
   answer (on-policy pairs move the model more), otherwise among variant-only pairs; when only one kind
   exists, that kind is used. A prompt never repeats the same (chosen, rejected) pair.
4. **Annotator noise** (training split only; validation is clean). Exactly ``round(flip_fraction * N)``
   training pairs, chosen at random, have chosen and rejected swapped (``label_flipped``), and exactly
   ``round(ambiguous_fraction * N)`` others are ambiguous: both responses correct or both incorrect
   (equally likely when both exist), in random order (``ambiguous``). The ground truth lives in
   ``metadata`` (``label_flipped``, ``ambiguous``, ``chosen_correct``, ``rejected_correct``), which no
   training, scoring or selection code reads.
5. **Annotator scores.** Each candidate response gets one simulated 1-10 rating, like UltraFeedback's GPT-4
   scores: ``round(N(7, 1.5))`` when the response is correct and ``round(N(4, 1.5))`` when it is not,
   clipped to [1, 10]. The rating depends only on the response's true correctness, not on the (possibly
   flipped) label, so ``score_chosen - score_rejected`` is an independent, noisy external signal: about 92%
   of clean pairs have a positive margin, flipped pairs mostly a negative one.
6. **Held-out test prompts** (``test.jsonl``): prompts only, with their checker and a reference answer.
   The build measures the embedded model's greedy success rate on them (same generation settings) and
   writes it, per family and overall, into ``manifest.json``.

Files (JSON Lines, rows in random order so that the first N pairs are a random subset)
--------------------------------------------------------------------------------------
``train.jsonl`` / ``val.jsonl``: one pair per line, ``pair_id``, ``prompt``, ``chosen``, ``rejected``,
``score_chosen``, ``score_rejected``, ``metadata`` (``prompt_id``, ``family``, ``checker``,
``chosen_correct``, ``rejected_correct``, ``label_flipped``, ``ambiguous``, ``chosen_source``,
``rejected_source``; sources are ``model_greedy``, ``model_sample``, ``variant_right``, ``variant_wrong``).
``test.jsonl``: ``prompt_id``, ``prompt``, ``family``, ``checker``, ``reference_answer``.
``manifest.json``: seed, settings, counts, noise, annotator model, greedy success rates, file hashes,
build time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import random
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from prefalign.atomic import write_jsonl
from prefalign.data.builtin import FILES_DIR
from prefalign.data.builtin.tasks import (
    FAMILIES,
    Checker,
    PromptSpec,
    all_family_names,
    check_response,
)

DEFAULT_OUT = FILES_DIR
SPLITS = ("train", "val", "test")
MODEL_SOURCES = ("model_greedy", "model_sample")

#: ``generate(prompts, num_return_sequences, sample)`` returns, for every prompt, its responses.
GenerateFn = Callable[[Sequence[str], int, bool], list[list[str]]]

# The simulated annotator: a 1-10 rating drawn around a mean that depends on the response's correctness.
ANNOTATOR = {
    "description": (
        "one rating per response: round(N(mean, sd)) clipped to [min, max], mean = correct_mean for a correct "
        "response, incorrect_mean otherwise; independent of the (possibly flipped) pair label"
    ),
    "correct_mean": 7.0,
    "incorrect_mean": 4.0,
    "sd": 1.5,
    "min": 1,
    "max": 10,
}


@dataclass
class BuildConfig:
    """Everything that determines the built data (written to the manifest as ``settings``).

    Sizes are per family, so every split is balanced across families.
    """

    seed: int = 0
    families: list[str] = field(default_factory=lambda: list(FAMILIES))
    train_pairs_per_family: int = 250
    train_prompts_per_family: int = 90
    val_prompts_per_family: int = 25
    test_prompts_per_family: int = 25
    flip_fraction: float = 0.2
    ambiguous_fraction: float = 0.1
    on_policy_fraction: float = 0.7
    num_samples: int = 2
    temperature: float = 0.7
    max_new_tokens: int = 24
    batch_size: int = 64

    def validate(self) -> None:
        """Raise ``ValueError`` for unknown families, impossible noise fractions or empty splits."""
        all_family_names(self.families)
        if self.flip_fraction < 0 or self.ambiguous_fraction < 0:
            raise ValueError("noise fractions must be non-negative")
        if self.flip_fraction + self.ambiguous_fraction > 1:
            raise ValueError("flip_fraction + ambiguous_fraction must be at most 1")
        if not 0 <= self.on_policy_fraction <= 1:
            raise ValueError("on_policy_fraction must lie in [0, 1]")
        sizes = (
            self.train_pairs_per_family,
            self.train_prompts_per_family,
            self.val_prompts_per_family,
            self.test_prompts_per_family,
        )
        if min(sizes) < 1:
            raise ValueError("every split needs at least one prompt per family")


@dataclass
class PromptRecord:
    """A prompt of one split, with its checker."""

    prompt_id: str
    split: str
    family: str
    prompt: str
    checker: Checker


@dataclass
class Candidate:
    """A candidate response of a prompt, labelled by the checker and rated by the simulated annotator."""

    text: str
    source: str
    correct: bool
    score: int = 0

    @property
    def from_model(self) -> bool:
        return self.source in MODEL_SOURCES


@dataclass
class BuiltData:
    """The rows of the three files and the statistics that go into the manifest."""

    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    test: list[dict[str, Any]]
    stats: dict[str, Any]


# ---------------------------------------------------------------------------------------------------------
# Pure-Python parts (deterministic from the seed)
# ---------------------------------------------------------------------------------------------------------


def plan_prompts(config: BuildConfig) -> dict[str, list[PromptRecord]]:
    """The prompts of every split, split by item within each family (see the module docstring).

    Returns:
        ``{"train": [...], "val": [...], "test": [...]}``; prompt ids are ``p-00000`` onwards in the order
        train, val, test and, within a split, family order.

    Raises:
        ValueError: when a family has too few items for the requested test and validation sizes, or when a
            prompt text would occur twice.
    """
    config.validate()
    per_split: dict[str, list[tuple[str, PromptSpec]]] = {split: [] for split in SPLITS}
    for name in config.families:
        family = FAMILIES[name]
        # one generator per family, so adding a family does not change the others
        rng = random.Random(f"{config.seed}:{name}:split")
        groups = family.groups()
        rng.shuffle(groups)
        n_test, n_val = config.test_prompts_per_family, config.val_prompts_per_family
        if len(groups) < n_test + n_val + 1:
            raise ValueError(f"family {name} has {len(groups)} items, too few for {n_test} test + {n_val} val prompts")
        for split, chosen in (("test", groups[:n_test]), ("val", groups[n_test : n_test + n_val])):
            per_split[split].extend((name, rng.choice(family.prompts(group))) for group in chosen)
        # training prompts: the first phrasing of every training item, then the second ones, and so on
        train_groups = groups[n_test + n_val : n_test + n_val + config.train_prompts_per_family]
        phrasings = []
        for group in train_groups:
            specs = family.prompts(group)
            rng.shuffle(specs)
            phrasings.append(specs)
        train_specs: list[PromptSpec] = []
        for rank in range(max(len(specs) for specs in phrasings)):
            train_specs.extend(specs[rank] for specs in phrasings if rank < len(specs))
        per_split["train"].extend((name, spec) for spec in train_specs[: config.train_prompts_per_family])

    plan: dict[str, list[PromptRecord]] = {}
    seen: dict[str, str] = {}
    counter = 0
    for split in SPLITS:
        plan[split] = []
        for name, spec in per_split[split]:
            if spec.prompt in seen:
                raise ValueError(f"prompt {spec.prompt!r} occurs in {seen[spec.prompt]} and {split}")
            seen[spec.prompt] = split
            checker = json.loads(json.dumps(spec.checker))  # an independent copy per record
            plan[split].append(PromptRecord(f"p-{counter:05d}", split, name, spec.prompt, checker))
            counter += 1
    return plan


def variant_rng(seed: int, prompt: str) -> random.Random:
    """The generator of a prompt's variants (depends on the seed and the prompt text only)."""
    return random.Random(f"{seed}:variants:{prompt}")


def collect_candidates(
    record: PromptRecord, model_responses: list[tuple[str, str]], seed: int, mismatches: Counter
) -> list[Candidate]:
    """Model answers plus programmatic variants of one prompt, deduplicated and labelled by the checker.

    Args:
        record: the prompt.
        model_responses: ``(source, text)`` of the model's answers, greedy first.
        seed: the build seed (for the variants).
        mismatches: counts, per family, variants whose checker label differs from the intended one
            (such variants are dropped).
    """
    family = FAMILIES[record.family]
    candidates: list[Candidate] = []
    seen: set[str] = set()
    for source, text in model_responses:
        text = text.strip()
        if text and text not in seen:
            seen.add(text)
            candidates.append(Candidate(text, source, check_response(record.checker, text)))
    for variant in family.variants(record.checker, variant_rng(seed, record.prompt)):
        if variant.text in seen:
            continue
        correct = check_response(record.checker, variant.text)
        if correct != variant.intended_correct:
            mismatches[record.family] += 1
            continue
        seen.add(variant.text)
        candidates.append(Candidate(variant.text, "variant_right" if correct else "variant_wrong", correct))
    return candidates


def annotator_scores(count: int, correct: Sequence[bool], rng: np.random.Generator) -> list[int]:
    """Simulated 1-10 ratings of ``count`` responses (the model in :data:`ANNOTATOR`)."""
    means = np.where(np.asarray(correct, dtype=bool), ANNOTATOR["correct_mean"], ANNOTATOR["incorrect_mean"])
    ratings = np.rint(rng.normal(means, ANNOTATOR["sd"], size=count))
    return [int(value) for value in np.clip(ratings, ANNOTATOR["min"], ANNOTATOR["max"])]


def choose_pair(
    kind: str,
    candidates: list[Candidate],
    used: set[tuple[str, str]],
    on_policy_fraction: float,
    rng: random.Random,
) -> tuple[Candidate, Candidate]:
    """Pick ``(chosen, rejected)`` for one pair slot of a prompt.

    Args:
        kind: ``clean`` (correct over incorrect), ``flipped`` (incorrect over correct) or ``ambiguous``
            (both correct or both incorrect, random order).
        candidates: the prompt's labelled candidates.
        used: (chosen, rejected) texts already paired for this prompt; the pick is added to it.
        on_policy_fraction: probability of preferring pairs that contain a model answer.
        rng: the pairing generator.
    """
    correct = [candidate for candidate in candidates if candidate.correct]
    incorrect = [candidate for candidate in candidates if not candidate.correct]

    def unused(pairs: list[tuple[Candidate, Candidate]]) -> list[tuple[Candidate, Candidate]]:
        return [pair for pair in pairs if (pair[0].text, pair[1].text) not in used]

    if kind == "ambiguous":
        # both correct or both incorrect, equally likely when both are possible; random order within the pair
        pools = [
            unused([(a, b) if rng.random() < 0.5 else (b, a) for a, b in combinations(group, 2)])
            for group in (correct, incorrect)
        ]
        pools = [pool for pool in pools if pool]
        options = rng.choice(pools) if pools else []
    else:
        options = unused([(good, bad) if kind == "clean" else (bad, good) for good in correct for bad in incorrect])
    if not options:
        raise ValueError(f"no unused {kind} pair left among {len(candidates)} candidates")
    on_policy = [pair for pair in options if pair[0].from_model or pair[1].from_model]
    off_policy = [pair for pair in options if not (pair[0].from_model or pair[1].from_model)]
    want_on_policy = rng.random() < on_policy_fraction
    pool = on_policy if (want_on_policy and on_policy) or not off_policy else off_policy
    chosen, rejected = rng.choice(pool)
    used.add((chosen.text, rejected.text))
    return chosen, rejected


def pair_row(record: PromptRecord, chosen: Candidate, rejected: Candidate, kind: str) -> dict[str, Any]:
    """One line of ``train.jsonl`` / ``val.jsonl`` (``pair_id`` is set after shuffling)."""
    return {
        "pair_id": "",
        "prompt": record.prompt,
        "chosen": chosen.text,
        "rejected": rejected.text,
        "score_chosen": chosen.score,
        "score_rejected": rejected.score,
        "metadata": {
            "prompt_id": record.prompt_id,
            "family": record.family,
            "checker": record.checker,
            "chosen_correct": chosen.correct,
            "rejected_correct": rejected.correct,
            "label_flipped": kind == "flipped",
            "ambiguous": kind == "ambiguous",
            "chosen_source": chosen.source,
            "rejected_source": rejected.source,
        },
    }


def _rate(values: Sequence[bool]) -> float:
    return round(sum(values) / len(values), 4) if values else float("nan")


def _success_table(records: Sequence[PromptRecord], greedy: dict[str, str]) -> dict[str, Any]:
    """Greedy success rate of the model on ``records``, overall and per family."""
    by_family: dict[str, list[bool]] = defaultdict(list)
    for record in records:
        by_family[record.family].append(check_response(record.checker, greedy[record.prompt]))
    everything = [value for values in by_family.values() for value in values]
    return {
        "overall": _rate(everything),
        "prompts": len(everything),
        "per_family": {name: _rate(values) for name, values in by_family.items()},
    }


def build_dataset(config: BuildConfig, generate: GenerateFn) -> BuiltData:
    """Build the three splits with ``generate`` producing the model's answers.

    Args:
        config: the build settings.
        generate: the model (see :func:`model_generator`); tests pass a cheap fake. Called once for greedy
            answers to every prompt and once for ``num_samples`` samples of every training and validation
            prompt.
    """
    plan = plan_prompts(config)
    every_prompt = [record.prompt for split in SPLITS for record in plan[split]]
    greedy = {
        prompt: responses[0] for prompt, responses in zip(every_prompt, generate(every_prompt, 1, False), strict=True)
    }
    pair_prompts = [record.prompt for split in ("train", "val") for record in plan[split]]
    samples: dict[str, list[str]] = {prompt: [] for prompt in pair_prompts}
    if config.num_samples > 0:
        samples = dict(zip(pair_prompts, generate(pair_prompts, config.num_samples, True), strict=True))

    mismatches: Counter = Counter()
    score_rng = np.random.default_rng([config.seed, 1])
    candidates: dict[str, list[Candidate]] = {}
    for split in ("train", "val"):
        for record in plan[split]:
            answers = [("model_greedy", greedy[record.prompt])] + [
                ("model_sample", text) for text in samples[record.prompt]
            ]
            found = collect_candidates(record, answers, config.seed, mismatches)
            for candidate, score in zip(
                found, annotator_scores(len(found), [c.correct for c in found], score_rng), strict=True
            ):
                candidate.score = score
            candidates[record.prompt] = found

    # pair slots: every training prompt of a family in turn until the family has its quota of pairs
    slots: dict[str, list[PromptRecord]] = {"train": [], "val": list(plan["val"])}
    for name in config.families:
        prompts = [record for record in plan["train"] if record.family == name]
        slots["train"].extend(prompts[index % len(prompts)] for index in range(config.train_pairs_per_family))
    pair_rng = random.Random(f"{config.seed}:pairs")
    n_train = len(slots["train"])
    n_flipped, n_ambiguous = round(config.flip_fraction * n_train), round(config.ambiguous_fraction * n_train)
    noisy = list(range(n_train))
    pair_rng.shuffle(noisy)
    kinds = ["clean"] * n_train
    for index in noisy[:n_flipped]:
        kinds[index] = "flipped"
    for index in noisy[n_flipped : n_flipped + n_ambiguous]:
        kinds[index] = "ambiguous"

    rows: dict[str, list[dict[str, Any]]] = {}
    for split in ("train", "val"):
        used: dict[str, set[tuple[str, str]]] = defaultdict(set)
        rows[split] = []
        for index, record in enumerate(slots[split]):
            kind = kinds[index] if split == "train" else "clean"
            chosen, rejected = choose_pair(
                kind, candidates[record.prompt], used[record.prompt], config.on_policy_fraction, pair_rng
            )
            rows[split].append(pair_row(record, chosen, rejected, kind))
        # shuffled so that any prefix of the file is a random subset
        pair_rng.shuffle(rows[split])
        for position, row in enumerate(rows[split]):
            row["pair_id"] = f"builtin-{split}-{position:06d}"

    test_rows = [
        {
            "prompt_id": record.prompt_id,
            "prompt": record.prompt,
            "family": record.family,
            "checker": record.checker,
            "reference_answer": FAMILIES[record.family].reference(record.checker),
        }
        for record in plan["test"]
    ]
    random.Random(f"{config.seed}:test-order").shuffle(test_rows)

    stats = _statistics(config, plan, rows, test_rows, candidates, greedy, mismatches)
    return BuiltData(rows["train"], rows["val"], test_rows, stats)


def _statistics(
    config: BuildConfig,
    plan: dict[str, list[PromptRecord]],
    rows: dict[str, list[dict[str, Any]]],
    test_rows: list[dict[str, Any]],
    candidates: dict[str, list[Candidate]],
    greedy: dict[str, str],
    mismatches: Counter,
) -> dict[str, Any]:
    """Counts, noise, on-policy fractions and greedy success rates for the manifest."""
    counts: dict[str, Any] = {}
    for split, split_rows in (("train", rows["train"]), ("val", rows["val"])):
        counts[split] = {
            "pairs": len(split_rows),
            "prompts": len({row["prompt"] for row in split_rows}),
            "per_family": dict(sorted(Counter(row["metadata"]["family"] for row in split_rows).items())),
        }
    counts["test"] = {
        "prompts": len(test_rows),
        "per_family": dict(sorted(Counter(row["family"] for row in test_rows).items())),
    }

    def with_model(split_rows: list[dict[str, Any]]) -> float:
        return _rate(
            [
                row["metadata"]["chosen_source"] in MODEL_SOURCES or row["metadata"]["rejected_source"] in MODEL_SOURCES
                for row in split_rows
            ]
        )

    train_meta = [row["metadata"] for row in rows["train"]]
    everything = [candidate for found in candidates.values() for candidate in found]
    model_answers = [candidate for candidate in everything if candidate.from_model]
    return {
        "counts": counts,
        "noise": {
            "flip_fraction": config.flip_fraction,
            "ambiguous_fraction": config.ambiguous_fraction,
            "flipped": sum(meta["label_flipped"] for meta in train_meta),
            "ambiguous": sum(meta["ambiguous"] for meta in train_meta),
            "ambiguous_both_correct": sum(meta["ambiguous"] and meta["chosen_correct"] for meta in train_meta),
            "clean": sum(not (meta["label_flipped"] or meta["ambiguous"]) for meta in train_meta),
            "val": "clean: no flipped or ambiguous pairs",
        },
        "pairs_with_model_answer": {"train": with_model(rows["train"]), "val": with_model(rows["val"])},
        "score_margin_positive": {
            kind: _rate(
                [
                    row["score_chosen"] > row["score_rejected"]
                    for row, meta in zip(rows["train"], train_meta, strict=True)
                    if selects(meta)
                ]
            )
            for kind, selects in (
                ("clean", lambda meta: not (meta["label_flipped"] or meta["ambiguous"])),
                ("flipped", lambda meta: meta["label_flipped"]),
            )
        },
        "candidates": {
            "per_prompt_mean": round(len(everything) / max(len(candidates), 1), 2),
            "model_answers": len(model_answers),
            "model_answers_correct": _rate([candidate.correct for candidate in model_answers]),
            "variant_label_mismatches": sum(mismatches.values()),
        },
        "greedy_success": {split: _success_table(plan[split], greedy) for split in ("test", "val", "train")},
    }


# ---------------------------------------------------------------------------------------------------------
# The model and the files
# ---------------------------------------------------------------------------------------------------------


def model_generator(config: BuildConfig, model_name: str = "smollm2_135m") -> tuple[GenerateFn, str]:
    """The embedded model as a :data:`GenerateFn`, and its fingerprint.

    Prompts are sorted by token length (less padding), left-padded and generated in batches of
    ``config.batch_size`` sequences under the tokenizer's chat template. Sampling reseeds torch before every
    batch from the build seed and the batch number, so samples do not depend on what ran before.
    """
    import torch
    from tqdm.auto import tqdm

    from prefalign.models import EmbeddedModel

    source = EmbeddedModel(name=model_name)
    model = source.load_model().eval()
    tokenizer = source.load_tokenizer()
    tokenizer.padding_side = "left"

    def encode(prompt: str) -> list[int]:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    def generate(prompts: Sequence[str], num_return_sequences: int, sample: bool) -> list[list[str]]:
        encoded = [encode(prompt) for prompt in prompts]
        order = sorted(range(len(prompts)), key=lambda index: (len(encoded[index]), prompts[index]))
        per_batch = max(1, config.batch_size // num_return_sequences)
        batches = [order[start : start + per_batch] for start in range(0, len(order), per_batch)]
        results: list[list[str]] = [[] for _ in prompts]
        options: dict[str, Any] = {"do_sample": False}
        if sample:
            # pure temperature sampling: switch off the library's default top-k / top-p filters
            options = {"do_sample": True, "temperature": config.temperature, "top_k": 0, "top_p": 1.0}
        description = f"{'sampling' if sample else 'greedy'} x{num_return_sequences}"
        for batch_number, batch in enumerate(tqdm(batches, desc=description, unit="batch")):
            inputs = tokenizer.pad({"input_ids": [encoded[index] for index in batch]}, return_tensors="pt")
            if sample:
                torch.manual_seed(config.seed * 1_000_003 + batch_number)
            with torch.inference_mode():
                output = model.generate(
                    **inputs,
                    max_new_tokens=config.max_new_tokens,
                    num_return_sequences=num_return_sequences,
                    pad_token_id=tokenizer.pad_token_id,
                    **options,
                )
            new_tokens = output[:, inputs["input_ids"].shape[1] :]
            texts = tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for position, index in enumerate(batch):
                chunk = texts[position * num_return_sequences : (position + 1) * num_return_sequences]
                results[index] = [text.strip() for text in chunk]
        return results

    return generate, source.fingerprint()


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file's bytes (recorded in the manifest, checked by the tests)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_dataset(data: BuiltData, out: Path, manifest_extra: dict[str, Any]) -> dict[str, Any]:
    """Write the three JSONL files and ``manifest.json`` into ``out``; return the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, rows in (("train", data.train), ("val", data.val), ("test", data.test)):
        path = out / f"{split}.jsonl"
        write_jsonl(rows, path)
        files[path.name] = {"rows": len(rows), "bytes": path.stat().st_size, "sha256": sha256_of(path)}
    manifest = {**manifest_extra, **data.stats, "files": files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def command_line(config: BuildConfig) -> str:
    """The command that rebuilds the files with ``config``."""
    defaults = BuildConfig()
    parts = ["python -m prefalign.data.builtin.build"]
    for key, value in asdict(config).items():
        if value != getattr(defaults, key):
            shown = ",".join(value) if isinstance(value, list) else value
            parts.append(f"--{key.replace('_', '-')} {shown}")
    return " ".join(parts)


def parse_args(argv: Sequence[str] | None = None) -> tuple[BuildConfig, Path]:
    """The build settings and the output folder from the command line."""
    defaults = BuildConfig()
    parser = argparse.ArgumentParser(
        prog="python -m prefalign.data.builtin.build",
        description="Build the built-in verifiable preference data set (data=builtin) with the embedded model.",
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seeds everything (default 0)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument(
        "--flip-fraction", type=float, default=defaults.flip_fraction, help="training pairs with swapped labels"
    )
    parser.add_argument(
        "--ambiguous-fraction",
        type=float,
        default=defaults.ambiguous_fraction,
        help="training pairs with equally good responses",
    )
    parser.add_argument(
        "--on-policy-fraction",
        type=float,
        default=defaults.on_policy_fraction,
        help="how often to prefer pairs with a model answer",
    )
    parser.add_argument(
        "--families",
        type=lambda text: text.split(","),
        default=defaults.families,
        help="comma-separated task families (default all)",
    )
    parser.add_argument("--train-pairs-per-family", type=int, default=defaults.train_pairs_per_family)
    parser.add_argument("--train-prompts-per-family", type=int, default=defaults.train_prompts_per_family)
    parser.add_argument("--val-prompts-per-family", type=int, default=defaults.val_prompts_per_family)
    parser.add_argument("--test-prompts-per-family", type=int, default=defaults.test_prompts_per_family)
    parser.add_argument("--num-samples", type=int, default=defaults.num_samples, help="sampled answers per prompt")
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="sampling temperature")
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size, help="sequences per generate call")
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    config = BuildConfig(**{key: value for key, value in args.items()})
    config.validate()
    return config, out


def _summary(manifest: dict[str, Any], out: Path) -> str:
    counts, noise = manifest["counts"], manifest["noise"]
    lines = [
        f"built in {manifest['build_seconds']:.0f} s -> {out}",
        (
            f"train: {counts['train']['pairs']} pairs on {counts['train']['prompts']} prompts "
            f"({noise['flipped']} flipped, {noise['ambiguous']} ambiguous, {noise['clean']} clean)"
        ),
        f"val:   {counts['val']['pairs']} clean pairs on {counts['val']['prompts']} prompts",
        f"test:  {counts['test']['prompts']} prompts",
        (
            f"pairs with a model answer: train {manifest['pairs_with_model_answer']['train']:.1%}, "
            f"val {manifest['pairs_with_model_answer']['val']:.1%}"
        ),
        f"variant label mismatches: {manifest['candidates']['variant_label_mismatches']}",
        "greedy success of the embedded model (test / val / train prompts):",
    ]
    success = manifest["greedy_success"]
    for name in counts["test"]["per_family"]:
        rates = " / ".join(f"{success[split]['per_family'][name]:6.1%}" for split in ("test", "val", "train"))
        lines.append(f"  {name:<14} {rates}")
    overall = " / ".join(f"{success[split]['overall']:6.1%}" for split in ("test", "val", "train"))
    lines.append(f"  {'overall':<14} {overall}")
    lines.append(
        "files: " + ", ".join(f"{name} {info['bytes'] / 1e6:.2f} MB" for name, info in manifest["files"].items())
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Build the data set with the embedded model, write it and print a summary."""
    import torch
    import transformers

    config, out = parse_args(argv)
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    start = time.perf_counter()
    generate, fingerprint = model_generator(config)
    data = build_dataset(config, generate)
    manifest_extra = {
        "name": "prefalign-builtin",
        "description": (
            "Verifiable preference pairs on short instructions, answers by the embedded SmolLM2-135M-Instruct "
            "and programmatic variants, labelled by checkers (prefalign.data.builtin.tasks.check_response), "
            "with known label noise; see prefalign/data/builtin/build.py"
        ),
        "command": command_line(config),
        "seed": config.seed,
        "settings": asdict(config),
        "model": {
            "name": "SmolLM2-135M-Instruct (embedded, Q4_1 GGUF de-quantised to float32)",
            "fingerprint": fingerprint,
            "chat_template": "the tokenizer's own (SmolLM2 default system prompt)",
        },
        "generation": {
            "greedy": 1,
            "samples": config.num_samples,
            "temperature": config.temperature,
            "sampling": "pure temperature sampling (top_k=0, top_p=1.0)",
            "sampling_seed": "torch.manual_seed(seed * 1000003 + batch number) before every sampled batch",
            "max_new_tokens": config.max_new_tokens,
            "batch_size": config.batch_size,
            "padding": "left; prompts sorted by token length",
        },
        "families": {name: FAMILIES[name].description for name in config.families},
        "annotator": ANNOTATOR,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    manifest_extra["build_seconds"] = round(time.perf_counter() - start, 1)
    manifest = write_dataset(data, out, manifest_extra)
    print(_summary(manifest, out))
    return manifest


if __name__ == "__main__":
    main()
