"""The built-in data set: checkers on hand-written answers, the committed files, the build's pure-Python parts.

Nothing here loads a model: the committed files are read as they are, and the build runs with a fake
generator.
"""

from __future__ import annotations

import hashlib
import json
import random
import zlib
from collections import Counter
from itertools import pairwise

import pytest

from prefalign.data.builtin import FILES_DIR
from prefalign.data.builtin.build import (
    ANNOTATOR,
    MODEL_SOURCES,
    BuildConfig,
    build_dataset,
    plan_prompts,
    variant_rng,
)
from prefalign.data.builtin.tasks import FAMILIES, check_response, extract_numbers

# ---------------------------------------------------------------------------------------------------------
# Checkers on hand-written answers
# ---------------------------------------------------------------------------------------------------------

ADD2 = {"family": "add2", "operands": [23, 45], "answer": 68}
ADD1 = {"family": "add1", "operands": [6, 8], "answer": 14}
LARGER = {"family": "larger", "answer": 82, "other": 47}
UPPER = {"family": "upper", "word": "garden", "answer": "GARDEN"}
WEEKDAY = {"family": "weekday", "given": "Tuesday", "offset": 1, "answer": "Wednesday"}
COUNT = {"family": "count_letters", "word": "apple", "answer": 5}
SORT3 = {"family": "sort3", "numbers": [5, 2, 9], "answer": [2, 5, 9]}
EVEN = {"family": "parity", "number": 14, "property": "even", "answer": "yes"}
ODD = {"family": "parity", "number": 14, "property": "odd", "answer": "no"}
CATEGORY = {"family": "category", "category": "fruit", "answer": "apple", "other": "chair"}
CAPITAL = {
    "family": "capital",
    "country": "Australia",
    "answer": "Canberra",
    "accept": ["Canberra"],
    "wrong": ["Sydney", "Melbourne", "Oslo", "Lima"],
}
BRAZIL = {
    "family": "capital",
    "country": "Brazil",
    "answer": "Brasilia",
    "accept": ["Brasilia"],
    "wrong": ["Rio de Janeiro"],
}
OPPOSITE = {"family": "opposite", "word": "big", "answer": "small", "accept": ["small", "little", "tiny"]}
REPEAT = {"family": "repeat", "answer": "banana"}

