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
existence is the lock. A run that finds an entry finished takes no lock and writes nothing, so that a cache
copied elsewhere or mounted read-only serves every finished entry.

Every entry is *verified* (:func:`verified`): it records the sha256 of its files when it is written, in
sha256sum's format (``SHA256SUMS`` in a folder, ``<file>.sha256`` beside a file), and that record, written last,
marks it finished. A read checks the files against it first; a partial, truncated or garbled entry is named in a
warning, moved to ``<cache>/corrupt/<kind>/<name>-<time>/`` (:func:`set_aside`) and computed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import secrets
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
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


def _restore_mode(path: str | os.PathLike, mode: int) -> None:
    """Give ``path`` the permission bits of ``mode`` again when a library replaced it with a file of its own.

    safetensors (and so ``save_pretrained``) writes a private temporary (``0o600``) and renames it over the target,
    so that a model folder written under ``umask 002`` would be unreadable by the group that shares the cache.
    """
    if os.stat(path).st_mode & 0o7777 != mode & 0o7777:
        os.chmod(path, mode & 0o7777)


def _follow_umask(folder: Path) -> None:
    """Give every file under ``folder`` the mode a plain ``open()`` gives here (:func:`_restore_mode`)."""
    probe = _fresh_sibling(folder / "mode", _create_file)
    try:
        mode = os.stat(probe).st_mode
    finally:
        os.unlink(probe)
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            _restore_mode(path, mode)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path`` (mode as ``open()`` gives under the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_sibling(path, _create_file)
    mode = os.stat(tmp).st_mode
    try:
        write(tmp)
        _restore_mode(tmp, mode)
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

    The folder gets the mode ``mkdir`` gives under the umask, and every file in it the mode ``open()`` gives (even
    those a library wrote privately, :func:`_restore_mode`). When ``target`` already exists (another process
    finished first), its copy is kept and ours dropped.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(_fresh_sibling(target, os.mkdir))
    try:
        save(tmp)
        _follow_umask(tmp)
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


# -- verified entries ------------------------------------------------------------------------------------------
# Every cache entry records the sha256 of the files it holds when it is written, and the record, written last,
# marks it finished. A read checks the files against it first, so that a truncated, garbled or partial entry is
# named, moved aside to <cache>/corrupt/<kind>/ and computed again: never trusted, and never fatal to later runs.

CHECKSUMS = "SHA256SUMS"  # a folder entry's checksum record, in sha256sum's format (``sha256sum -c SHA256SUMS``)
_CHECKSUM_LINE = re.compile(r"([0-9a-f]{64}) [ *](.+)")


class CorruptEntryError(RuntimeError):
    """A file of a cache entry (or a file a run reads back) that is partial, garbled or changed since it was written.

    Attributes:
        path: the file at fault.
        problem: what is wrong with it.
    """

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks (a policy of several GB never sits in memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: str | os.PathLike) -> Path:
    """The checksum record of a single-file entry: ``<file>.sha256`` beside it."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def entry_files(folder: str | os.PathLike) -> list[Path]:
    """Every file under ``folder`` but its own checksum record (:data:`CHECKSUMS`)."""
    folder = Path(folder)
    return sorted(path for path in folder.rglob("*") if path.is_file() and path != folder / CHECKSUMS)


def write_checksums(record: str | os.PathLike, files: Iterable[str | os.PathLike]) -> Path:
    """Write the checksum record ``record`` of ``files`` (under its folder, named relative to it), atomically.

    Written after the files, it is what marks an entry finished.
    """
    record = Path(record)
    paths = sorted(map(Path, files))
    lines = [f"{file_sha256(path)}  {path.relative_to(record.parent).as_posix()}\n" for path in paths]
    return atomic_write(record, lambda tmp: Path(tmp).write_text("".join(lines)))


def read_checksums(record: str | os.PathLike) -> dict[str, str]:
    """A checksum record as ``{file name relative to its folder: sha256}``.

    Raises:
        CorruptEntryError: the record is unreadable, malformed, empty or names a file outside its folder.
    """
    record = Path(record)
    try:
        text = record.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise CorruptEntryError(record, f"the checksum record cannot be read ({error})") from error
    sums: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        match = _CHECKSUM_LINE.fullmatch(line)
        if match is None:
            raise CorruptEntryError(record, f"line {number} of the checksum record is not '<sha256>  <file>': {line[:80]!r}")
        name = match.group(2)
        if name.startswith("/") or ".." in PurePosixPath(name).parts:
            raise CorruptEntryError(record, f"line {number} of the checksum record names a file outside its folder: {name!r}")
        sums[name] = match.group(1)
    if not sums:
        raise CorruptEntryError(record, "the checksum record lists no file")
    return sums


def check_checksums(record: str | os.PathLike, required: Iterable[str] = ()) -> None:
    """Check the files a checksum record lists against it.

    Args:
        record: the checksum record (:data:`CHECKSUMS` in a folder entry, :func:`file_record` beside a file).
        required: files (relative to the record's folder) the record must list.

    Raises:
        CorruptEntryError: naming the file that is missing, unlisted or of other content than recorded.
    """
    record = Path(record)
    sums = read_checksums(record)
    for name in required:
        if name not in sums:
            raise CorruptEntryError(record.parent / name, f"is not listed in the checksum record {record}")
    for name, expected in sums.items():
        path = record.parent / name
        if not path.is_file():
            raise CorruptEntryError(path, f"is missing (listed in the checksum record {record})")
        if file_sha256(path) != expected:
            raise CorruptEntryError(
                path,
                f"its sha256 differs from the one {record} recorded when it was written: truncated, garbled or changed since",
            )


def set_aside(
    entry: str | os.PathLike, cache_dir: str | os.PathLike, kind: str, also: Iterable[str | os.PathLike] = ()
) -> Path:
    """Move a corrupt entry out of every later run's way, kept for a look: into ``<cache_dir>/corrupt/<kind>/<name>-<time>/``.

    Args:
        entry: the entry's folder or file.
        cache_dir: the cache root.
        kind: the entry's kind (``reference_logps``, ``scores``, ``warmup``, ``auxiliary``).
        also: other files of the entry (a single file's checksum record).

    Returns:
        The folder the entry was moved into.
    """
    entry = Path(entry)
    name = entry.name
    try:  # named by its place under <cache>/<kind>/, so that a shard says which scores it belonged to
        name = "_".join(entry.resolve().relative_to((Path(cache_dir).expanduser() / kind).resolve()).parts)
    except ValueError:
        pass
    stamp = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"  # two in one second stay apart
    target = Path(cache_dir).expanduser() / "corrupt" / kind / f"{name}-{stamp}"
    target.mkdir(parents=True)
    for path in (entry, *map(Path, also)):
        try:
            shutil.move(str(path), str(target / path.name))
        except FileNotFoundError:  # not there, or another run that found it corrupt too moved it first
            pass
    return target


def discard(
    entry: str | os.PathLike,
    cache_dir: str | os.PathLike,
    kind: str,
    error: CorruptEntryError,
    also: Iterable[str | os.PathLike] = (),
    label: str = "corrupt cache entry",
) -> Path:
    """Warn that ``entry`` cannot be used (naming the file and what is wrong) and :func:`set_aside` it.

    Raises:
        CorruptEntryError: the entry cannot be moved (a read-only cache): it is named and never used.
    """
    try:
        moved = set_aside(entry, cache_dir, kind, also)
    except OSError as move_error:
        raise CorruptEntryError(
            error.path,
            f"{error.problem}; the cache entry {entry} cannot be moved aside ({move_error}): delete it, or use a cache "
            "folder you can write to",
        ) from move_error
    where = error.problem if error.path == Path(entry) else f"{error.path}: {error.problem}"
    log.warning("%s %s: %s; moved to %s and computed again", label, entry, where, moved)
    return moved


def verified(
    entry: str | os.PathLike,
    cache_dir: str | os.PathLike,
    kind: str,
    *,
    record: str | os.PathLike | None = None,
    required: Iterable[str] = (),
    written_in_place: bool = False,
) -> bool:
    """Whether ``entry`` is finished and holds what its checksum record says; a corrupt one is :func:`discard`-ed.

    Args:
        entry: the entry's folder (its record is ``<entry>/SHA256SUMS``) or file (give ``record``).
        cache_dir: the cache root (corrupt entries go to ``<cache_dir>/corrupt/<kind>/``).
        kind: the entry's kind.
        record: the checksum record of a file entry (:func:`file_record`).
        required: files (relative to the record's folder) the record must list.
        written_in_place: the entry is filled file by file (a training run's folder) and has no record until it is
            finished, so that a record missing means "unfinished" (to resume, not to move). An entry that appears in
            one rename (:func:`atomic_entry`) holds its record from the start: one without is partial or was written
            by an older prefalign, and is moved aside.

    Returns:
        ``True`` for a finished, intact entry; ``False`` for none (absent, unfinished, or found corrupt and moved).
    """
    entry = Path(entry)
    record = Path(record) if record is not None else entry / CHECKSUMS
    separate = [record] if record.parent != entry else []
    if not entry.exists():
        return False
    if not record.exists():
        if not written_in_place:
            problem = CorruptEntryError(record, "no checksum record: the entry is partial, or an older prefalign wrote it")
            discard(entry, cache_dir, kind, problem, label="unverifiable cache entry")
        return False
    try:
        check_checksums(record, required)
    except CorruptEntryError as error:
        discard(entry, cache_dir, kind, error, also=separate)
        return False
    return True


def atomic_entry(target: str | os.PathLike, save: Callable[[Path], Any]) -> Path:
    """:func:`atomic_directory` for a cache entry: ``save(tmp_dir)``, then its checksum record, then the rename."""

    def save_and_record(folder: Path) -> None:
        save(folder)
        write_checksums(folder / CHECKSUMS, entry_files(folder))

    return atomic_directory(target, save_and_record)
