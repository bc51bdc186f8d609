"""A selection rule from its ``select`` config: the rule of a run, or of ``conf/select/<name>.yaml`` for the
analysis, with its settings checked before any score is read."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from prefalign.selection.rules import InvertedSelection, SelectionRule


def select_rule(node: DictConfig) -> SelectionRule:
    """The rule of a ``select`` config, with its settings checked before any score is read.

    ``invert: true`` (every rule's config has the key) gives the complement of the rule
    (:class:`~prefalign.selection.rules.InvertedSelection`); ``label`` (optional) is the rule's name in result
    tables (:meth:`~prefalign.selection.rules.SelectionRule.display_label`), for options that share a class.
    """
    settings = OmegaConf.to_container(node, resolve=True)
    invert = settings.pop("invert", False)
    if not isinstance(invert, bool):
        raise ValueError(f"select.invert must be true or false, got {invert!r}")
    label = settings.pop("label", None)
    if label is not None and not isinstance(label, str):
        raise ValueError(f"select.label must be a string, got {label!r}")
    rule = instantiate(settings)
    if not isinstance(rule, SelectionRule):
        raise ValueError(f"select: {node.get('_target_')} is not a prefalign SelectionRule")
    if label:
        rule.label = label
    return InvertedSelection(rule) if invert else rule


def rule_config(name: str, directory: Path | None = None) -> DictConfig:
    """``conf/select/<name>.yaml`` as a config, with the option it extends (``defaults: [pzn]``) merged under it.

    The analysis compares several rules in one run; loading them here (not through Hydra's defaults list)
    keeps their scorer defaults out of the way: the scores are already in the file.
    """
    directory = directory or Path(__file__).resolve().parents[2] / "conf" / "select"
    path = directory / f"{name}.yaml"
    if not path.exists():
        available = sorted(p.stem for p in directory.glob("*.yaml"))
        raise KeyError(f"analysis.rules: no rule '{name}' ({path} does not exist; available: {available})")
    node = OmegaConf.load(path)
    base = OmegaConf.create({})
    for entry in node.pop("defaults", []):
        if isinstance(entry, str) and entry not in ("_self_",) and not entry.startswith("/"):
            base = OmegaConf.merge(base, rule_config(entry, directory))
    return OmegaConf.merge(base, node)