CASES = [
    # addition: the last number decides, digits or words
    (ADD2, "68", True),
    (ADD2, "23 + 45 = 68", True),
    (ADD2, "The answer is sixty-eight.", True),
    (ADD2, "23 + 45 = 78", False),
    (ADD2, "29 + 14 = 31", False),
    (ADD2, "68, because 23 and 45", False),
    (ADD2, "68.5", False),
    (ADD2, "I cannot answer that.", False),
    (ADD1, "To add 6 and 8, you simply add them together: 6 + 8 = 14.", True),
    (ADD1, "fourteen", True),
    (ADD1, "To add 6 and 8, you simply add the numbers together. Both 6 and", False),
    # larger: a stated verdict, not a mere mention
    (LARGER, "82", True),
    (LARGER, "82 is larger than 47.", True),
    (LARGER, "Between 47 and 82, 82 is larger.", True),
    (LARGER, "47 is smaller than 82.", True),
    (LARGER, "The larger number is 82.", True),
    (LARGER, "47 is larger than 82.", False),
    (LARGER, "The larger number is 47.", False),
    (LARGER, "To solve this problem, we need to find the greatest common factor of 82 and 4", False),
    (LARGER, "Both numbers are equal.", False),
    # capitals: case-sensitive whole word
    (UPPER, "GARDEN", True),
    (UPPER, "The word in capital letters is GARDEN.", True),
    (UPPER, "Garden", False),
    (UPPER, "GARDENS", False),
    (UPPER, 'The word "garden" is a capital letter.', False),
    # weekday: the answer, and no weekday other than it and the given one
    (WEEKDAY, "Wednesday", True),
    (WEEKDAY, "The day after Tuesday is Wednesday.", True),
    (WEEKDAY, "The day after Tuesday is Thursday.", False),
    (WEEKDAY, "Wednesday or Thursday", False),
    (WEEKDAY, "The day after Tuesday is a special day in the Lunar Calendar.", False),
    # count letters: "<n> letters" decides, else the last number
    (COUNT, "The word 'apple' has 5 letters.", True),
    (COUNT, "five", True),
    (COUNT, "The word 'apple' has 5 letters and 2 vowels.", True),
    (COUNT, "The word 'apple' has 1 letters.", False),
    (COUNT, "The word 'apple' consists of one letter.", False),
    # sort three: the last list of numbers
    (SORT3, "2, 5, 9", True),
    (SORT3, "The sorted order is 2, 5 and 9.", True),
    (SORT3, "5, 2, 9 sorted is 2, 5, 9", True),
    (SORT3, "1. 2\n2. 5\n3. 9", True),
    (SORT3, "9, 5, 2", False),
    (SORT3, "The numbers 5, 2, and 9 are in ascending order: 5,", False),
    (SORT3, "2, 5, 9, 10", False),
    # parity: yes/no, or a statement about the number
    (EVEN, "Yes.", True),
    (EVEN, "14 is an even number.", True),
    (EVEN, "No.", False),
    (EVEN, "Yes, no, maybe.", False),
    (EVEN, "To check if a number is even, divide it by 2.", False),
    (ODD, "No, 14 is not an odd number.", True),
    (ODD, "14 is not odd.", True),
    (ODD, "14 is an odd number.", False),
    # category: the right option only, or an explicit statement when both are named
    (CATEGORY, "Apple.", True),
    (CATEGORY, "Apples are fruits, a chair is not.", True),
    (CATEGORY, "The answer to this question is: chair", False),
    (CATEGORY, "Both apple and chair.", False),
    (CATEGORY, "A fruit is a vegetable.", False),
    # capital: an accepted name and no listed wrong city; accents ignored
    (CAPITAL, "The capital of Australia is Canberra, a vibrant city.", True),
    (CAPITAL, "Sydney", False),
    (CAPITAL, "The capital is Sydney, not Canberra.", False),
    (BRAZIL, "The capital of Brazil is Brasília.", True),
    (BRAZIL, "Rio de Janeiro", False),
    # opposite: any accepted opposite
    (OPPOSITE, "The opposite of big is little.", True),
    (OPPOSITE, "small", True),
    (OPPOSITE, "The opposite of big is big.", False),
    (OPPOSITE, "The opposite of big is huge.", False),
    # repeat: the word, whole
    (REPEAT, "banana", True),
    (REPEAT, "Banana banana banana", True),
    (REPEAT, "Bananna.", False),
    (REPEAT, "I'm sorry, I cannot repeat that word.", False),
]


@pytest.mark.parametrize(("checker", "response", "expected"), CASES)
def test_checker_on_hand_written_answers(checker: dict, response: str, expected: bool) -> None:
    assert check_response(checker, response) is expected


def test_every_family_has_hand_written_cases_both_ways() -> None:
    outcomes: dict[str, set[bool]] = {}
    for checker, _, expected in CASES:
        outcomes.setdefault(checker["family"], set()).add(expected)
    assert outcomes == {name: {True, False} for name in FAMILIES}


def test_extract_numbers_reads_digits_and_words() -> None:
    assert extract_numbers("23 + 45 = sixty-eight") == [23, 45, 68]
    assert extract_numbers("one hundred and two, twenty one, five six") == [102, 21, 5, 6]
    assert extract_numbers("68.0 and 68.5 and -3") == [68, 68.5, -3]
    assert extract_numbers("no numbers here") == []


def test_unknown_family_is_an_error() -> None:
    with pytest.raises(KeyError):
        check_response({"family": "no_such_family", "answer": 1}, "1")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_variants_and_references_agree_with_the_checker(name: str) -> None:
    family = FAMILIES[name]
    rng = random.Random(0)
    groups = family.groups()
    for group in rng.sample(groups, min(40, len(groups))):
        for spec in family.prompts(group):
            assert check_response(spec.checker, family.reference(spec.checker)), spec
            variants = family.variants(spec.checker, random.Random(spec.prompt))
            for variant in variants:
                assert check_response(spec.checker, variant.text) is variant.intended_correct, (spec, variant)
            # ambiguous pairs need two right or two wrong candidates even when the model adds none
            assert sum(variant.intended_correct for variant in variants) >= 2
            assert sum(not variant.intended_correct for variant in variants) >= 2


