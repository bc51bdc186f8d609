"""Content keys: the one helper that names every cache entry and result folder of prefalign.

A key is a hash of *everything that can change a result*, taken from the fully resolved config, plus the
fingerprints of the inputs a config only points to (the bytes of a checkpoint folder, the pairs of a data
file). Nothing else goes in: the logger, the progress bar, the output and cache directories cannot change a
number, so two runs that differ only there share their caches. A setting that names a checkpoint folder
(:data:`CHECKPOINT_PATHS`, e.g. ``model.init_from=<cache>/warmup/<key>``) stands in a key for the folder's
content, never for its path, so that a cache copied, moved or mounted elsewhere keeps every key.

Each stage names the top-level config entries its result depends on (:data:`TRAINING_INPUTS` for a training
run); the whole resolved node of each entry goes into the key, less the few settings in :data:`NO_EFFECT`. A
new option added to any of those nodes is therefore part of every key from the start, which is the safe
default: forgetting to exclude a cosmetic option costs a cache miss, forgetting to include a real one would
reuse a wrong result.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

# the top-level config entries a run's log-prob settings are read from (:class:`prefalign.logprobs.LogpSettings`):
# each changes the float rounding of every pass, so every key of a result made by log-prob passes holds them
LOGP_SETTINGS = ("share_prompt", "pack_length", "head_chunk_tokens")

# what a training run's result depends on (the warm-up of the selection pipeline is one)
TRAINING_INPUTS = ("model", "data", "loss", "optimizer", "scheduler", "trainer", "seed", *LOGP_SETTINGS, "compile", "inrun")
# top-level inputs added after caches existed, left out of keys and records while absent (null): the in-run
# influence record (inrun=influence) is part of a run's result, but a run without one keeps its old key
OPTIONAL_INPUTS = ("inrun",)

# settings inside those nodes that cannot change a number (dotted paths)
NO_EFFECT = (
    "model.name",
    "model.cache_dir",
    "data.num_workers",
    "trainer.log_every_n_steps",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.default_root_dir",
)


def plain(node: Any) -> Any:
    """A config node as plain, resolved Python data (other values unchanged)."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True)
    return node


def content_key(*parts: Any) -> str:
    """A 20-hex-digit key of JSON-serialisable parts (dict keys sorted, so the order of a config is irrelevant)."""
    payload = json.dumps([plain(part) for part in parts], sort_keys=True, default=str)
    return hashlib.sha1(payload.encode()).hexdigest()[:20]


# settings that name a checkpoint folder (a run directory or a Hugging Face folder): a key holds the content
# fingerprint of the folder instead of its path (:func:`prefalign.models.checkpoint_fingerprint`)
CHECKPOINT_PATHS = ("model.path", "model.init_from", "model.reference_path")


# options added after caches existed, at the value that gives the results from before they existed: left out of
# keys at that value (so that those caches stay valid), part of them at any other
UNCHANGED_AT = {"data.flip_fraction": 0.0, "data.val_flip_fraction": 0.0, "data.source.val": "val"}
# settings that only matter together with another: the flip seed draws nothing while no pair is flipped
ONLY_WITH = {"data.flip_seed": ("data.flip_fraction", "data.val_flip_fraction")}


def _node(inputs: dict[str, Any], path: str) -> tuple[Any, str | None]:
    """The dict holding the dotted ``path`` in ``inputs`` and the last key, or ``(None, None)``."""
    head, _, rest = path.partition(".")
    node = inputs.get(head)
    parts = rest.split(".") if rest else []
    while isinstance(node, dict) and len(parts) > 1:
        node = node.get(parts.pop(0))
    return (node, parts[0]) if isinstance(node, dict) and parts else (None, None)


def config_inputs(cfg: DictConfig, names: tuple[str, ...] | list[str], drop: tuple[str, ...] = NO_EFFECT) -> dict[str, Any]:
    """The resolved top-level entries ``names`` of ``cfg`` (absent ones as ``None``), less the dotted ``drop`` paths
    and the options of :data:`UNCHANGED_AT` at their old-result value (and :data:`ONLY_WITH`'s without theirs)."""
    inputs = {name: plain(cfg.get(name)) for name in names if cfg.get(name) is not None or name not in OPTIONAL_INPUTS}

    def value(path: str) -> Any:
        node, key = _node(inputs, path)
        return node.get(key) if node is not None else None

    unused = [path for path, needs in ONLY_WITH.items() if all(value(other) in (None, UNCHANGED_AT.get(other)) for other in needs)]
    defaults = [path for path, default in UNCHANGED_AT.items() if value(path) == default]
    for path in (*drop, *unused, *defaults):
        node, key = _node(inputs, path)
        if node is not None:
            node.pop(key, None)
    for path in CHECKPOINT_PATHS:
        node, key = _node(inputs, path)
        if node is not None and node.get(key):
            node[key] = checkpoint_content(path, node[key])
    return inputs


def checkpoint_content(setting: str, folder: str) -> str:
    """What a key holds for the checkpoint folder a setting names: the fingerprint of its content.

    Raises:
        FileNotFoundError: no checkpoint there (the setting is named).
    """
    # imported here: the models (torch, transformers) load only where a key names a checkpoint
    from prefalign.models import checkpoint_fingerprint

    try:
        return f"content:{checkpoint_fingerprint(folder)}"
    except FileNotFoundError as error:
        raise FileNotFoundError(f"{setting}={folder}: {error}") from error


def training_key(cfg: DictConfig, policy_fingerprint: str, data_fingerprint: str) -> str:
    """The key of a training run's result (its trained policy and metrics).

    Args:
        cfg: the run's resolved config.
        policy_fingerprint: identifies the initial weights (``ModelSource.policy_fingerprint()``), so that a
            checkpoint folder rewritten in place is not mistaken for the old one.
        data_fingerprint: identifies the pairs (:func:`prefalign.data.records.pairs_fingerprint`), for the same
            reason with data files.
    """
    return content_key("training-v2", config_inputs(cfg, TRAINING_INPUTS), policy_fingerprint, data_fingerprint)


# judge settings that cannot change a verdict (how requests are sent and cached), left out of result keys
JUDGE_NO_EFFECT = ("concurrency", "max_retries", "backoff", "timeout", "cache_path", "api_key_env")


def judge_inputs(judge_cfg: Any) -> dict[str, Any]:
    """A judge's resolved config less what cannot change a verdict: the client settings of
    :data:`JUDGE_NO_EFFECT` and ``max_unparsable`` (which decides whether a stage fails, never a number in it)."""
    judge = dict(plain(judge_cfg))
    judge.pop("max_unparsable", None)
    client = judge.get("client")
    if isinstance(client, dict):
        judge["client"] = {key: value for key, value in client.items() if key not in JUDGE_NO_EFFECT}
    return judge
