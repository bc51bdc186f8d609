"""Where preference pairs come from: local files, the built-in set, and Hugging Face hub datasets.

Every source turns its rows into :class:`~prefalign.data.records.PreferencePair` records for two splits,
``train`` and ``val``. Local files (JSON Lines, JSON, Parquet) need the columns ``prompt``, ``chosen`` and
``rejected`` (renamable through ``columns``); ``pair_id``, ``score_chosen`` and ``score_rejected`` are
optional; ``metadata``, when given, is an object, and every other column is added to it. Message lists use
the roles ``system``, ``user`` and ``assistant``, and a completion's messages are all ``assistant``. Files are
UTF-8. Errors name the file, the line or row, and the key.

Hub datasets (need internet) are mapped to the same record:

* ``HuggingFaceH4/ultrafeedback_binarized`` (splits ``train_prefs`` / ``test_prefs``): prompt = the messages
  before the final assistant turn; ``score_chosen`` / ``score_rejected`` are the GPT-4 annotator's ratings.
* ``Anthropic/hh-rlhf`` helpful-base (splits ``train`` / ``test``): the transcript is split into turns; the
  prompt is the conversation up to the last Assistant turn, the completion is that turn.
* ``openai/summarize_from_feedback`` comparisons (splits ``train`` / ``validation``): the prompt is the Reddit
  post ending with ``TL;DR:``; chosen is the summary the labeller picked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefalign.data.records import COMPLETION_ROLES, PROMPT_ROLES, DataError, PreferencePair, content_id, validate_text

SPLITS = ("train", "val")
SCORE_KEYS = ("score_chosen", "score_rejected")


def decode_utf8(raw: bytes, where: str, first_line: int = 1) -> str:
    """``raw`` as UTF-8 text; otherwise a :class:`DataError` naming the line (``first_line`` is the line of
    ``raw``'s first byte) and the byte of the first invalid sequence."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line_number = first_line + raw.count(b"\n", 0, error.start)
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        raise DataError(
            f"{where}:{line_number}: not valid UTF-8 (byte {raw[error.start]:#04x} at byte column {column}); "
            "save the file as UTF-8"
        ) from None


def _unencodable(value: Any, key: str) -> tuple[str, str, UnicodeEncodeError] | None:
    """The first string under ``value`` (a key or a value) that is not valid Unicode: its key path, the string and
    the error; ``None`` when all are."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as error:
            return key, value, error
        return None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for name, item in items:
        path = f"{key}[{name}]" if isinstance(name, int) else f"{key}.{name}" if key else str(name)
        found = _unencodable(name, path) if isinstance(name, str) else None
        found = found or _unencodable(item, path)
        if found:
            return found
    return None


def check_unicode(row: dict[str, Any], where: str) -> None:
    """Refuse a JSON row holding text that is not valid Unicode: a lone surrogate such as ``"\\ud800"``, which
    JSON can escape but UTF-8 cannot encode (tokenizers, hashes and every file written later would fail on it).

    Raises:
        DataError: naming ``where`` (file and line), the key and the character.
    """
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")  # one pass in C for the usual, valid row
    except UnicodeEncodeError:
        found = _unencodable(row, "")
        if found is None:  # pragma: no cover - json.dumps failed on a string the walk found valid
            raise
        key, text, error = found
        key = key.encode("utf-8", "backslashreplace").decode("utf-8")  # a key may hold the surrogate itself
        raise DataError(
            f"{where}: key '{key}' holds text that is not valid Unicode ({error.reason}: "
            f"{text[error.start:error.end]!r} at character {error.start}); a lone surrogate comes from a JSON escape "
            "of broken UTF-16: fix or drop that text"
        ) from None


def read_rows(path: str | Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Rows of a ``.jsonl`` / ``.json`` / ``.parquet`` file, each with a location such as ``data.jsonl:12``.

    Raises:
        DataError: bytes that are not UTF-8, malformed JSON, a row that is not an object, or text that is not
            valid Unicode (:func:`check_unicode`), each named by file, line or row, and key.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"data file {path} does not exist")
    suffixes = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if suffixes in (".jsonl", ".jsonl.gz"):
        import gzip

        opener = gzip.open if path.suffix == ".gz" else open
        # read bytes and decode line by line, so that a non-UTF-8 byte is reported with its line
        with opener(path, "rb") as handle:
            for line_number, raw_line in enumerate(handle, start=1):
                line = decode_utf8(raw_line, str(path), line_number)
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise DataError(f"{path}:{line_number}: malformed JSON ({error.msg} at column {error.colno})") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{line_number}: expected a JSON object, got {type(row).__name__}")
                check_unicode(row, f"{path}:{line_number}")
                yield f"{path}:{line_number}", row
    elif suffixes == ".json":
        try:
            payload = json.loads(decode_utf8(path.read_bytes(), str(path)))
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: malformed JSON ({error.msg} at line {error.lineno}, column {error.colno})") from None
        rows = payload.get("data") if isinstance(payload, dict) else payload
        if not isinstance(rows, list):
            raise DataError(f"{path}: expected a list of objects (or {{'data': [...]}})")
        for index, row in enumerate(rows):
            if not isinstance(row, dict):
                raise DataError(f"{path}: row {index}: expected a JSON object, got {type(row).__name__}")
            check_unicode(row, f"{path}: row {index}")
            yield f"{path}: row {index}", row
    elif suffixes == ".parquet":
        import pyarrow.parquet as pq

        for index, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}: row {index}", row
    else:
        raise DataError(f"{path}: unsupported file type {suffixes!r} (use .jsonl, .jsonl.gz, .json or .parquet)")


def pair_from_row(row: dict[str, Any], where: str, columns: dict[str, str] | None = None) -> PreferencePair:
    """Build a pair from one row; ``columns`` maps prefalign's keys to the file's column names."""
    columns = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", **(columns or {})}
    values = {}
    for key in ("prompt", "chosen", "rejected"):
        column = columns[key]
        if column not in row:
            raise DataError(f"{where}: missing key '{column}' (have: {', '.join(sorted(row)) or 'nothing'})")
        roles = COMPLETION_ROLES if key in ("chosen", "rejected") else PROMPT_ROLES
        values[key] = validate_text(row[column], key=column, where=where, roles=roles)
    scores = {}
    for key in SCORE_KEYS:
        column = columns.get(key, key)
        if row.get(column) is not None:
            try:
                scores[key] = float(row[column])
            except (TypeError, ValueError):
                raise DataError(f"{where}: key '{column}' must be a number, got {row[column]!r:.40}") from None
    used = {columns[key] for key in ("prompt", "chosen", "rejected")} | {columns.get(k, k) for k in SCORE_KEYS}
    used.add("pair_id")
    if row.get("metadata") is not None and not isinstance(row["metadata"], dict):
        raise DataError(f"{where}: key 'metadata' must be an object, got {type(row['metadata']).__name__}")
    metadata = dict(row.get("metadata") or {})
    metadata.update({key: value for key, value in row.items() if key not in used and key != "metadata"})
    pair_id = row.get("pair_id")
    pair_id = str(pair_id) if pair_id is not None else content_id(values["prompt"], values["chosen"], values["rejected"])
    return PreferencePair(pair_id=pair_id, scores=scores, metadata=metadata, **values)


class PreferenceSource:
    """Base class: a named provider of ``train`` and ``val`` pairs."""

    name: str = "source"

    def load(self, split: str) -> list[PreferencePair]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Provenance written next to every artifact built from this source."""
        return {"source": type(self).__name__, "name": self.name}


class LocalSource(PreferenceSource):
    """Pairs from local files.

    Args:
        train_path: training pairs (``.jsonl``, ``.json`` or ``.parquet``).
        val_path: validation pairs; if omitted, ``val_fraction`` of the training file is held out.
        columns: optional renaming, e.g. ``{prompt: question, chosen: answer_good, rejected: answer_bad}``.
        val_fraction: share of training pairs held out when there is no validation file (the last rows).
        name: name used in provenance and run names.
    """

    def __init__(
        self,
        train_path: str,
        val_path: str | None = None,
        columns: dict[str, str] | None = None,
        val_fraction: float = 0.05,
        name: str = "local",
    ) -> None:
        self.train_path = train_path
        self.val_path = val_path
        self.columns = dict(columns or {})
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 <= val_fraction <= 1:
            raise ValueError(f"data.source.val_fraction must be a fraction in [0, 1], got {val_fraction!r}")
        self.val_fraction = val_fraction
        self.name = name

    def _read(self, path: str) -> list[PreferencePair]:
        pairs = [pair_from_row(row, where, self.columns) for where, row in read_rows(path)]
        if not pairs:
            raise DataError(f"{Path(path).expanduser()}: the file holds no pairs")
        return pairs

    def load(self, split: str) -> list[PreferencePair]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if self.val_path is not None:
            return self._read(self.train_path if split == "train" else self.val_path)
        pairs = self._read(self.train_path)
        n_val = max(1, int(round(len(pairs) * self.val_fraction)))
        if n_val >= len(pairs):
            # at least one pair is held out, so a one-pair file cannot be helped by a lower val_fraction
            lower = "lower data.source.val_fraction, " if len(pairs) > 1 else ""
            raise DataError(
                f"{Path(self.train_path).expanduser()}: {len(pairs)} pair(s) are too few to hold out a validation "
                f"split (data.source.val_fraction={self.val_fraction} holds out {n_val}, leaving "
                f"{len(pairs) - n_val} for training); add pairs, {lower}or give a validation file with "
                "data.source.val_path"
            )
        return pairs[: len(pairs) - n_val] if split == "train" else pairs[len(pairs) - n_val :]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "train_path": self.train_path, "val_path": self.val_path}