# ---------------------------------------------------------------------------------------------------------
# The committed files
# ---------------------------------------------------------------------------------------------------------

PAIR_KEYS = {"pair_id", "prompt", "chosen", "rejected", "score_chosen", "score_rejected", "metadata"}
METADATA_KEYS = {
    "prompt_id",
    "family",
    "checker",
    "chosen_correct",
    "rejected_correct",
    "label_flipped",
    "ambiguous",
    "chosen_source",
    "rejected_source",
}
SOURCES = {"model_greedy", "model_sample", "variant_right", "variant_wrong"}


def read_jsonl(name: str) -> list[dict]:
    with (FILES_DIR / name).open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


@pytest.fixture(scope="module")
def shipped() -> dict:
    return {
        "manifest": json.loads((FILES_DIR / "manifest.json").read_text(encoding="utf-8")),
        "train": read_jsonl("train.jsonl"),
        "val": read_jsonl("val.jsonl"),
        "test": read_jsonl("test.jsonl"),
    }


def test_pair_schema(shipped: dict) -> None:
    for split in ("train", "val"):
        ids = set()
        for row in shipped[split]:
            assert set(row) == PAIR_KEYS
            assert row["pair_id"].startswith(f"builtin-{split}-") and row["pair_id"] not in ids
            ids.add(row["pair_id"])
            assert all(isinstance(row[key], str) and row[key] for key in ("prompt", "chosen", "rejected"))
            assert row["chosen"] != row["rejected"]
            for key in ("score_chosen", "score_rejected"):
                assert isinstance(row[key], int) and ANNOTATOR["min"] <= row[key] <= ANNOTATOR["max"]
            meta = row["metadata"]
            assert set(meta) == METADATA_KEYS
            assert meta["family"] == meta["checker"]["family"] and meta["family"] in FAMILIES
            assert {meta["chosen_source"], meta["rejected_source"]} <= SOURCES


def test_test_schema_and_reference_answers(shipped: dict) -> None:
    ids = set()
    for row in shipped["test"]:
        assert set(row) == {"prompt_id", "prompt", "family", "checker", "reference_answer"}
        assert row["prompt_id"] not in ids
        ids.add(row["prompt_id"])
        assert row["family"] == row["checker"]["family"]
        assert check_response(row["checker"], row["reference_answer"])


def test_split_sizes_and_family_balance(shipped: dict) -> None:
    settings = shipped["manifest"]["settings"]
    families = settings["families"]
    assert len(families) >= 10 and set(families) <= set(FAMILIES)
    expected = {
        "train": settings["train_pairs_per_family"],
        "val": settings["val_prompts_per_family"],
        "test": settings["test_prompts_per_family"],
    }
    for split, per_family in expected.items():
        counts = Counter(row["metadata"]["family"] if split != "test" else row["family"] for row in shipped[split])
        assert counts == {name: per_family for name in families}, split
    assert 2500 <= len(shipped["train"]) <= 3500
    assert 250 <= len(shipped["val"]) <= 350 and 250 <= len(shipped["test"]) <= 350


def test_noise_counts_and_consistency(shipped: dict) -> None:
    settings = shipped["manifest"]["settings"]
    train = [row["metadata"] for row in shipped["train"]]
    flipped = [meta for meta in train if meta["label_flipped"]]
    ambiguous = [meta for meta in train if meta["ambiguous"]]
    assert len(flipped) == round(settings["flip_fraction"] * len(train))
    assert len(ambiguous) == round(settings["ambiguous_fraction"] * len(train))
    for meta in train:
        assert not (meta["label_flipped"] and meta["ambiguous"])
        if meta["label_flipped"]:
            assert (meta["chosen_correct"], meta["rejected_correct"]) == (False, True)
        elif meta["ambiguous"]:
            assert meta["chosen_correct"] == meta["rejected_correct"]
        else:
            assert (meta["chosen_correct"], meta["rejected_correct"]) == (True, False)
    # both kinds of ambiguity occur
    assert {meta["chosen_correct"] for meta in ambiguous} == {True, False}
    for row in shipped["val"]:
        meta = row["metadata"]
        assert not meta["label_flipped"] and not meta["ambiguous"]
        assert (meta["chosen_correct"], meta["rejected_correct"]) == (True, False)


