"""Atomic writes: every file or folder prefalign produces appears whole or not at all.

Each helper writes to a temporary sibling in the same directory and renames it into place
(``os.replace`` is atomic on one file system), so an interrupted run never leaves a truncated
cache entry, scores shard or checkpoint folder behind; the temporary is removed on any error.

The temporary is created the way a plain ``open()`` or ``mkdir`` would create it (mode ``0o666`` or ``0o777``
less the umask, default ACLs applied), not with :mod:`tempfile`'s private ``0o600``/``0o700``, so a cache
directory shared by a group under ``umask 002`` stays writable by the group.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


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


def write_json(data: Any, path: str | os.PathLike) -> Path:
    """JSON (indented; NumPy and other float-like values as floats), written atomically."""

    def dump(tmp: str) -> None:
        with open(tmp, "w") as stream:
            json.dump(data, stream, indent=2, default=float)

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
