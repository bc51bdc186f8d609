"""Atomic writes: every file or folder prefalign produces appears whole or not at all.

Each helper writes to a temporary sibling in the same directory and renames it into place
(``os.replace`` is atomic on one file system), so an interrupted run never leaves a truncated
cache entry, scores shard or checkpoint folder behind; the temporary is removed on any error.

The temporary is created the way a plain ``open()`` or ``mkdir`` would create it (mode ``0o666`` or ``0o777``
less the umask, default ACLs applied), not with :mod:`tempfile`'s private ``0o600``/``0o700``, so a cache
directory shared by a group under ``umask 002`` stays writable by the group.

Runs that share a cache directory at the same time (the jobs of a sweep on a cluster, two sweeps) produce each
entry once: :func:`produce_once` holds a file lock, ``<cache>/locks/<kind>/<key>.lock`` (:func:`lock_path`), while
it computes an entry, and a run that wants the same entry waits for it and then finds it made. The locks are
``flock`` locks (:mod:`filelock`): the system drops them when their process dies, so a killed run leaves none
held behind. A cache shared by several machines belongs on a file system where ``flock`` works across them
(NFSv4; Lustre mounted with ``-o flock``); where it is missing, :mod:`filelock` falls back to lock files whose
existence is the lock.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)


def _fresh_sibling(path: Path, create: Callable[[str], None]) -> str:
    """A new hidden name next to ``path``, made by ``create(name)`` (which raises ``FileExistsError`` if taken)."""
    for _ in range(100):
        candidate = str(path.parent / f".{path.name}-{secrets.token_hex(4)}")
        try:
            create(candidate)
        except FileExistsError:
            continue
        return candidate
    raise FileExistsError(f"no free temporary name next to {path}")


def _create_file(name: str) -> None:
    # the mode open() uses: the umask (or a default ACL) decides what is left of it
    os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666))


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path`` (mode as ``open()`` gives under the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_sibling(path, _create_file)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def strict_json(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None`` and float-like values (NumPy scalars, 0-d tensors) as floats.

    Python writes non-finite floats as bare ``NaN`` / ``Infinity``, which strict JSON readers (``jq``, browsers,
    most languages) refuse and a table reading the file would take for a number; ``null`` says "no value".

    Raises:
        TypeError: a value that is neither JSON nor float-like.
    """
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable") from None
    return number if math.isfinite(number) else None


def write_json(data: Any, path: str | os.PathLike) -> Path:
    """Strict JSON (indented; NaN and infinities as ``null``, NumPy and other float-like values as floats), written
    atomically (:func:`strict_json`)."""
    data = strict_json(data)

    def dump(tmp: str) -> None:
        with open(tmp, "w") as stream:
            json.dump(data, stream, indent=2, allow_nan=False)

    return atomic_write(path, dump)


def write_jsonl(rows: Any, path: str | os.PathLike) -> Path:
    """One JSON object per line (UTF-8, non-ASCII kept as is), written atomically."""

    def dump(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as stream:
            for row in rows:
                stream.write(json.dumps(row, ensure_ascii=False) + "\n")

    return atomic_write(path, dump)


def atomic_directory(target: str | os.PathLike, save: Callable[[Path], Any]) -> Path:
    """Run ``save(tmp_dir)`` and move the folder to ``target`` in one rename.

    The folder gets the mode ``mkdir`` gives under the umask. When ``target`` already exists (another process
    finished first), its copy is kept and ours dropped.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(_fresh_sibling(target, os.mkdir))
    try:
        save(tmp)
        if target.exists():
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def lock_path(cache_dir: str | os.PathLike, kind: str, key: str) -> Path:
    """The lock of the cache entry ``<cache_dir>/<kind>/<key>``: ``<cache_dir>/locks/<kind>/<key>.lock``, outside
    ``<kind>/`` so that a listing of the entries shows entries only."""
    return Path(cache_dir).expanduser() / "locks" / kind / f"{key}.lock"


@contextmanager
def entry_lock(path: str | os.PathLike, what: str, poll_s: float = 10.0) -> Iterator[None]:
    """Hold the file lock ``path`` (another run that holds it finishes first; this one says it waits).

    The processes of one multi-device run share the lock: in a ``torch.distributed`` group (torchrun) rank 0 takes
    it and tells the others every ``poll_s`` seconds whether it has it, so that no collective waits longer than that;
    a process that SLURM or Lightning started for another device outside any group (rank > 0) does not take it,
    since its rank 0 takes it for the run (taking it too would wait for a rank 0 that waits in ``fit`` for it).

    Args:
        path: the lock file (:func:`lock_path`).
        what: the entry, for the log line of a run that waits.
        poll_s: how often rank 0 of a group retries.
    """
    from prefalign import distributed
    from prefalign.config import launched_rank

    distributed.init_from_env()
    if distributed.world_size() == 1 and launched_rank() != 0:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path)) if distributed.is_main() else None
    held, attempts = False, 0
    try:
        while not held:
            if lock is not None:
                try:
                    lock.acquire(timeout=0 if attempts == 0 else poll_s)
                    held = True
                except Timeout:
                    if attempts == 0:
                        log.info("waiting for %s: another run is computing it (lock %s)", what, path)
            attempts += 1
            held = distributed.broadcast(held)
        yield
    finally:
        if lock is not None and lock.is_locked:
            lock.release()


def produce_once(path: str | os.PathLike, done: Callable[[], bool], produce: Callable[[], Any], what: str) -> bool:
    """``produce()`` a cache entry unless ``done()`` says it is there, once across runs sharing the cache.

    ``done()`` is asked again once the lock :func:`entry_lock` ``path`` is held, since a run that held it before
    has most likely just made the entry; in a process group rank 0's answer stands for every rank, so that all
    take the same branch.

    Returns:
        Whether the entry was there already (made by an earlier or a concurrent run).
    """
    from prefalign import distributed

    distributed.init_from_env()  # before the first question, which every rank of a group must ask together
    if distributed.on_main(done):
        return True
    with entry_lock(path, what):
        if distributed.on_main(done):
            return True
        produce()
    return False
