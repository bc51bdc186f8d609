"""Checks of a composed config that belong to the entry points, not to any stage."""

from __future__ import annotations


def refuse_sweep_without_multirun() -> None:
    """Fail when a sweep config (an ``experiment=`` with ``hydra.sweeper.params``) runs without ``-m``.

    Without ``-m`` Hydra ignores the sweeper and runs the config once, with every swept key at its default:
    ``python train.py experiment=main_comparison`` would silently train plain full-data DPO.

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
            f"{name} is a sweep ({swept}) and runs only with -m: python {hydra_cfg.job.name}.py -m {name} ..."
        )
