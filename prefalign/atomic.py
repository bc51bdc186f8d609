"""Atomic writes: every file or folder prefalign produces appears whole or not at all.

Each helper writes to a temporary sibling in the same directory and renames it into place
(``os.replace`` is atomic on one file system), so an interrupted run never leaves a truncated
cache entry, scores shard or checkpoint folder behind; the temporary is removed on any error.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the result to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    os.close(handle)
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

    When ``target`` already exists (another process finished first), its copy is kept and ours dropped.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
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
