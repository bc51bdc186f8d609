"""Checks of a composed config that belong to the entry points, not to any stage."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def refuse_sweep_without_multirun() -> None:
    """Fail when a sweep config (an ``experiment=`` with ``hydra.sweeper.params``) runs without ``-m``.

    Without ``-m`` Hydra ignores the sweeper and runs the config once, with every swept key at its default:
    ``python train.py experiment=main_comparison`` would silently train plain full-data DPO. One job of such a
    sweep runs alone with its swept values given and ``hydra.sweeper.params=null``, as the resume command a job
    prints does (``train.py``'s ``resume_command``).

    Raises:
        ValueError: the run is not a multirun but its config defines sweeper parameters.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    params = hydra_cfg.sweeper.get("params") if hydra_cfg.sweeper is not None else None
    if hydra_cfg.mode == RunMode.RUN and params:
        experiment = hydra_cfg.runtime.choices.get("experiment")
        swept = ", ".join(f"{key}={value}" for key, value in params.items())
        name = f"experiment={experiment}" if experiment else "this config"
        raise ValueError(
            f"{name} is a sweep ({swept}) and runs only with -m: python {hydra_cfg.job.name}.py -m {name} ... "
            "(one job of it alone: its swept values and hydra.sweeper.params=null, as a job's resume command has them)"
        )


def hydra_quoted(value: str) -> str:
    """``value`` as a quoted value of Hydra's override grammar: ``"..."``, with each double quote and the backslashes
    that precede one (or the closing quote) escaped, and ``${`` escaped so that it is not an interpolation.
    ``hydra.run.dir="multirun/x/0_loss=dpo,model=tiny"`` is one value; unquoted, ``=`` and ``,`` break the parse."""
    import re

    escaped = re.sub(r'(\\*)"', lambda match: match.group(1) * 2 + '\\"', value)
    escaped = re.sub(r"(\\+)$", lambda match: match.group(1) * 2, escaped)
    return '"' + escaped.replace("${", "\\${") + '"'


def launched_rank() -> int:
    """This process's global rank as a launcher set it (torchrun: ``RANK``; the other processes Lightning's DDP
    starts: ``LOCAL_RANK`` and ``NODE_RANK``; SLURM: ``SLURM_PROCID``); 0 for a plain ``python`` run."""
    import os

    for name in ("RANK", "SLURM_PROCID"):
        if name in os.environ:
            return int(os.environ[name])
    return int(os.environ.get("LOCAL_RANK", 0)) + int(os.environ.get("NODE_RANK", 0))


def log_from_rank_zero() -> None:
    """Keep the info logs of a multi-process run to rank 0 (the others still report warnings and errors)."""
    import logging

    if launched_rank() != 0:
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("prefalign").setLevel(logging.WARNING)


def refuse_multirun_with_process_launch(cfg) -> None:
    """Fail a ``-m`` sweep in which Lightning would start the processes of a multi-device run itself.

    Lightning's DDP launcher re-executes ``train.py`` with the run's command line, which a Hydra multirun cannot
    survive (Lightning #11617, Hydra #2070): every job would start a second sweep. Sweeps over several devices
    run each job on SLURM (``hydra/launcher=slurm``, one task per device) or under ``torchrun``, which
    starts every process up front.

    Raises:
        ValueError: a multirun with the basic launcher, more than one device and no launcher's processes.
    """
    import os

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN or "RANK" in os.environ or "SLURM_PROCID" in os.environ:
        return
    devices = cfg.trainer.get("devices", 1)
    several = (isinstance(devices, int) and devices > 1) or (not isinstance(devices, (int, str)) and len(devices) > 1)
    several = several or (str(devices) in ("auto", "-1") and cfg.trainer.get("strategy") not in (None, "auto"))
    if several and "BasicLauncher" in str(hydra_cfg.launcher.get("_target_", "")):
        raise ValueError(
            f"-m with trainer.devices={devices}: Lightning would re-launch train.py for every device, which breaks a "
            "Hydra multirun (Lightning #11617). Run the sweep with hydra/launcher=slurm (one task per "
            f"device), or start it with torchrun --nproc_per_node {devices} train.py -m ... hydra.sweep.dir=<a fixed "
            "folder>, or sweep one device per run"
        )


def config_dir() -> Path:
    """``conf/`` of the running Hydra app (its primary config directory), else of this repository."""
    try:
        from hydra.core.hydra_config import HydraConfig

        for source in HydraConfig.get().runtime.config_sources:
            if source.provider == "main" and source.schema == "file":
                return Path(source.path)
    except ValueError:  # no Hydra app running (tests, notebooks)
        pass
    return Path(__file__).resolve().parents[1] / "conf"


def group_option(group: str, node: Any) -> Any:
    """A config group's option given by name (``online.reward=annotator``: ``conf/reward/annotator.yaml``) or
    the node itself when it is already a config.

    The option's own defaults list may mount other groups' options (``- /judge@judge: openai``), which are merged
    in before the option's own keys, as Hydra composes them.

    Raises:
        KeyError: no such option (the message lists the group's options).
    """
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(node, str):
        return node
    folder = config_dir() / group
    path = folder / f"{node}.yaml"
    if not path.exists():
        options = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise KeyError(f"no {group} option '{node}' ({path} does not exist); the options: {options}")
    loaded = OmegaConf.load(path)
    assert isinstance(loaded, DictConfig)
    merged = OmegaConf.create({})
    for entry in loaded.pop("defaults", []):
        if entry == "_self_":
            continue
        ((target, option),) = entry.items()
        other_group, _, key = str(target).lstrip("/").partition("@")
        merged = OmegaConf.merge(merged, {key or other_group: group_option(other_group, str(option))})
    return OmegaConf.merge(merged, loaded)


# the targets of ``select=full`` (as conf/select/full.yaml names it, or by its module), read from the config alone:
# a plain training run needs none of the selection code to know it is one
FULL_DATA_TARGETS = ("prefalign.selection.FullSelection", "prefalign.selection.rules.FullSelection")


def unread_selection_settings(cfg: Any) -> list[str]:
    """The selection settings a run sets that no stage reads: under ``select=full`` (training on every pair, no
    pipeline), a budget or other rule setting (``select.keep_fraction=0.5``) and ``pipeline.extra_scores``.

    Returns:
        ``key=value`` for each, empty when the rule reads them all (or there is no ``select``).
    """
    select = cfg.get("select")
    if not select or select.get("_target_") not in FULL_DATA_TARGETS:
        return []
    # full.yaml's own values (null budget, no inversion) are what "unset" means; anything else is ignored
    unread = [
        f"select.{key}={value}"
        for key, value in select.items()
        if key != "_target_" and value not in (None, False) and not (key == "keep_fraction" and value == 1.0)
    ]
    extra = (cfg.get("pipeline") or {}).get("extra_scores")
    if extra:
        unread.append(f"pipeline.extra_scores=[{','.join(str(name) for name in extra)}]")
    return unread


def warn_unread_selection_settings(cfg: Any) -> list[str]:
    """Log a warning naming the settings of :func:`unread_selection_settings`; returns them."""
    import logging

    unread = unread_selection_settings(cfg)
    if unread:
        logging.getLogger("prefalign").warning(
            "select=full trains on every pair and reads none of %s (a sweep may set them for its other rules; "
            "choose a rule that reads them: select=topk, select=lossdiff_irm, ...; python train.py --help)",
            ", ".join(unread),
        )
    return unread
