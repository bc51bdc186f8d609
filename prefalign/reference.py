"""Reference log-probs: computed once, cached on disk, never recomputed.

TRL's ``precompute_ref_log_probs``, made persistent: the log-probs of every completion under the reference
model are stored under a key made of the reference model's fingerprint, the fingerprint of the exact token
ids (which covers the data, the tokenizer, the chat template and the truncation settings) and the settings of
the pass that change its float rounding (packing, prefix sharing, batch size, precision, device). A later run, a
resumed run or a sweep over other hyper-parameters finds them and skips the pass; no reference model stays in
memory during training.

Under a launcher (:mod:`prefalign.distributed`) every rank computes its share of the batches, the log-probs are
gathered in pair order on every rank and rank 0 alone writes the entry: the same batches as one process's, so
the same numbers and the same file. Independent runs that want the same entry at the same time take turns: the
compute-and-write of an entry holds a file lock (:func:`prefalign.atomic.produce_once`,
``<cache_dir>/locks/reference_logps/<key>.pt.lock``; under a launcher rank 0 holds it for all its ranks), and
whoever gets it second finds the entry written.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from prefalign import distributed
from prefalign.atomic import atomic_write, lock_path, produce_once
from prefalign.keys import content_key
from prefalign.logprobs import pair_logps

log = logging.getLogger(__name__)

CACHE_VERSION = "2"


def move_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch with its tensors on ``device``."""
    return {key: value.to(device) if isinstance(value, Tensor) else value for key, value in batch.items()}


@torch.no_grad()
def compute_pair_logps(
    model: torch.nn.Module,
    loader: DataLoader,
    share_prompt: bool = True,
    mismatched: bool = False,
    desc: str = "log-probs",
    pack_length: int | None = None,
) -> dict[str, Tensor]:
    """Summed log-probs of every completion of a loader's dataset, in data order (on CPU).

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
            out = pair_logps(
                model, move_to(batch, device), share_prompt=share_prompt, mismatched=mismatched, pack_length=pack_length
            )
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


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file and rename, so a crash never leaves a truncated cache entry."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def cached_reference_logps(
    *,
    reference_fingerprint: str,
    dataset: Any,
    loader: DataLoader,
    cache_dir: str | os.PathLike,
    load_model: Any,
    share_prompt: bool = True,
    split: str = "train",
    pack_length: int | None = None,
    settings: dict[str, Any] | None = None,
) -> tuple[dict[str, Tensor], bool]:
    """Reference log-probs of a dataset, from the cache or computed and cached.

    Under a launcher (:func:`prefalign.distributed.init_from_env`) every rank calls this: each computes its
    share of the pairs and gets all of them, rank 0 reads and writes the entry.

    Args:
        reference_fingerprint: identifies the reference weights.
        dataset: a :class:`~prefalign.data.datamodule.PairDataset` (its fingerprint keys the cache).
        loader: ordered batches of ``dataset``.
        cache_dir: the cache root; entries live in ``<cache_dir>/reference_logps/<key>.pt``.
        load_model: callable returning the reference model, only called on a cache miss.
        share_prompt: prefix sharing in the log-prob pass.
        split: name for logs.
        pack_length: padding-free packing in the log-prob pass (:func:`~prefalign.logprobs.pair_logps`).
        settings: the run's settings that shape the pass (part of the key; see
            :func:`prefalign.run_setup.reference_pass_settings`).

    Returns:
        The log-probs (``chosen``, ``rejected``, and ``kl_*`` when the dataset is mismatched) and whether they
        came from the cache.
    """
    distributed.init_from_env()
    key = cache_key(reference_fingerprint, dataset.fingerprint(), settings)
    path = Path(cache_dir).expanduser() / "reference_logps" / f"{key}.pt"
    pair_ids = [item.pair_id for item in dataset.items]

    def read(warn: bool = True) -> dict[str, Tensor] | None:
        if not path.exists():
            return None
        entry = torch.load(path, map_location="cpu", weights_only=False)
        if entry.get("pair_ids") == pair_ids:
            log.info("%s: reference log-probs from cache %s", split, path)
            return entry["logps"]
        if warn:
            log.warning("%s: cache entry %s does not match the data; recomputing", split, path)
        return None

    found: dict[str, dict[str, Tensor] | None] = {}  # what read() found (on rank 0)
    made: dict[str, dict[str, Tensor]] = {}

    def done() -> bool:
        found["logps"] = read(warn="logps" not in found)  # asked twice: before and after taking the lock
        return found["logps"] is not None

    def produce() -> None:
        model = load_model()
        made["logps"] = compute_pair_logps(
            model,
            loader,
            share_prompt=share_prompt,
            mismatched=dataset.mismatched,
            desc=f"reference log-probs ({split})",
            pack_length=pack_length,
        )
        if distributed.is_main():
            atomic_torch_save({"pair_ids": pair_ids, "logps": made["logps"], "reference": reference_fingerprint}, path)
            log.info("%s: reference log-probs cached in %s", split, path)
        distributed.barrier()

    # one run at a time computes an entry; the others find it made (rank 0 reads and locks for all its ranks)
    lock = lock_path(cache_dir, "reference_logps", path.name)
    hit = produce_once(lock, done, produce, f"reference log-probs ({split})")
    if hit:
        return distributed.broadcast(found.get("logps")), True
    return made["logps"], False