def test_labels_agree_with_the_checker(shipped: dict) -> None:
    for row in shipped["train"] + shipped["val"]:
        meta = row["metadata"]
        assert check_response(meta["checker"], row["chosen"]) is meta["chosen_correct"], row["pair_id"]
        assert check_response(meta["checker"], row["rejected"]) is meta["rejected_correct"], row["pair_id"]
        for side in ("chosen", "rejected"):
            if meta[f"{side}_source"] == "variant_right":
                assert meta[f"{side}_correct"]
            if meta[f"{side}_source"] == "variant_wrong":
                assert not meta[f"{side}_correct"]


def test_prompts_and_items_are_distinct_across_splits(shipped: dict) -> None:
    prompts = {
        "train": {row["prompt"] for row in shipped["train"]},
        "val": {row["prompt"] for row in shipped["val"]},
        "test": {row["prompt"] for row in shipped["test"]},
    }
    assert not prompts["train"] & prompts["val"]
    assert not prompts["train"] & prompts["test"]
    assert not prompts["val"] & prompts["test"]
    # families split by item never share a checker (the same question) between splits
    items = {split: set() for split in prompts}
    for split in ("train", "val"):
        for row in shipped[split]:
            items[split].add(json.dumps(row["metadata"]["checker"], sort_keys=True))
    for row in shipped["test"]:
        items["test"].add(json.dumps(row["checker"], sort_keys=True))
    for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = items[first] & items[second]
        assert all(not FAMILIES[json.loads(item)["family"]].split_by_item for item in shared)


def test_manifest_describes_the_files(shipped: dict) -> None:
    manifest = shipped["manifest"]
    for name, info in manifest["files"].items():
        path = FILES_DIR / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == info["sha256"], name
        assert info["rows"] == len(shipped[name.split(".")[0]])
    assert manifest["noise"]["flipped"] == sum(row["metadata"]["label_flipped"] for row in shipped["train"])
    assert manifest["noise"]["ambiguous"] == sum(row["metadata"]["ambiguous"] for row in shipped["train"])
    assert manifest["candidates"]["variant_label_mismatches"] == 0
    assert manifest["seed"] == manifest["settings"]["seed"]
    assert manifest["build_seconds"] > 0
    assert manifest["annotator"] == ANNOTATOR
    success = manifest["greedy_success"]["test"]
    # the starting model must leave room to improve, and every family is measured
    assert 0.2 <= success["overall"] <= 0.7
    assert set(success["per_family"]) == set(manifest["settings"]["families"])
    assert success["prompts"] == len(shipped["test"])


def test_files_stay_small() -> None:
    total = sum(
        (FILES_DIR / name).stat().st_size for name in ("train.jsonl", "val.jsonl", "test.jsonl", "manifest.json")
    )
    assert total < 3_000_000


def test_pairs_mix_model_answers_and_variants(shipped: dict) -> None:
    def has_model_answer(row: dict) -> bool:
        meta = row["metadata"]
        return meta["chosen_source"] in MODEL_SOURCES or meta["rejected_source"] in MODEL_SOURCES

    fraction = sum(map(has_model_answer, shipped["train"])) / len(shipped["train"])
    assert 0.5 <= fraction < 0.95
    assert fraction == pytest.approx(shipped["manifest"]["pairs_with_model_answer"]["train"], abs=1e-4)


def test_rows_are_shuffled(shipped: dict) -> None:
    families = [row["metadata"]["family"] for row in shipped["train"]]
    changes = sum(first != second for first, second in pairwise(families))
    # sorted or grouped rows would change family about a dozen times; shuffled rows almost every time
    assert changes > 0.8 * len(families)
    assert len({row["metadata"]["family"] for row in shipped["train"][:300]}) == len(set(families))


