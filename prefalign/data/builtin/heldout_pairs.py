"""Clean held-out preference pairs on the built-in set's 300 test prompts, for held-out accuracy in numbers that
resolve small differences.

The shipped validation split has 300 pairs: a paired 95% interval on reward accuracy is then about +-5 points
wide. Here every test prompt gets every pair of a programmatic right variant (chosen) and a programmatic wrong
variant (rejected) of its family (:func:`prefalign.data.builtin.tasks.labelled_variants`, each labelled by the
checker, the variants drawn from a generator seeded by the prompt), about 4,300 pairs in all. They are clean by
construction, on prompts no training or validation pair has, but they are programmatic texts only (the
training pairs also hold the embedded model's own answers), so their accuracy is a different, easier-to-resolve
measurement than the validation split's, not the same one with more pairs.

Used as ``data.source.val=test_pairs`` (:class:`~prefalign.data.sources.BuiltinSource`) and by
``python -m bench.paired --val test_pairs`` (the module is named for what it makes; ``test`` is the prompts' split).
"""

from __future__ import annotations

import json
import random
from functools import lru_cache
from pathlib import Path

from prefalign.data.builtin.tasks import labelled_variants
from prefalign.data.records import PreferencePair

TEST_FILE = Path(__file__).resolve().parent / "files" / "test.jsonl"


def variants_rng(seed: int, prompt: str) -> random.Random:
    """The generator of a test prompt's variants (the seed and the prompt text only)."""
    return random.Random(f"{seed}:test-pairs:{prompt}")


@lru_cache(maxsize=4)
def _pairs(seed: int, path: str) -> tuple[PreferencePair, ...]:
    made = []
    with open(path, encoding="utf-8") as stream:
        for line in stream:
            record = json.loads(line)
            variants = labelled_variants(record["checker"], variants_rng(seed, record["prompt"]))
            right = [variant.text for variant, correct in variants if correct]
            wrong = [variant.text for variant, correct in variants if not correct]
            for i, chosen in enumerate(right):
                for j, rejected in enumerate(wrong):
                    made.append(
                        PreferencePair(
                            f"{record['prompt_id']}-r{i}-w{j}",
                            record["prompt"],
                            chosen,
                            rejected,
                            metadata={"family": record["family"], "prompt_id": record["prompt_id"],
                                      "label_flipped": False, "ambiguous": False,
                                      "chosen_correct": True, "rejected_correct": False,
                                      "chosen_source": "variant_right", "rejected_source": "variant_wrong"},
                        )
                    )
    return tuple(made)


def heldout_pairs(seed: int = 0, path: str | Path = TEST_FILE) -> list[PreferencePair]:
    """Every (right variant, wrong variant) pair of every test prompt, in file order (module docstring)."""
    return [PreferencePair(p.pair_id, p.prompt, p.chosen, p.rejected, {}, dict(p.metadata)) for p in _pairs(seed, str(path))]