class BuiltinSource(LocalSource):
    """The embedded verifiable preference set shipped in ``prefalign/data/builtin/files``.

    Rebuild it with ``python -m prefalign.data.builtin.build`` (see :mod:`prefalign.data.builtin`).

    Args:
        name: name used in provenance and run names.
        val: the validation split: ``val`` (the 300 shipped clean pairs) or ``test_pairs`` (about 4,300 clean
            programmatic pairs on the 300 test prompts, :mod:`prefalign.data.builtin.heldout_pairs`).
    """

    VALIDATION = ("val", "test_pairs")

    def __init__(self, name: str = "builtin", val: str = "val") -> None:
        if val not in self.VALIDATION:
            raise ValueError(f"data.source.val={val!r}: expected one of {self.VALIDATION}")
        folder = Path(__file__).parent / "builtin" / "files"
        super().__init__(str(folder / "train.jsonl"), str(folder / "val.jsonl"), name=name)
        self.val = val

    def load(self, split: str) -> list[PreferencePair]:
        if split == "val" and self.val == "test_pairs":
            from prefalign.data.builtin.heldout_pairs import heldout_pairs

            return heldout_pairs()
        return super().load(split)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "val": self.val}


class HubSource(PreferenceSource):
    """A preference dataset from the Hugging Face hub (needs internet the first time; cached by ``datasets``).

    Subclasses map one dataset's rows to pairs in :meth:`convert`.

    Args:
        dataset: hub name or a local folder saved with ``datasets``.
        subset: the dataset's configuration name or ``data_dir``.
        train_split, val_split: split names in the dataset.
        name: name used in provenance and run names.
    """

    dataset: str = ""
    subset: str | None = None

    def __init__(
        self,
        dataset: str | None = None,
        subset: str | None = None,
        train_split: str = "train",
        val_split: str = "test",
        name: str | None = None,
    ) -> None:
        self.dataset = dataset or self.dataset
        self.subset = subset if subset is not None else self.subset
        self.splits = {"train": train_split, "val": val_split}
        self.name = name or self.dataset.split("/")[-1]

    def _load_rows(self, split: str) -> Any:
        import datasets

        return datasets.load_dataset(self.dataset, self.subset, split=self.splits[split])

    def convert(self, row: dict[str, Any], where: str) -> PreferencePair:
        raise NotImplementedError

    def load(self, split: str) -> list[PreferencePair]:
        rows = self._load_rows(split)
        return [self.convert(row, f"{self.dataset}[{self.splits[split]}] row {i}") for i, row in enumerate(rows)]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "dataset": self.dataset, "subset": self.subset, "splits": self.splits}


