"""Atomic writes: a failed write leaves the old file (or nothing) and no temporary behind."""

import json

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
