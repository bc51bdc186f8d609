"""Cleaning, tokenising and batching preference pairs for training, scoring and evaluation.

Nothing is dropped silently. Each split goes through :func:`prepare_split`, which drops pairs with an empty
prompt or completion, pairs whose chosen and rejected are identical (as text, or as token ids), pairs whose
chosen and rejected token ids become identical once truncated, and repeated ``pair_id``\\ s, and counts
truncations (policy in :mod:`prefalign.data.tokenization`). The counts and the dropped pair ids are logged
and written to ``data_report.json``; with ``strict=true`` any drop or truncation raises instead. Training pairs
with the content of a validation pair are counted and warned about (:func:`same_content`), and refused with
``strict=true``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from prefalign import distributed
from prefalign.data.collate import collate_pairs
from prefalign.data.noise import check_count, flip_pairs
from prefalign.data.sampling import LengthGroupedBatchSampler, OrderedBatchSampler, RandomBatchSampler, ResumableLoader
from prefalign.data.records import DataError, PreferencePair, content_id, pairs_fingerprint, text_of
from prefalign.data.restrictions import NO_RESTRICTIONS, PairRestrictions
from prefalign.data.scores_file import read_scores_table, scores_path
from prefalign.data.sources import PreferenceSource
from prefalign.data.tokenization import PairTokenizer, TokenizedPair

log = logging.getLogger(__name__)

DROP_REASONS = ("empty_prompt", "empty_completion", "identical", "identical_after_truncation", "duplicate_id")


def prepare_split(
    pairs: list[PreferencePair], pair_tokenizer: PairTokenizer, split: str, strict: bool = False
) -> tuple[list[PreferencePair], list[TokenizedPair], dict[str, Any]]:
    """Drop unusable pairs, tokenise the rest, and report what happened.

    A pair whose chosen and rejected token ids are equal carries no preference (its implicit reward margin is
    0 whatever the model): it is dropped as ``identical`` when neither completion was truncated (e.g. an answer
    and the same answer ending with the EOS text), and as ``identical_after_truncation`` when truncation made
    them equal.

    Returns:
        The kept pairs, their tokenisation (same order), and a report with counts per reason, the dropped pair
        ids per reason, and truncation counts.
    """
    dropped: dict[str, list[str]] = {reason: [] for reason in DROP_REASONS}
    seen: set[str] = set()
    kept_pairs, kept_tokens = [], []
    truncated: Counter[str] = Counter()
    truncated_ids: list[str] = []
    for pair in pairs:
        if pair.pair_id in seen:
            dropped["duplicate_id"].append(pair.pair_id)
            continue
        seen.add(pair.pair_id)
        if not text_of(pair.prompt).strip():
            dropped["empty_prompt"].append(pair.pair_id)
            continue
        if not text_of(pair.chosen).strip() or not text_of(pair.rejected).strip():
            dropped["empty_completion"].append(pair.pair_id)
            continue
        if pair.chosen == pair.rejected:
            dropped["identical"].append(pair.pair_id)
            continue
        tokens = pair_tokenizer(pair)
        if tokens.chosen_ids == tokens.rejected_ids:
            cut = tokens.truncated["chosen"] or tokens.truncated["rejected"]
            dropped["identical_after_truncation" if cut else "identical"].append(pair.pair_id)
            continue
        if any(tokens.truncated.values()):
            truncated_ids.append(pair.pair_id)
            truncated.update(key for key, value in tokens.truncated.items() if value)
        kept_pairs.append(pair)
        kept_tokens.append(tokens)
    report = {
        "split": split,
        "loaded": len(pairs),
        "kept": len(kept_pairs),
        "dropped": {reason: len(ids) for reason, ids in dropped.items()},
        "dropped_pair_ids": {reason: ids for reason, ids in dropped.items() if ids},
        "truncated": {key: truncated.get(key, 0) for key in ("prompt", "chosen", "rejected")},
        "truncated_pair_ids": truncated_ids,
    }
    n_dropped = sum(report["dropped"].values())
    if n_dropped or truncated_ids:
        message = (
            f"{split}: dropped {n_dropped} of {len(pairs)} pairs ({_counts(report['dropped'])}); "
            f"truncated {len(truncated_ids)} ({_counts(report['truncated'])})"
        )
        if strict:
            examples = [f"{reason}: {ids[:5]}" for reason, ids in report["dropped_pair_ids"].items()]
            if truncated_ids:
                examples.append(f"truncated: {truncated_ids[:5]}")
            raise DataError(f"data.strict=true and {message}; e.g. {'; '.join(examples)}")
        log.warning(message)
    if not kept_pairs:
        raise DataError(f"{split}: no usable pairs left out of {len(pairs)} ({_counts(report['dropped'])})")
    return kept_pairs, kept_tokens, report


def same_content(train: list[PreferencePair], val: list[PreferencePair], strict: bool = False) -> dict[str, Any]:
    """The training pairs whose prompt, chosen and rejected are those of a validation pair (by content, whatever
    their ids): validation on them measures memory, not generalisation.

    Returns:
        ``{"count", "train_pair_ids", "val_pair_ids"}`` (the ``same_content_in_train_and_val`` of ``data_report.json``).

    Raises:
        DataError: with ``strict``, when there is any such pair.
    """
    val_ids: dict[str, list[str]] = {}
    for pair in val:
        val_ids.setdefault(content_id(pair.prompt, pair.chosen, pair.rejected), []).append(pair.pair_id)
    train_ids, matched = [], []
    for pair in train:
        found = val_ids.get(content_id(pair.prompt, pair.chosen, pair.rejected))
        if found:
            train_ids.append(pair.pair_id)
            matched.extend(found)
    report = {"count": len(train_ids), "train_pair_ids": train_ids, "val_pair_ids": sorted(set(matched))}
    if train_ids:
        message = (
            f"{len(train_ids)} of {len(train)} training pairs have the content (prompt, chosen, rejected) of a "
            f"validation pair, e.g. train {train_ids[:5]} = val {report['val_pair_ids'][:5]}"
        )
        if strict:
            raise DataError(f"data.strict=true and {message}")
        log.warning("%s; the validation metrics are partly measured on training pairs", message)
    return report


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{key}={value}" for key, value in counts.items() if value) or "none"


class PairDataset(Dataset):
    """Tokenised pairs, optionally with cached reference log-probs and mismatched (KTO) completions.

    An item is a dict: ``pair_id``, ``index``, the token ids (``prompt_ids``, ``chosen_ids``, ``rejected_ids``, and
    ``kl_*_ids`` when mismatched), ``reference`` (the pair's reference log-probs in the losses' format,
    ``{"chosen_logps": ..., "rejected_logps": ...}``, with ``kl_*_logps`` when mismatched) once they are attached,
    and ``weight`` under ``data.weights``.

    Args:
        items: tokenised pairs.
        max_length: maximum prompt + completion length, used to fit mismatched completions.
        mismatched: add, for pair ``i``, the completions of pair ``i - 1`` after pair ``i``'s prompt
            (the KL reference point of KTO, built at data level as TRL does).
    """

    def __init__(self, items: list[TokenizedPair], max_length: int, mismatched: bool = False) -> None:
        self.items = items
        self.max_length = max_length
        self.mismatched = mismatched
        self.reference: dict[str, torch.Tensor] | None = None
        # per-pair loss weights (data.weights), aligned with items
        self.weights: torch.Tensor | None = None
        # per-pair scores of the training order (data.order_by), aligned with items
        self.order_scores: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        example: dict[str, Any] = {
            "pair_id": item.pair_id,
            "index": index,
            "prompt_ids": item.prompt_ids,
            "chosen_ids": item.chosen_ids,
            "rejected_ids": item.rejected_ids,
        }
        if self.mismatched:
            other = self.items[index - 1]  # index -1 wraps to the last pair
            room = self.max_length - len(item.prompt_ids)
            example["kl_chosen_ids"] = other.chosen_ids[:room]
            example["kl_rejected_ids"] = other.rejected_ids[:room]
        if self.reference is not None:
            example["reference"] = {f"{name}_logps": values[index] for name, values in self.reference.items()}
        if self.weights is not None:
            example["weight"] = self.weights[index]
        return example

    def fingerprint(self) -> str:
        """Identifies the exact token ids (and so the data, the tokenizer and the truncation settings)."""
        digest = hashlib.sha1()
        for item in self.items:
            digest.update(item.pair_id.encode())
            for ids in (item.prompt_ids, item.chosen_ids, item.rejected_ids):
                digest.update(b"|" + ",".join(map(str, ids)).encode())
        digest.update(f"mismatched={self.mismatched}".encode())
        return digest.hexdigest()[:16]


def read_selection(path: str, data_fingerprint: str) -> dict[str, Any]:
    """A ``selection.json`` written by ``select.py``, checked against the pairs it is applied to.

    Raises:
        DataError: the file is missing or malformed, or was made on other data (its ``data_fingerprint`` differs).
    """
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / "selection.json"
    if not file.exists():
        raise DataError(f"data.selection={path}: {file} does not exist")
    try:
        record = json.loads(file.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"data.selection: {file} is not valid JSON ({error})") from None
    if not isinstance(record, dict):
        raise DataError(f"data.selection: {file} holds a JSON {type(record).__name__}, not a selection.json object")
    for key in ("kept", "rule", "data_fingerprint"):
        if key not in record:
            raise DataError(f"data.selection: {file} has no '{key}' (is it a selection.json written by select.py?)")
    kept = record["kept"]
    if not isinstance(kept, list):
        raise DataError(f"data.selection: {file}: 'kept' must be a list of pair ids, got {type(kept).__name__}")
    odd = [pair_id for pair_id in kept if not isinstance(pair_id, str)]
    if odd:
        raise DataError(f"data.selection: {file}: 'kept' holds {len(odd)} ids that are not strings, e.g. {odd[:5]}")
    repeated = sorted(pair_id for pair_id, count in Counter(kept).items() if count > 1)
    if repeated:
        # a pair is trained on once whatever the count, so the file's counts would not be what was trained on
        raise DataError(f"data.selection: {file}: 'kept' repeats {len(repeated)} pair ids, e.g. {repeated[:5]}")
    if record.get("kept_count") is not None and record["kept_count"] != len(kept):
        raise DataError(
            f"data.selection: {file}: 'kept_count' is {record['kept_count']!r} but 'kept' lists {len(kept)} pair ids"
        )
    if record["data_fingerprint"] != data_fingerprint:
        raise DataError(
            f"data.selection: {file} was made on other data (data fingerprint {record['data_fingerprint']}, the "
            f"training pairs loaded now have {data_fingerprint}); select on scores of these pairs, or load the data "
            "the scores were computed on (same data config, max_train_pairs included)"
        )
    return record | {"file": str(file)}


def read_score_column(spec: str, pair_ids: list[str], data_fingerprint: str, option: str) -> tuple[list[float], str]:
    """One column of a scores file, ``<scores.parquet>:<column>``, in the order of ``pair_ids``.

    Args:
        spec: ``<scores.parquet>:<column>``; a run folder names its scores file (:func:`scores_path`).
        pair_ids: the pairs that need a value.
        data_fingerprint: the fingerprint of their split, checked against the file's provenance.
        option: the config key being read (``data.weights``, ``data.order_by``), named in every error.

    Returns:
        The values, and ``column '<column>' of <file>`` for the messages of further checks.

    Raises:
        DataError: a malformed spec, a missing file or column, scores of other data, pairs without a value, or
            values that are not finite numbers (each named).
    """
    path, sep, name = str(spec).rpartition(":")
    if not sep or not path or not name:
        raise DataError(f"{option}={spec!r}: expected <scores.parquet>:<column>")
    file = scores_path(path)
    if not file.exists():
        raise DataError(f"{option}: {file} does not exist")
    table, provenance = read_scores_table(file)
    recorded = provenance.get("data_fingerprint")
    if recorded is not None and recorded != data_fingerprint:
        raise DataError(
            f"{option}: {file} scores other data (data fingerprint {recorded}, the training pairs loaded now "
            f"have {data_fingerprint})"
        )
    if name not in table.column_names:
        raise DataError(f"{option}: {file} has no column '{name}' (columns: {table.column_names})")
    by_pair = dict(zip(table.column("pair_id").to_pylist(), table.column(name).to_pylist()))
    missing = [pair_id for pair_id in pair_ids if pair_id not in by_pair]
    if missing:
        raise DataError(f"{option}: {file} has no '{name}' for {len(missing)} training pairs, e.g. {missing[:5]}")
    values = [by_pair[pair_id] for pair_id in pair_ids]
    where = f"column '{name}' of {file}"
    finite = [isinstance(value, int | float) and math.isfinite(value) for value in values]  # None, NaN, text: no
    bad = [pair_id for pair_id, ok in zip(pair_ids, finite) if not ok]
    if bad:
        raise DataError(f"{option}: {where} is not a finite number for {len(bad)} pairs, e.g. {bad[:5]}")
    return values, where


def check_weights(weights: torch.Tensor, pair_ids: list[str], dtype: torch.dtype, where: str) -> None:
    """Refuse per-pair loss weights that are negative, or not finite or all zero once cast to ``dtype``.

    A weight the dtype cannot hold (1e300 in float32) becomes infinite and would reach every parameter through
    the gradient; weights that all round to zero (1e-320 in float32) would train nothing.

    Args:
        weights: the weights, aligned with ``pair_ids``.
        pair_ids: the pairs, named in the messages.
        dtype: the dtype the loss is weighted in.
        where: the weights' origin (``column 'w' of scores.parquet``), named in the messages.

    Raises:
        DataError: naming the pairs and ``where``.
    """
    cast = weights.to(dtype)
    name = str(dtype).removeprefix("torch.")
    bad = (cast < 0) | ~torch.isfinite(cast)
    if bad.any():
        ids = [pid for pid, flag in zip(pair_ids, bad.tolist()) if flag]
        values = [float(value) for value in weights[bad][:5]]
        raise DataError(
            f"data.weights: {where} is negative or not finite for {len(ids)} pairs (as {name}): pair ids {ids[:5]}, "
            f"values {values}"
        )
    if not cast.any():
        raise DataError(
            f"data.weights: {where} is zero in {name} for every training pair ({len(pair_ids)}; largest value "
            f"{float(weights.abs().max()) if len(weights) else 0.0:g}): nothing would be trained"
        )


def read_weights(spec: str, pair_ids: list[str], data_fingerprint: str) -> torch.Tensor:
    """Per-pair loss weights from a scores file column, ``<scores.parquet>:<column>``, in the order of ``pair_ids``.

    Raises:
        DataError: the errors of :func:`read_score_column`, or weights refused by :func:`check_weights` in float32
            (the dtype they are kept in; the module checks them again in its training dtype).
    """
    values, where = read_score_column(spec, pair_ids, data_fingerprint, "data.weights")
    # float64 first, so that a value float32 cannot hold is named with its own value
    weights = torch.tensor(values, dtype=torch.float64)
    check_weights(weights, pair_ids, torch.float32, where)
    return weights.to(torch.float32)


def curriculum_order(scores: torch.Tensor, order: str) -> list[int]:
    """Positions of the pairs sorted by score, ``ascending`` or ``descending`` (``data.order``); pairs of equal
    score keep their order in the file (a stable sort)."""
    return torch.sort(scores, stable=True, descending=order == "descending").indices.tolist()


def split_pairs(
    source: PreferenceSource, split: str, limit: int | None, restrictions: PairRestrictions = NO_RESTRICTIONS
) -> list[PreferencePair]:
    """A split's pairs as a run sees them: the source's, the first ``limit`` of them, then the load-time flips of
    ``restrictions`` (:func:`prefalign.data.noise.flip_pairs`; the validation split draws with ``flip_seed + 1``).

    Raises:
        ValueError: ``limit`` is not a count of at least 1 (:func:`check_count`).
    """
    limit = check_count(f"data.max_{split}_pairs", limit, optional=True)
    pairs = source.load(split)
    if limit is not None:
        pairs = pairs[:limit]
    fraction = restrictions.flips(split)
    if fraction:
        key = "data.flip_fraction" if split == "train" else "data.val_flip_fraction"
        pairs, count = flip_pairs(pairs, fraction, restrictions.flip_seed + (split == "val"), key)
        log.info("%s: %d of %d pairs flipped at load (%s=%g)", split, count, len(pairs), key, fraction)
    return pairs


def data_split_pairs(data: Any, split: str) -> list[PreferencePair]:
    """:func:`split_pairs` from a ``data`` config node (``conf/data/*.yaml``; keys missing from older configs
    take their defaults)."""
    from hydra.utils import instantiate

    return split_pairs(
        instantiate(data["source"]), split, data.get(f"max_{split}_pairs"), PairRestrictions.from_config(data)
    )


def datamodule_from_config(data: Any, **runtime: Any) -> PreferenceDataModule:
    """The data module of a ``data`` config node (``conf/data/*.yaml``).

    The options that restrict the pairs become one :class:`~prefalign.data.restrictions.PairRestrictions`
    (:meth:`~prefalign.data.restrictions.PairRestrictions.from_config`); the others are the module's arguments.

    Args:
        data: the ``data`` node (``_target_`` and ``_partial_: true``, as the configs have it).
        runtime: what only the run knows (``tokenizer``, ``mismatched``, ``seed``).
    """
    from hydra.utils import instantiate
    from omegaconf import DictConfig, open_dict

    options = {field.name for field in dataclasses.fields(PairRestrictions)}
    if isinstance(data, DictConfig):
        # a copy under the same root: interpolations still resolve, a missing value is named by its full key
        node = copy.deepcopy(data)
        with open_dict(node):
            for key in options:
                node.pop(key, None)
    else:
        node = {key: value for key, value in data.items() if key not in options}
    return instantiate(node)(restrictions=PairRestrictions.from_config(data), **runtime)


class PreferenceDataModule(L.LightningDataModule):
    """Train and validation pairs from a source, cleaned, tokenised and batched.

    Args:
        source: where the pairs come from (``conf/data/*.yaml`` ``source``).
        tokenizer: the policy's tokenizer (given at run time).
        max_length, max_prompt_length, use_chat_template: tokenisation (see :class:`PairTokenizer`).
        batch_size: training pairs per optimiser step.
        eval_batch_size: pairs per batch for validation, reference log-probs and scoring.
        max_train_pairs, max_val_pairs: keep only the first N pairs of a split (files are shuffled, so this is a
            random subset); ``None`` keeps all.
        strict: raise on any dropped or truncated pair, or training pair with a validation pair's content
            (:func:`same_content`), instead of counting it.
        group_by_length: batch pairs of similar length (:class:`LengthGroupedBatchSampler`).
        mismatched: also batch mismatched completions (needed by KTO).
        seed: seed of the training shuffle.
        num_workers: data-loader workers.
        restrictions: which pairs to train on, their weights, their order and the label noise added at load
            (:class:`~prefalign.data.restrictions.PairRestrictions`; :func:`datamodule_from_config` reads them from
            a config); none by default.
    """

    def __init__(
        self,
        source: PreferenceSource,
        tokenizer: Any,
        max_length: int = 512,
        max_prompt_length: int = 256,
        use_chat_template: bool | str = "auto",
        batch_size: int = 8,
        eval_batch_size: int = 16,
        max_train_pairs: int | None = None,
        max_val_pairs: int | None = None,
        strict: bool = False,
        group_by_length: bool = True,
        mismatched: bool = False,
        seed: int = 0,
        num_workers: int = 0,
        restrictions: PairRestrictions = NO_RESTRICTIONS,
    ) -> None:
        super().__init__()
        # sizes are checked here, before any model loads: a negative one would slice from the end
        for key, value, minimum, optional in (
            ("max_train_pairs", max_train_pairs, 1, True),
            ("max_val_pairs", max_val_pairs, 1, True),
            ("batch_size", batch_size, 1, False),
            ("eval_batch_size", eval_batch_size, 1, False),
            ("max_length", max_length, 1, False),
            ("max_prompt_length", max_prompt_length, 1, False),
            ("num_workers", num_workers, 0, False),
        ):
            check_count(f"data.{key}", value, minimum, optional)
        self.restrictions = restrictions
        self.source = source
        self.tokenizer = tokenizer
        self.pair_tokenizer = PairTokenizer(tokenizer, max_length, max_prompt_length, use_chat_template)
        self.max_length = max_length
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.limits = {"train": max_train_pairs, "val": max_val_pairs}
        self.strict = strict
        self.group_by_length = group_by_length
        self.mismatched = mismatched
        self.seed = seed
        self.num_workers = num_workers
        self.pairs: dict[str, list[PreferencePair]] = {}
        self.datasets: dict[str, PairDataset] = {}
        self.report: dict[str, Any] = {}
        # content fingerprints of the loaded splits, before any selection (what scores and selections record)
        self.fingerprints: dict[str, str] = {}
        # the selection applied to the training split (restrictions.selection), as recorded in its file
        self.selection: dict[str, Any] | None = None
        # the whole training split and the positions of the kept pairs in it, while a selection is applied
        self._unrestricted: dict[str, PairDataset] = {}
        self._kept_index: dict[str, list[int]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        restrictions = self.restrictions
        for split in ("train", "val"):
            pairs = split_pairs(self.source, split, self.limits[split], restrictions)
            kept, tokens, report = prepare_split(pairs, self.pair_tokenizer, split, self.strict)
            self.pairs[split] = kept
            self.datasets[split] = PairDataset(tokens, self.max_length, self.mismatched)
            self.report[split] = report
            self.fingerprints[split] = pairs_fingerprint(kept)
            log.info("%s: %d pairs (%d loaded)", split, report["kept"], report["loaded"])
        self.report["same_content_in_train_and_val"] = same_content(self.pairs["train"], self.pairs["val"], self.strict)
        if restrictions.selection:
            record = read_selection(restrictions.selection, self.fingerprints["train"])
            total = len(self.pairs["train"])
            self.restrict("train", record["kept"])
            self.selection = {
                key: record.get(key)
                for key in ("file", "rule", "label", "thresholds", "kept_count", "total", "kept_fraction", "scores")
            }
            self.report["train"]["selection"] = {"file": record["file"], "kept": len(self.pairs["train"])}
            log.info("train: %d of %d pairs kept by %s (%s)", len(self.pairs["train"]), total, record["rule"], record["file"])
        if restrictions.weights:
            ids = [pair.pair_id for pair in self.pairs["train"]]
            self.datasets["train"].weights = read_weights(restrictions.weights, ids, self.fingerprints["train"])
        if restrictions.order_by:
            ids = [pair.pair_id for pair in self.pairs["train"]]
            scores, where = read_score_column(restrictions.order_by, ids, self.fingerprints["train"], "data.order_by")
            self.datasets["train"].order_scores = torch.tensor(scores, dtype=torch.float64)
            grouped = "; data.group_by_length=true groups validation and scoring batches only" if self.group_by_length else ""
            log.info(
                "train: batches in %s order of %s, the same every epoch (no shuffle%s)", restrictions.order, where, grouped
            )

    def check_weights(self, dtype: torch.dtype) -> None:
        """Refuse the training pairs' weights (``data.weights``) if they are not finite or all zero in ``dtype``,
        the dtype the training loss is weighted in (:func:`check_weights`)."""
        weights = self.datasets["train"].weights if "train" in self.datasets else None
        if weights is not None:
            ids = [pair.pair_id for pair in self.pairs["train"]]
            check_weights(weights, ids, dtype, str(self.restrictions.weights))

    def restrict(self, split: str, pair_ids: list[str] | set[str]) -> None:
        """Keep only the given pairs of a split (data selection); order is preserved.

        The reference log-probs of the whole split can still be attached afterwards (:meth:`set_reference`),
        so that a run on a selection reuses the cache entry of the full data.
        """
        wanted = set(pair_ids)
        keep = [i for i, pair in enumerate(self.pairs[split]) if pair.pair_id in wanted]
        missing = wanted - {self.pairs[split][i].pair_id for i in keep}
        if missing:
            raise DataError(f"{split}: {len(missing)} selected pair ids are not in the data, e.g. {sorted(missing)[:5]}")
        if not keep:
            raise DataError(f"{split}: the selection keeps no pairs")
        old = self.datasets[split]
        self._unrestricted.setdefault(split, old)
        previous = self._kept_index.get(split, list(range(len(old))))
        self._kept_index[split] = [previous[i] for i in keep]
        self.pairs[split] = [self.pairs[split][i] for i in keep]
        new = PairDataset([old.items[i] for i in keep], old.max_length, old.mismatched)
        if old.reference is not None:
            new.reference = {key: values[keep] for key, values in old.reference.items()}
        if old.weights is not None:
            new.weights = old.weights[keep]
        if old.order_scores is not None:
            new.order_scores = old.order_scores[keep]
        self.datasets[split] = new

    def reference_dataset(self, split: str) -> PairDataset:
        """The dataset whose reference log-probs a run needs: the whole split, also under a selection."""
        return self._unrestricted.get(split, self.datasets[split])

    def set_reference(self, split: str, logps: dict[str, torch.Tensor]) -> None:
        """Attach reference log-probs computed for :meth:`reference_dataset` (sliced to the kept pairs)."""
        if split in self._kept_index:
            index = torch.tensor(self._kept_index[split], dtype=torch.long)
            self._unrestricted[split].reference = logps
            logps = {key: values[index] for key, values in logps.items()}
        self.datasets[split].reference = logps

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Batch dataset items (prompts left-padded, completions right-padded)."""
        return collate_pairs(items, pad_id=self.tokenizer.pad_token_id)

    def loader(
        self,
        dataset: Dataset,
        batch_size: int,
        shuffle: bool,
        split_ranks: bool = False,
        order: list[int] | None = None,
    ) -> DataLoader:
        """Batches of any dataset of tokenised pairs, with this module's batching (length grouping, seed).

        Shuffled (training) batches come from a :class:`~prefalign.data.sampling.ResumableLoader`, whose position
        in the epoch is saved in checkpoints, so a run resumed mid-epoch continues with the batches it had not
        trained on. With ``split_ranks`` (the training loader of a DDP or FSDP run) each rank takes its part of
        every global batch of ``batch_size`` x world size (see the sampler). With ``order`` (positions in
        ``dataset``, the curriculum of ``data.order_by``) the training batches follow it instead of the shuffle.
        """
        collate = partial(collate_pairs, pad_id=self.tokenizer.pad_token_id)
        if shuffle:
            rank, world = (distributed.rank(), distributed.world_size()) if split_ranks else (0, 1)
            if order is not None:
                sampler = OrderedBatchSampler(order, batch_size, rank=rank, world_size=world, seed=self.seed)
            elif self.group_by_length:
                sampler = LengthGroupedBatchSampler(
                    dataset.items, batch_size, shuffle=True, seed=self.seed, rank=rank, world_size=world
                )
            else:
                sampler = RandomBatchSampler(len(dataset), batch_size, seed=self.seed, rank=rank, world_size=world)
            return ResumableLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=self.num_workers)
        if self.group_by_length:
            sampler = LengthGroupedBatchSampler(dataset.items, batch_size, shuffle=False)
            return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=self.num_workers)
        return DataLoader(dataset, batch_size=batch_size, collate_fn=collate, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        # data.batch_size is per device: the global batch is batch_size x devices x accumulate_grad_batches
        dataset = self.datasets["train"]
        order = None if dataset.order_scores is None else curriculum_order(dataset.order_scores, self.restrictions.order)
        return self.loader(dataset, self.batch_size, shuffle=True, split_ranks=True, order=order)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.datasets["val"], self.eval_batch_size, shuffle=False)

    def eval_loader(self, split: str) -> DataLoader:
        """Batches of a split in a fixed order (length-sorted unless ``group_by_length=false``); each batch's
        ``index`` says where its pairs sit in the split."""
        return self.loader(self.datasets[split], self.eval_batch_size, shuffle=False)

    def fit_loader(self, split: str) -> DataLoader:
        """Shuffled training batches of any split (the auxiliary models train on the validation split)."""
        return self.loader(self.datasets[split], self.batch_size, shuffle=True)