def test_scores_follow_the_annotator_model(shipped: dict) -> None:
    by_label: dict[bool, list[int]] = {True: [], False: []}
    for row in shipped["train"]:
        meta = row["metadata"]
        by_label[meta["chosen_correct"]].append(row["score_chosen"])
        by_label[meta["rejected_correct"]].append(row["score_rejected"])
    mean = {label: sum(values) / len(values) for label, values in by_label.items()}
    assert mean[True] == pytest.approx(ANNOTATOR["correct_mean"], abs=0.3)
    assert mean[False] == pytest.approx(ANNOTATOR["incorrect_mean"], abs=0.3)


def test_committed_prompts_regenerate_from_the_seed(shipped: dict) -> None:
    """The pure-Python prompt plan of the build reproduces the committed prompts exactly."""
    settings = shipped["manifest"]["settings"]
    plan = plan_prompts(BuildConfig(**settings))
    for split in ("train", "val"):
        shipped_prompts = {(row["metadata"]["prompt_id"], row["prompt"]) for row in shipped[split]}
        assert shipped_prompts == {(record.prompt_id, record.prompt) for record in plan[split]}
    assert {(row["prompt_id"], row["prompt"]) for row in shipped["test"]} == {
        (record.prompt_id, record.prompt) for record in plan["test"]
    }


def test_committed_variants_regenerate_from_the_seed(shipped: dict) -> None:
    seed = shipped["manifest"]["seed"]
    cache: dict[str, set[str]] = {}
    checked = 0
    for row in shipped["train"] + shipped["val"]:
        meta = row["metadata"]
        prompt = row["prompt"]
        if prompt not in cache:
            family = FAMILIES[meta["family"]]
            cache[prompt] = {variant.text for variant in family.variants(meta["checker"], variant_rng(seed, prompt))}
        for side in ("chosen", "rejected"):
            if meta[f"{side}_source"].startswith("variant"):
                assert row[side] in cache[prompt], row["pair_id"]
                checked += 1
    assert checked > 0


# ---------------------------------------------------------------------------------------------------------
# The build, with a fake model
# ---------------------------------------------------------------------------------------------------------

SMALL = {
    "train_pairs_per_family": 12,
    "train_prompts_per_family": 4,
    "val_prompts_per_family": 3,
    "test_prompts_per_family": 3,
}


def fake_generate(prompts: list[str], num_return_sequences: int, sample: bool) -> list[list[str]]:
    """A deterministic stand-in for the model: answers that depend on the prompt text only."""
    answers = []
    for prompt in prompts:
        code = zlib.crc32(prompt.encode())
        answers.append([f"The answer is {(code + index) % 20}." for index in range(num_return_sequences)])
    return answers


def test_build_is_deterministic_from_the_seed() -> None:
    first = build_dataset(BuildConfig(seed=3, **SMALL), fake_generate)
    second = build_dataset(BuildConfig(seed=3, **SMALL), fake_generate)
    assert (first.train, first.val, first.test) == (second.train, second.val, second.test)
    assert first.stats == second.stats
    other = build_dataset(BuildConfig(seed=4, **SMALL), fake_generate)
    assert {row["prompt"] for row in other.train} != {row["prompt"] for row in first.train}


def test_build_noise_counts_are_exact() -> None:
    config = BuildConfig(seed=1, flip_fraction=0.25, ambiguous_fraction=0.15, **SMALL)
    data = build_dataset(config, fake_generate)
    total = len(data.train)
    assert total == SMALL["train_pairs_per_family"] * len(FAMILIES)
    assert sum(row["metadata"]["label_flipped"] for row in data.train) == round(0.25 * total)
    assert sum(row["metadata"]["ambiguous"] for row in data.train) == round(0.15 * total)
    clean = build_dataset(BuildConfig(seed=1, flip_fraction=0.0, ambiguous_fraction=0.0, **SMALL), fake_generate)
    assert all(row["metadata"]["chosen_correct"] and not row["metadata"]["rejected_correct"] for row in clean.train)


def test_build_rejects_impossible_settings() -> None:
    with pytest.raises(ValueError):
        BuildConfig(flip_fraction=0.7, ambiguous_fraction=0.4).validate()
    with pytest.raises(ValueError):
        BuildConfig(families=["add2", "no_such_family"]).validate()
    with pytest.raises(ValueError):
        plan_prompts(BuildConfig(families=["weekday"], test_prompts_per_family=60, val_prompts_per_family=60))