class UltraFeedbackSource(HubSource):
    """``HuggingFaceH4/ultrafeedback_binarized``: conversational pairs with GPT-4 scores."""

    dataset = "HuggingFaceH4/ultrafeedback_binarized"

    def __init__(self, train_split: str = "train_prefs", val_split: str = "test_prefs", **kwargs: Any) -> None:
        super().__init__(train_split=train_split, val_split=val_split, **kwargs)

    def convert(self, row: dict[str, Any], where: str) -> PreferencePair:
        for key in ("chosen", "rejected"):
            if key not in row:
                raise DataError(f"{where}: missing key '{key}'")
        chosen = validate_text(row["chosen"], key="chosen", where=where)
        rejected = validate_text(row["rejected"], key="rejected", where=where)
        if isinstance(chosen, str) or isinstance(rejected, str):
            prompt = validate_text(row.get("prompt", ""), key="prompt", where=where)
            # not split into prompt and final turn: each is a whole completion
            chosen = validate_text(chosen, key="chosen", where=where, roles=COMPLETION_ROLES)
            rejected = validate_text(rejected, key="rejected", where=where, roles=COMPLETION_ROLES)
        else:
            if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
                raise DataError(f"{where}: the last message of 'chosen' and 'rejected' must be the assistant's")
            prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
        scores = {key: float(row[key]) for key in SCORE_KEYS if row.get(key) is not None}
        pair_id = str(row.get("prompt_id") or content_id(prompt, chosen, rejected))
        return PreferencePair(pair_id, prompt, chosen, rejected, scores=scores)


HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def parse_hh_transcript(text: str, where: str) -> list[dict[str, str]]:
    """Split an HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...") into chat messages."""
    parts = HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise DataError(f"{where}: not an HH-RLHF transcript (expected '\\n\\nHuman: ...' turns)")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[parts[i]], "content": parts[i + 1]} for i in range(1, len(parts) - 1, 2)]


class HHRLHFSource(HubSource):
    """``Anthropic/hh-rlhf`` (helpful-base by default): prompt = conversation up to the last Assistant turn."""

    dataset = "Anthropic/hh-rlhf"

    def __init__(self, subset: str = "helpful-base", **kwargs: Any) -> None:
        super().__init__(subset=subset, **kwargs)

    def _load_rows(self, split: str) -> Any:
        import datasets

        return datasets.load_dataset(self.dataset, data_dir=self.subset, split=self.splits[split])

    def convert(self, row: dict[str, Any], where: str) -> PreferencePair:
        chosen = parse_hh_transcript(row["chosen"], where)
        rejected = parse_hh_transcript(row["rejected"], where)
        if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
            raise DataError(f"{where}: the transcript does not end with an Assistant turn")
        if chosen[:-1] != rejected[:-1]:
            raise DataError(f"{where}: 'chosen' and 'rejected' do not share the conversation before the last turn")
        prompt = chosen[:-1]
        return PreferencePair(content_id(prompt, chosen[-1:], rejected[-1:]), prompt, chosen[-1:], rejected[-1:])


class TLDRSource(HubSource):
    """``openai/summarize_from_feedback`` comparisons: Reddit post -> summary, prompt ending with ``TL;DR:``."""

    dataset = "openai/summarize_from_feedback"
    subset = "comparisons"

    def __init__(self, train_split: str = "train", val_split: str = "validation", **kwargs: Any) -> None:
        super().__init__(train_split=train_split, val_split=val_split, **kwargs)

    def convert(self, row: dict[str, Any], where: str) -> PreferencePair:
        try:
            info, summaries, choice = row["info"], row["summaries"], int(row["choice"])
        except KeyError as error:
            raise DataError(f"{where}: missing key {error}") from None
        if choice not in (0, 1) or len(summaries) != 2:
            raise DataError(f"{where}: expected two summaries and choice 0 or 1")
        post = info.get("post") or info.get("article") or ""
        prompt = f"SUBREDDIT: r/{info.get('subreddit') or ''}\nTITLE: {info.get('title') or ''}\nPOST: {post}\nTL;DR:"
        chosen = " " + summaries[choice]["text"].strip()
        rejected = " " + summaries[1 - choice]["text"].strip()
        pair_id = f"{info.get('id', content_id(prompt, chosen, rejected))}-{content_id(prompt, chosen, rejected)[:6]}"
        return PreferencePair(pair_id, prompt, chosen, rejected)
