"""Reference log-probs: computed once, cached on disk, never recomputed.

TRL's ``precompute_ref_log_probs``, made persistent: the log-probs of every completion under the reference
model are stored under a key made of the reference model's fingerprint, the fingerprint of the exact token
ids (which covers the data, the tokenizer, the chat template and the truncation settings) and the settings of
the pass that change its float rounding (packing, prefix sharing, batch size, precision, device). A later run, a
resumed run or a sweep over other hyper-parameters finds them and skips the pass; no reference model stays in
memory during training.

An entry is a folder, ``<cache_dir>/reference_logps/<key>/``: ``logps.safetensors`` (one float32 tensor per
completion kind, ``(N,)``), ``pair_ids.json`` (the pairs, in order) and ``SHA256SUMS``. It holds data only, and
is read as data (no ``torch.load``), so that a file someone placed in a shared cache cannot run code; a read checks
the checksums, the pairs and the values (one finite number per pair), and an entry that fails is named, moved aside
and computed again (:func:`prefalign.atomic.verified`). Entries of older versions (``<key>.pt`` files written by
``torch.save``) are never read.

Under a launcher (:mod:`prefalign.distributed`) every rank computes its share of the batches, the log-probs are
gathered in pair order on every rank and rank 0 alone writes the entry: the same batches as one process's, so
the same numbers and the same file. Independent runs that want the same entry at the same time take turns: the
compute-and-write of an entry holds a file lock (:func:`prefalign.atomic.produce_once`,
``<cache_dir>/locks/reference_logps/<key>.lock``; under a launcher rank 0 holds it for all its ranks), and
whoever gets it second finds the entry written.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save_file
from torch import Tensor
from torch.utils.data import DataLoader

from prefalign import distributed
from prefalign.atomic import CorruptEntryError, atomic_entry, discard, lock_path, produce_once, verified
from prefalign.keys import content_key
from prefalign.logprobs import LogpSettings, pair_logps

log = logging.getLogger(__name__)

# 3: a folder of safetensors and JSON with its checksums (2 was a torch.save file, never read again)
CACHE_VERSION = "3"
KIND = "reference_logps"
LOGPS_FILE = "logps.safetensors"
PAIR_IDS_FILE = "pair_ids.json"


def move_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch with its tensors on ``device``, those of its ``reference`` log-probs too."""

    def move(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value.to(device)
        return {key: move(item) for key, item in value.items()} if isinstance(value, dict) else value

    return {key: move(value) for key, value in batch.items()}


@torch.no_grad()
def compute_pair_logps(
    model: torch.nn.Module,
    loader: DataLoader,
    logp_settings: LogpSettings = LogpSettings(),
    mismatched: bool = False,
    desc: str = "log-probs",
) -> dict[str, Tensor]:
    """Summed log-probs of every completion of a loader's dataset, in data order (on CPU), each pass run as
    ``logp_settings`` says.

    Batches may come in any order (length-sorted, say); each value lands at its batch's ``index``. Under a
    launcher each rank runs every ``world_size``-th batch of the loader and every rank returns all of them.

    Returns:
        ``chosen``, ``rejected`` (and ``kl_chosen``, ``kl_rejected`` with ``mismatched``), each ``(N,)``.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    size = len(loader.dataset)
    local: list[tuple[Tensor, dict[str, Tensor]]] = []
    start = time.perf_counter()
    try:
        for batch in distributed.share_batches(loader, desc):
            out = pair_logps(model, move_to(batch, device), logp_settings, mismatched=mismatched)
            values = {
                key[: -len("_logps")]: value.detach().float().cpu() for key, value in out.items() if key.endswith("_logps")
            }
            local.append((torch.as_tensor(batch["index"]), values))
    finally:
        model.train(was_training)
    results: dict[str, Tensor] = {}
    filled = torch.zeros(size, dtype=torch.bool)
    for index, values in distributed.gather_shares(local):
        for name, value in values.items():
            results.setdefault(name, torch.full((size,), float("nan"), dtype=torch.float32))
            results[name][index] = value
        filled[index] = True
    if not filled.all():
        raise RuntimeError(f"{desc}: the loader left {int((~filled).sum())} of {size} pairs unscored")
    elapsed = time.perf_counter() - start
    log.info("%s: %d pairs in %.1f s (%.1f pairs/s)", desc, size, elapsed, size / max(elapsed, 1e-9))
    return results


def cache_key(reference_fingerprint: str, data_fingerprint: str, settings: dict[str, Any] | None = None) -> str:
    return content_key(f"reference-v{CACHE_VERSION}", reference_fingerprint, data_fingerprint, settings or {})


def write_entry(folder: Path, pair_ids: list[str], logps: dict[str, Tensor], reference_fingerprint: str) -> Path:
    """Write a cache entry (module docstring) in one rename, its checksums last."""

    def save(tmp: Path) -> None:
        tensors = {name: value.detach().float().contiguous().cpu() for name, value in logps.items()}
        # one metadata key: safetensors writes several in an arbitrary order, and the file is the same for the same numbers
        about = json.dumps({"reference": reference_fingerprint, "version": CACHE_VERSION}, sort_keys=True)
        save_file(tensors, tmp / LOGPS_FILE, metadata={"prefalign": about})
        (tmp / PAIR_IDS_FILE).write_text(json.dumps(pair_ids, ensure_ascii=False), encoding="utf-8")

    return atomic_entry(folder, save)


def read_entry(folder: Path, pair_ids: list[str], names: set[str]) -> dict[str, Tensor]:
    """The log-probs of a cache entry whose checksums were checked, if they are those of ``pair_ids``.

    Args:
        folder: the entry.
        pair_ids: the dataset's pairs, in order.
        names: the tensors the entry must hold (``chosen``, ``rejected``, and ``kl_*`` for a mismatched dataset).

    Raises:
        CorruptEntryError: naming the file that is not what the data needs (no safetensors file, other pairs, other
            tensors, a shape other than ``(N,)``, non-finite values).
    """
    file, ids_file = folder / LOGPS_FILE, folder / PAIR_IDS_FILE
    try:
        logps = load_tensors(file.read_bytes())  # parses a header and copies numbers: no code runs
    except (OSError, SafetensorError) as error:
        raise CorruptEntryError(file, f"is not a readable safetensors file ({error})") from error
    try:
        held = json.loads(ids_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorruptEntryError(ids_file, f"is not a JSON list of pair ids ({error})") from error
    if held != pair_ids:
        count = len(held) if isinstance(held, list) else type(held).__name__
        raise CorruptEntryError(ids_file, f"holds other pairs than the data ({count} ids for {len(pair_ids)} pairs)")
    if set(logps) != names:
        raise CorruptEntryError(file, f"holds the tensors {sorted(logps)}, the data needs {sorted(names)}")
    for name, values in logps.items():
        if values.dtype != torch.float32 or tuple(values.shape) != (len(pair_ids),):
            raise CorruptEntryError(
                file,
                f"tensor {name!r} is {values.dtype} of shape {tuple(values.shape)}, not float32 of shape ({len(pair_ids)},)",
            )
        bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
        if bad:
            raise CorruptEntryError(
                file, f"tensor {name!r} holds {len(bad)} non-finite values (pairs {[pair_ids[i] for i in bad[:3]]})"
            )
    return logps


def check_finite(logps: dict[str, Tensor], pair_ids: list[str], desc: str) -> None:
    """Refuse to cache log-probs that are not numbers (a reference pass that overflowed), naming the pairs."""
    for name, values in logps.items():
        bad = (~torch.isfinite(values)).nonzero().flatten().tolist()
        if bad:
            raise FloatingPointError(
                f"{desc}: {len(bad)} non-finite {name} log-probs (pairs {[pair_ids[i] for i in bad[:5]]}); a reference "
                "pass in float16 may overflow: try model.dtype=float32 or trainer.precision=32"
            )


def cached_reference_logps(
    *,
    reference_fingerprint: str,
    dataset: Any,
    loader: DataLoader,
    cache_dir: str | os.PathLike,
    load_model: Any,
    logp_settings: LogpSettings = LogpSettings(),
    split: str = "train",
    settings: dict[str, Any] | None = None,
) -> tuple[dict[str, Tensor], bool]:
    """Reference log-probs of a dataset, from the cache or computed and cached.

    Under a launcher (:func:`prefalign.distributed.init_from_env`) every rank calls this: each computes its
    share of the pairs and gets all of them, rank 0 reads and writes the entry.

    Args:
        reference_fingerprint: identifies the reference weights.
        dataset: a :class:`~prefalign.data.datamodule.PairDataset` (its fingerprint keys the cache).
        loader: ordered batches of ``dataset``.
        cache_dir: the cache root; entries live in ``<cache_dir>/reference_logps/<key>/``.
        load_model: callable returning the reference model, only called on a cache miss.
        logp_settings: how the log-prob pass runs the model (:class:`~prefalign.logprobs.LogpSettings`).
        split: name for logs.
        settings: the run's settings that shape the pass, ``logp_settings`` among them (part of the key; see
            :func:`prefalign.run_setup.reference_pass_settings`).

    Returns:
        The log-probs (``chosen``, ``rejected``, and ``kl_*`` when the dataset is mismatched) and whether they
        came from the cache.
    """
    distributed.init_from_env()
    cache_dir = Path(cache_dir).expanduser()
    key = cache_key(reference_fingerprint, dataset.fingerprint(), settings)
    folder = cache_dir / KIND / key
    pair_ids = [item.pair_id for item in dataset.items]
    names = {"chosen", "rejected", *(("kl_chosen", "kl_rejected") if dataset.mismatched else ())}

    def read() -> dict[str, Tensor] | None:
        if not verified(folder, cache_dir, KIND, required=(LOGPS_FILE, PAIR_IDS_FILE)):
            return None
        try:
            logps = read_entry(folder, pair_ids, names)
        except CorruptEntryError as error:
            discard(folder, cache_dir, KIND, error)
            return None
        log.info("%s: reference log-probs from cache %s", split, folder)
        return logps

    found: dict[str, dict[str, Tensor] | None] = {}  # what read() found (on rank 0)
    made: dict[str, dict[str, Tensor]] = {}

    def done() -> bool:
        found["logps"] = read()  # asked twice: before and after taking the lock
        return found["logps"] is not None

    def produce() -> None:
        model = load_model()
        desc = f"reference log-probs ({split})"
        made["logps"] = compute_pair_logps(model, loader, logp_settings, mismatched=dataset.mismatched, desc=desc)
        check_finite(made["logps"], pair_ids, desc)
        if distributed.is_main():
            write_entry(folder, pair_ids, made["logps"], reference_fingerprint)
            log.info("%s: reference log-probs cached in %s", split, folder)
        distributed.barrier()

    # one run at a time computes an entry; the others find it made (rank 0 reads and locks for all its ranks)
    lock = lock_path(cache_dir, KIND, key)
    hit = produce_once(lock, done, produce, f"reference log-probs ({split})")
    if hit:
        return distributed.broadcast(found.get("logps")), True
    return made["logps"], False
