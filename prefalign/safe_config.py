"""Configs read back from files are data, never code: the ``_target_`` each may name is checked first.

A run writes its resolved config (``<run>/config.yaml``) and a scores file records the configs it was computed
with (its provenance). A later stage rebuilds objects from them (``evaluate.py`` the run's model, loss and data;
``select.py analyze=true`` the scored data), and Hydra's ``instantiate`` would call whatever ``_target_`` such a
file names. A file anyone could have written or copied is therefore checked before anything of it is built: every
``_target_`` in the parts to build must be one that prefalign's own config groups name (the ``_target_`` values
found anywhere in ``conf/**/*.yaml``, :func:`project_targets`). Anything else is refused with the file, the key
and the target named (:class:`UnsafeConfigError`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf


class UnsafeConfigError(ValueError):
    """A config read back from a file names a ``_target_`` that prefalign's config groups do not."""


@functools.lru_cache(maxsize=8)
def _targets_of(conf_dir: str) -> frozenset[str]:
    found: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            target = node.get("_target_")
            if isinstance(target, str):
                found.add(target)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in sorted(Path(conf_dir).rglob("*.yaml")):
        walk(yaml.safe_load(path.read_text(encoding="utf-8")))
    return frozenset(found)


def project_targets(conf_dir: str | os.PathLike | None = None) -> frozenset[str]:
    """Every ``_target_`` that a YAML file of ``conf_dir`` (default: the running app's ``conf/``, else this
    repository's) names, at any depth: the classes and functions prefalign's own config groups build."""
    if conf_dir is None:
        from prefalign.config import config_dir

        conf_dir = config_dir()
    return _targets_of(str(Path(conf_dir).resolve()))


def check_targets(node: Any, source: str | os.PathLike, prefix: str = "", allowed: frozenset[str] | None = None) -> None:
    """Refuse a config node read from ``source`` if any ``_target_`` in it is not one of :func:`project_targets`.

    Args:
        node: the config (a ``DictConfig``/``ListConfig`` or plain dicts and lists).
        source: the file it was read from, for the message.
        prefix: the dotted key of ``node`` in that file, for the message.
        allowed: the targets allowed (default: :func:`project_targets`).

    Raises:
        UnsafeConfigError: a ``_target_`` outside the allowed ones (or not a string), named with its key path.
    """
    if isinstance(node, (DictConfig, ListConfig)):
        node = OmegaConf.to_container(node, resolve=False)
    allowed = project_targets() if allowed is None else allowed

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            if "_target_" in value:
                target = value["_target_"]
                key = f"{path}._target_" if path else "_target_"
                if not isinstance(target, str) or target not in allowed:
                    raise UnsafeConfigError(
                        f"{source}: {key}={target!r} is not a target of prefalign's config groups (conf/): a config "
                        "read back from a file is data, never code, and only what conf/ names is built from it. "
                        "Refusing to build it"
                    )
            for name, item in value.items():
                walk(item, f"{path}.{name}" if path else str(name))
        elif isinstance(value, list):
            for index, item in enumerate(value):
                walk(item, f"{path}[{index}]")

    walk(node, prefix)


def checked_config(node: Any, source: str | os.PathLike, keys: Iterable[str] | None = None) -> DictConfig:
    """``node`` (read from ``source``) as a ``DictConfig`` once the ``_target_`` of each entry of ``keys`` (default:
    all of it) is checked (:func:`check_targets`); the entries not in ``keys`` are never built from it."""
    config = node if isinstance(node, DictConfig) else OmegaConf.create(node)
    if keys is None:
        check_targets(config, source)
    else:
        for key in keys:
            if key in config:
                check_targets(config[key], source, key)
    return config


def load_config(path: str | os.PathLike, keys: Iterable[str] | None = None) -> DictConfig:
    """A YAML config a run wrote (``<run>/config.yaml``), checked as :func:`checked_config` does.

    Raises:
        UnsafeConfigError: a ``_target_`` outside prefalign's config groups.
        ValueError: the file is not a YAML mapping.
    """
    loaded = OmegaConf.load(path)
    if not isinstance(loaded, DictConfig):
        raise ValueError(f"{path}: not a config (a YAML mapping expected)")
    return checked_config(loaded, path, keys)
