"""Atomic writes: a failed write leaves the old file (or nothing) and no temporary behind; modes follow the umask."""

import json
import os
import stat
from pathlib import Path

import pytest

from prefalign.atomic import atomic_directory, atomic_write, write_json


def test_write_json_replaces_whole_file(tmp_path):
    path = write_json({"a": 1.5}, tmp_path / "sub" / "x.json")
    assert json.loads(path.read_text()) == {"a": 1.5}
    write_json({"a": 2}, path)
    assert json.loads(path.read_text()) == {"a": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["x.json"]


def test_failed_write_keeps_previous_file_and_no_temporary(tmp_path):
    path = write_json({"kept": True}, tmp_path / "x.json")

    def crash(tmp: str) -> None:
        with open(tmp, "w") as stream:
            stream.write('{"half')
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, crash)
    assert json.loads(path.read_text()) == {"kept": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_atomic_directory_keeps_an_existing_copy_and_cleans_up_failures(tmp_path):
    target = tmp_path / "model"
    atomic_directory(target, lambda folder: (folder / "w.bin").write_text("first"))
    atomic_directory(target, lambda folder: (folder / "w.bin").write_text("second"))
    assert (target / "w.bin").read_text() == "first"  # another writer finished first: its copy stays

    def crash(folder):
        (folder / "w.bin").write_text("partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic_directory(tmp_path / "other", crash)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize(
    ("umask", "file_mode", "folder_mode"), [(0o002, 0o664, 0o775), (0o022, 0o644, 0o755)], ids=["umask002", "umask022"]
)
def test_written_files_and_folders_honour_the_umask(tmp_path, umask, file_mode, folder_mode):
    # a cache directory shared by a group (umask 002) must stay writable by the group
    previous = os.umask(umask)
    try:
        written = write_json({"a": 1}, tmp_path / "x.json")
        copied = atomic_write(tmp_path / "y.bin", lambda tmp: Path(tmp).write_bytes(b"data"))
        folder = atomic_directory(tmp_path / "model", lambda tmp: (tmp / "w.bin").write_text("weights"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(written.stat().st_mode) == file_mode
    assert stat.S_IMODE(copied.stat().st_mode) == file_mode
    assert stat.S_IMODE(folder.stat().st_mode) == folder_mode
    assert stat.S_IMODE((folder / "w.bin").stat().st_mode) == file_mode
