"""A policy's per-pair held-out values, kept with its run: ``<run>/eval/heldout-<val>.json``.

A paired comparison of runs (``python -m bench.paired``) needs each policy's reward accuracy, margin and loss on
every validation pair (:meth:`prefalign.module.PreferenceModule.pair_values`). A training run already computes
them in its last validation, so it keeps them here (``val``: its own validation pairs, when they are the pairs
as loaded, i.e. none flipped at load); a comparison reads them back instead of scoring the policy again, and
computes and keeps those of any other pairs (``test_pairs``) the same way.

The record is data (JSON): ``{"key", "val", "values"}``, where ``key`` is the sha256 of every file of the run's
``policy/`` (by content) and of its resolved ``data``, ``loss`` and ``model`` settings (:func:`values_key`). A
record of other weights or settings, or an unreadable one, is not used: the values are computed again.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from prefalign.atomic import file_sha256, write_json


def record_path(run: str | Path, val: str) -> Path:
    return Path(run) / "eval" / f"heldout-{val}.json"


def values_key(run: str | Path, cfg: DictConfig) -> str:
    """What a run's held-out values depend on: every file of its policy (by content) and the data, loss and model
    settings they are computed with (``cfg``: the run's config, with the held-out pairs it is measured on)."""
    files = sorted(path for path in (Path(run) / "policy").iterdir() if path.is_file())
    settings = OmegaConf.to_container(OmegaConf.masked_copy(cfg, ["data", "loss", "model"]), resolve=True)
    text = json.dumps({"policy": {path.name: file_sha256(path) for path in files}, "settings": settings}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def read_values(run: str | Path, cfg: DictConfig, val: str) -> dict[str, list[Any]] | None:
    """The kept values of ``run`` on ``val``, or ``None`` when there are none for its present policy and settings."""
    record = record_path(run, val)
    if not record.exists():
        return None
    try:
        stored = json.loads(record.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(stored, dict) or stored.get("key") != values_key(run, cfg) or not isinstance(stored.get("values"), dict):
        return None
    return stored["values"]


def write_values(run: str | Path, cfg: DictConfig, val: str, values: dict[str, list[Any]]) -> Path:
    """Keep ``values`` (``pair_id`` and one list per metric, in the same order) as the run's held-out values on
    ``val``, keyed by its present policy and settings; written atomically."""
    lengths = {name: len(column) for name, column in values.items()}
    if "pair_id" not in values or len(set(lengths.values())) != 1:
        raise ValueError(f"held-out values need pair_id and one value per pair in every column, got lengths {lengths}")
    record = record_path(run, val)
    record.parent.mkdir(parents=True, exist_ok=True)
    write_json({"key": values_key(run, cfg), "val": val, "values": values}, record)
    return record
