"""Benchmark prompt sets: the built-in held-out test prompts, and hub or local-file suites.

Hub suites need internet; each also loads from a local file with the same columns (``bench.path=...``, JSON
Lines, JSON or Parquet). A prompt column may hold a string, a list of turns (MT-Bench / Vicuna-Bench
``turns``), a list of ``{"content"}`` dicts (Arena-Hard) or a chat message list.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefalign.data.noise import check_count
from prefalign.data.records import DataError, Text
from prefalign.data.sources import parse_hh_transcript, read_rows
from prefalign.evaluation.judges import EvalItem
from prefalign.evaluation.metrics import ApproximateLengthControl, LengthControl


class Benchmark:
    """Base class: a named list of :class:`EvalItem`.

    Args:
        name: the benchmark's name in tables.
        max_new_tokens: generation budget per answer for this benchmark.
        limit: evaluate only the first N prompts (``null``: all).
        length_control: the length-controlled win rate this benchmark reports (``null``: prefalign's
            approximation, for benchmarks with no difficulty term; AlpacaEval's has its own).
    """

    def __init__(
        self, name: str, max_new_tokens: int = 512, limit: int | None = None, length_control: LengthControl | None = None
    ) -> None:
        self.name = name
        self.max_new_tokens = check_count("bench.max_new_tokens", max_new_tokens)
        # a negative limit would slice from the end (all prompts but the last N)
        self.limit = check_count("bench.limit", limit, optional=True)
        self.length_control = length_control if length_control is not None else ApproximateLengthControl()

    def _items(self) -> list[EvalItem]:
        raise NotImplementedError

    def load(self) -> list[EvalItem]:
        items = self._items()
        if not items:
            raise DataError(f"benchmark {self.name}: no prompts")
        return items[: self.limit] if self.limit else items


class BuiltinBenchmark(Benchmark):
    """The embedded data set's prompts with their checkers (for the verifier judge): by default the 300 held-out
    test prompts; ``split=train`` or ``split=val`` gives the distinct prompts of the training or validation pairs
    (for sampling new responses to them, :mod:`prefalign.online`), in the order of first appearance."""

    def __init__(self, name: str = "builtin", max_new_tokens: int = 48, limit: int | None = None, split: str = "test") -> None:
        super().__init__(name, max_new_tokens, limit)
        if split not in ("train", "val", "test"):
            raise ValueError(f"the built-in prompts' split must be train, val or test, got {split!r}")
        self.split = split
        self.path = Path(__file__).resolve().parents[1] / "data" / "builtin" / "files" / f"{split}.jsonl"

    def _pair_prompts(self) -> list[EvalItem]:
        items: dict[str, EvalItem] = {}
        for where, row in read_rows(self.path):
            metadata = row.get("metadata") or {}
            for key in ("prompt_id", "checker"):
                if key not in metadata:
                    raise DataError(f"{where}: missing key 'metadata.{key}'")
            if "prompt" not in row:
                raise DataError(f"{where}: missing key 'prompt'")
            if metadata["prompt_id"] not in items:
                items[metadata["prompt_id"]] = EvalItem(
                    metadata["prompt_id"], row["prompt"], metadata["checker"], None, metadata.get("family")
                )
        return list(items.values())

    def _items(self) -> list[EvalItem]:
        if self.split != "test":
            return self._pair_prompts()
        items = []
        for where, row in read_rows(self.path):
            for key in ("prompt_id", "prompt", "checker"):
                if key not in row:
                    raise DataError(f"{where}: missing key '{key}'")
            items.append(
                EvalItem(row["prompt_id"], row["prompt"], row["checker"], row.get("reference_answer"), row.get("family"))
            )
        return items


def first_turn(value: Any, where: str, key: str, turns: str) -> Text:
    """The prompt of a row: a string, or the first user turn (or all user turns, as messages)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            texts = value
        elif all(isinstance(v, dict) and "role" in v for v in value):
            return value  # already a conversation
        elif all(isinstance(v, dict) and "content" in v for v in value):
            texts = [v["content"] for v in value]
        else:
            raise DataError(f"{where}: key '{key}' is not a string, a list of turns or a message list")
        if turns == "first":
            return texts[0]
        return [{"role": "user", "content": text} for text in texts]
    raise DataError(f"{where}: key '{key}' is empty or of type {type(value).__name__}")


class PromptSetBenchmark(Benchmark):
    """Prompts from a hub dataset or a local file.

    Args:
        name: table name.
        dataset: hub name (or ``json`` with ``data_files``), used when ``path`` is null.
        subset: configuration / ``data_dir`` of the hub dataset.
        split: split to read.
        data_files: file URL(s) for ``dataset: json``.
        path: a local file with the same columns (takes precedence).
        prompt_column, id_column, reference_column, category_column: column names.
        turns: ``first`` (the first user turn) or ``all`` (every user turn; multi-turn answers are generated
            turn by turn by the evaluation).
        hh_format: the prompt column holds HH-RLHF transcripts; the prompt is everything before the last
            Assistant turn.
        max_new_tokens, limit, length_control: see :class:`Benchmark`.
    """

    def __init__(
        self,
        name: str,
        dataset: str | None = None,
        subset: str | None = None,
        split: str = "train",
        data_files: str | list[str] | None = None,
        path: str | None = None,
        prompt_column: str = "prompt",
        id_column: str | None = None,
        reference_column: str | None = None,
        category_column: str | None = None,
        turns: str = "first",
        hh_format: bool = False,
        max_new_tokens: int = 1024,
        limit: int | None = None,
        length_control: LengthControl | None = None,
    ) -> None:
        super().__init__(name, max_new_tokens, limit, length_control)
        if turns not in ("first", "all"):
            raise ValueError(f"bench.turns must be first or all, got {turns!r}")
        self.dataset, self.subset, self.split, self.data_files, self.path = dataset, subset, split, data_files, path
        self.prompt_column, self.id_column = prompt_column, id_column
        self.reference_column, self.category_column = reference_column, category_column
        self.turns, self.hh_format = turns, hh_format

    def _rows(self) -> list[tuple[str, dict[str, Any]]]:
        if self.path:
            return list(read_rows(self.path))
        if not self.dataset:
            raise ValueError(f"benchmark {self.name}: set bench.path (a local file) or bench.dataset (a hub name)")
        import datasets

        kwargs: dict[str, Any] = {"split": self.split}
        if self.data_files:
            kwargs["data_files"] = self.data_files
        if self.hh_format and self.subset:
            kwargs["data_dir"] = self.subset
            rows = datasets.load_dataset(self.dataset, **kwargs)
        else:
            rows = datasets.load_dataset(self.dataset, self.subset, **kwargs)
        return [(f"{self.dataset}[{self.split}] row {i}", row) for i, row in enumerate(rows)]

    def _items(self) -> list[EvalItem]:
        items = []
        for index, (where, row) in enumerate(self._rows()):
            if self.prompt_column not in row:
                raise DataError(f"{where}: missing key '{self.prompt_column}' (have: {', '.join(sorted(row))})")
            if self.hh_format:
                prompt: Text = parse_hh_transcript(row[self.prompt_column], where)[:-1]
            else:
                prompt = first_turn(row[self.prompt_column], where, self.prompt_column, self.turns)
            for column in (self.id_column, self.reference_column, self.category_column):
                if column and column not in row:
                    raise DataError(f"{where}: missing key '{column}'")
            item_id = str(row[self.id_column]) if self.id_column else f"{self.name}-{index:05d}"
            reference = row.get(self.reference_column) if self.reference_column else None
            category = row.get(self.category_column) if self.category_column else None
            items.append(EvalItem(item_id, prompt, None, reference, category))
        return items
