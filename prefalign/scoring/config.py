"""From score names to scorers: each name is a column, its config a ``conf/score/<option>.yaml``.

A stage asks for scores by name (``score.py scores=[irm,lossdiff]``, or the columns a selection rule reads).
For each name the config is, in order:

1. ``conf/score/<name>.yaml`` (adding a scorer is one class, that one YAML, and a test: no list to extend);
2. with ``scorers.<name>`` from the run's config merged on top: the rule configs bring in the scorers they
   read this way (``conf/select/lossdiff_irm.yaml``), so ``scorers.lossdiff.epochs=2`` works on the command
   line, and ``+scorers.<name>.<key>=...`` sets any other;
3. ``scorers.<name>.option=<other>`` takes ``conf/score/<other>.yaml`` instead: two configurations of one
   scorer class side by side under two column names, e.g. two reward models
   (``scores=[skywork,armo] +scorers.skywork.option=reward_model +scorers.armo.option=reward_model
   +scorers.armo.model=RLHFlow/ArmoRM-Llama3-8B-v0.1``).

A scorer that trains an auxiliary model has a ``train`` node; it is resolved here against the run's
``optimizer``, ``scheduler`` and ``trainer`` (:func:`prefalign.trainer.auxiliary_settings`). The resolved
config of each scorer is what its cache keys and the scores file's provenance are made of. Unknown names fail
here, before any model is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from prefalign.config import config_dir
from prefalign.scoring.base import Scorer
from prefalign.trainer import auxiliary_settings


def score_config_dir() -> Path:
    """``conf/score`` of the running Hydra app (its primary config directory), else of this repository."""
    return config_dir() / "score"


def available_scores(cfg: DictConfig | None = None) -> list[str]:
    """Every score name a config can ask for: the score YAMLs and the run's own ``scorers`` entries."""
    names = {path.stem for path in score_config_dir().glob("*.yaml")}
    if cfg is not None:
        names |= set((cfg.get("scorers") or {}).keys())
    return sorted(names)


def scorer_config(cfg: DictConfig, name: str) -> dict[str, Any]:
    """The resolved config of the scorer computed under column ``name`` (module docstring)."""
    entry = (cfg.get("scorers") or {}).get(name)
    entry = OmegaConf.to_container(entry, resolve=False) if entry is not None else {}
    option = entry.pop("option", None) or name
    path = score_config_dir() / f"{option}.yaml"
    if path.exists():
        node = OmegaConf.merge(OmegaConf.load(path), entry)
    elif "_target_" in entry:
        node = OmegaConf.create(entry)
    else:
        where = f"scorers.{name}.option={option}: " if option != name else ""
        raise KeyError(
            f"{where}no scorer '{option}': no {path} and no scorers.{name}._target_; available: {available_scores(cfg)}"
        )
    # interpolations such as ${seed} refer to the run's config
    node._set_parent(cfg)
    resolved = OmegaConf.to_container(node, resolve=True)
    if "train" in resolved:
        resolved["train"] = auxiliary_settings(cfg, resolved["train"])
        resolved["train"]["trainer"].pop("_target_", None)  # keyword arguments, not a Trainer to build
    return resolved


def build_scorers(cfg: DictConfig, names: list[str]) -> list[Scorer]:
    """The scorers of ``names`` (one column each), instantiated but not prepared (no model is loaded).

    Raises:
        KeyError: a name with no scorer config (the message lists the available ones).
        ValueError: repeated names, or a config that does not build a :class:`Scorer`.
    """
    if len(set(names)) != len(names):
        raise ValueError(f"score names must be unique, got {list(names)}")
    scorers = []
    for name in names:
        settings = scorer_config(cfg, name)
        scorer = instantiate(OmegaConf.create(settings), _convert_="all")
        if not isinstance(scorer, Scorer):
            raise ValueError(f"scorers.{name}: {settings.get('_target_')} is not a prefalign Scorer")
        scorer.name = name
        scorer.settings = settings
        scorers.append(scorer)
    return scorers
