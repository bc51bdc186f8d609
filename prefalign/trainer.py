"""The one trainer builder: Lightning trainers, the training module and the fit of auxiliary models.

Every model prefalign trains goes through :func:`build_trainer` and :func:`make_module`: the policy of a training
run, the warm-up of the selection pipeline (itself a training run), LossDiff's validation-aligned model and the
BeeS proxy (:func:`fit_auxiliary`). So all of them honour the run's optimizer, scheduler, precision, gradient
clipping and accumulation settings; an auxiliary model can override each (``scorers.<name>.train``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from prefalign.distributed import local_device
from prefalign.logprobs import LogpSettings
from prefalign.losses import PreferenceLoss
from prefalign.module import PolicyPass, PreferenceModule, nonfinite_metrics, precision_options

log = logging.getLogger(__name__)


def run_device(trainer: Any) -> torch.device:
    """The device Lightning's ``trainer.fit`` trains on, for the passes that run outside it.

    Reference log-probs, the scorers and held-out metrics run on the model's own device. Models load on the
    CPU and Lightning moves them to its accelerator only inside ``fit`` (and back to the CPU when ``fit``
    ends), so without this a GPU run would compute its reference log-probs and every score on the CPU.

    Args:
        trainer: the ``trainer`` config (``accelerator``: ``auto``, ``cpu``, ``gpu``/``cuda`` or ``mps``;
            ``devices``: a count, ``auto`` or a list of indices, whose first is used).

    Raises:
        ValueError: an accelerator that is not available here, or one prefalign does not know.
    """
    accelerator = str(trainer.get("accelerator", "auto")).lower()
    if accelerator == "auto":  # Lightning's order: MPS, then CUDA, then the CPU
        mps = getattr(torch.backends, "mps", None)
        accelerator = "mps" if mps is not None and mps.is_available() else "cuda" if torch.cuda.is_available() else "cpu"
    if accelerator == "cpu":
        return torch.device("cpu")
    if accelerator in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise ValueError(
                f"trainer.accelerator={trainer.get('accelerator')}: no CUDA device is available here "
                "(torch.cuda.is_available() is False); use trainer.accelerator=auto or cpu"
            )
        devices = trainer.get("devices", "auto")
        if isinstance(devices, (list, tuple, ListConfig)) and len(devices):
            return torch.device("cuda", int(next(iter(devices))))
        # one process per device (torchrun, SLURM, Lightning's launcher): this process's own GPU
        return local_device(torch.device("cuda"))
    if accelerator == "mps":
        return torch.device("mps")
    raise ValueError(f"trainer.accelerator={trainer.get('accelerator')!r}: prefalign knows auto, cpu, gpu, cuda and mps")


def build_trainer(
    cfg: DictConfig,
    output_dir: Path | None,
    checkpoints: bool = True,
    extra_callbacks: list[L.Callback] | None = None,
    **overrides: Any,
) -> L.Trainer:
    """The Lightning trainer of ``cfg.trainer`` with ``cfg.logger`` and ``cfg.callbacks``, writing into ``output_dir``.

    Args:
        cfg: a config with ``trainer`` and optionally ``logger`` and ``callbacks`` (absent: none).
        output_dir: where logs and checkpoints go (``None``: nowhere; no logger or checkpoint then).
        checkpoints: keep the checkpoint callback.
        extra_callbacks: callbacks of the caller's, besides the config's.
        overrides: ``Trainer`` keyword arguments that replace the config's.
    """
    logger = instantiate(cfg.logger, save_dir=str(output_dir)) if cfg.get("logger") and output_dir else False
    callbacks = list(extra_callbacks or [])
    for name, callback in (cfg.get("callbacks") or {}).items():
        if not callback or (name == "checkpoint" and (not checkpoints or output_dir is None)):
            continue
        if name == "checkpoint":
            callback = {**callback, "dirpath": str(Path(output_dir) / "checkpoints")}
        callbacks.append(instantiate(callback))
    if not checkpoints or output_dir is None:
        overrides["enable_checkpointing"] = False
    if output_dir is not None:
        overrides.setdefault("default_root_dir", str(output_dir))
    trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True) if isinstance(cfg.trainer, DictConfig) else dict(cfg.trainer)
    # options left at null in the config are Lightning's defaults (null is not a valid value for all of them)
    trainer_cfg = {key: value for key, value in trainer_cfg.items() if value is not None}
    for key in overrides:
        trainer_cfg.pop(key, None)
    options = precision_options({"precision": trainer_cfg.pop("precision", None), **overrides})
    if options.get("precision") is None:
        options.pop("precision")
    return instantiate(trainer_cfg, logger=logger, callbacks=callbacks, **options)


def make_module(
    optimizer: Any,
    scheduler: Any,
    model: torch.nn.Module,
    loss: PreferenceLoss,
    logp_settings: LogpSettings = LogpSettings(),
) -> PreferenceModule:
    """The training module of ``model`` under ``loss``.

    Args:
        optimizer, scheduler: config nodes (``_partial_``) or already-instantiated partials; ``scheduler`` may
            be ``None``.
        model, loss: the policy and its loss.
        logp_settings: the run's log-prob settings (:class:`~prefalign.logprobs.LogpSettings`).
    """
    if isinstance(optimizer, (DictConfig, Mapping)):
        optimizer = instantiate(optimizer)
    if isinstance(scheduler, (DictConfig, Mapping)):
        scheduler = instantiate(scheduler) if scheduler else None
    return PreferenceModule(model, loss, optimizer=optimizer, scheduler=scheduler or None, logp_settings=logp_settings)


def run_module(
    cfg: DictConfig, model: torch.nn.Module, loss: PreferenceLoss, logp_settings: LogpSettings
) -> PreferenceModule:
    """:func:`make_module` with a run config's optimizer and scheduler, and the run's log-prob settings."""
    return make_module(cfg.optimizer, cfg.get("scheduler"), model, loss, logp_settings)


def final_metrics(trainer: L.Trainer) -> dict[str, float]:
    """The last logged value of every metric, by name.

    Raises:
        FloatingPointError: a metric is NaN or infinite. Such a run is no result (a table would read its NaN as
            one), so its caller writes neither a policy nor ``metrics.json``.
    """
    metrics = {key: float(value) for key, value in sorted(trainer.callback_metrics.items())}
    bad = nonfinite_metrics(metrics)
    if bad:
        raise FloatingPointError(
            f"non-finite final metrics at global step {trainer.global_step}: {bad}; no policy and no metrics.json "
            "are written"
        )
    return metrics


@contextmanager
def compiled_decoder(model: torch.nn.Module, enabled: bool, **options: Any) -> Iterator[None]:
    """Inside the block, the policy's decoder runs ``torch.compile``'d (``compile=true``); eager again after.

    Only the decoder stack (where the time goes) is compiled, with dynamic shapes (packed rows and padded
    batches change width from batch to batch). It is undone on exit, so that the models scored, copied and
    saved afterwards are plain modules. ``python -m bench.compile`` measures whether it pays: on the 2-core CPU,
    training steps of the embedded model ran 1.09x faster once compiled,
    after a one-off compilation of 148 s; it pays only for runs much longer than the default.
    """
    if not enabled:
        yield
        return
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    decoder.forward = torch.compile(decoder.forward, dynamic=True, **options)
    try:
        yield
    finally:
        del decoder.forward  # the instance attribute; the class's forward is back


# run settings an auxiliary model does not inherit: it trains for its own epochs on its own data
AUXILIARY_RESETS = {"max_steps": -1, "max_epochs": None, "limit_train_batches": None, "val_check_interval": None}


def auxiliary_settings(cfg: DictConfig, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """The optimizer, scheduler and trainer settings of an auxiliary model: the run's, with ``overrides`` on top.

    ``overrides`` (a scorer's ``train`` node) holds ``optimizer``, ``scheduler`` and ``trainer`` mappings whose
    non-null entries replace the run's. The trainer keeps the run's precision, accumulation, clipping and
    accelerator; its length (``max_steps``, ``limit_train_batches``) is the auxiliary model's own.

    Returns:
        Plain, resolved ``{"optimizer", "scheduler", "trainer"}`` (what goes into the auxiliary model's key).
    """
    overrides = {key: dict(value or {}) for key, value in dict(overrides or {}).items()}
    settings: dict[str, Any] = {}
    for name in ("optimizer", "scheduler"):
        base = cfg.get(name)
        node = OmegaConf.to_container(base, resolve=True) if isinstance(base, DictConfig) else (dict(base) if base else None)
        changes = {key: value for key, value in overrides.get(name, {}).items() if value is not None}
        if node is None and changes:
            raise ValueError(f"an auxiliary model overrides {name} {changes}, but the run has no {name}")
        settings[name] = {**node, **changes} if node is not None else None
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer.update(AUXILIARY_RESETS)
    trainer["devices"] = 1  # outside the run's own fit, in one process
    trainer.update({key: value for key, value in overrides.get("trainer", {}).items() if value is not None})
    settings["trainer"] = trainer
    return settings


def fit_auxiliary(
    model: torch.nn.Module,
    loss: PreferenceLoss,
    loader: Any,
    settings: Mapping[str, Any],
    epochs: int,
    seed: int,
    logp_settings: LogpSettings = LogpSettings(),
    desc: str = "auxiliary model",
) -> torch.nn.Module:
    """Train ``model`` in place on ``loader`` for ``epochs`` with :func:`auxiliary_settings` and the run's
    ``logp_settings``; returns it in eval mode."""
    module = make_module(settings["optimizer"], settings.get("scheduler"), model, loss, logp_settings)
    cfg = OmegaConf.create({"trainer": {"_target_": "lightning.Trainer", **settings["trainer"]}})
    trainer = build_trainer(
        cfg,
        None,
        checkpoints=False,
        max_epochs=epochs,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        enable_model_summary=False,
    )
    log.info("%s: %d epoch(s) on %d pairs", desc, epochs, len(loader.dataset))
    L.seed_everything(seed, workers=True, verbose=False)
    trainer.fit(module, train_dataloaders=loader)
    model.eval()
    return model


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The decoder layers of ``model`` (a transformers causal LM, possibly under peft): the modules whose classes
    transformers lists in the model's ``_no_split_modules`` (``LlamaDecoderLayer``, ``Qwen3DecoderLayer``,
    ``GPTNeoXLayer``, ``Gemma3DecoderLayer``, ...), the unit accelerate's FSDP plugin wraps by default.

    Raises:
        ValueError: the model names no such classes, or none of its modules is one.
    """
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    layers = [module for module in model.modules() if type(module).__name__ in names]
    if not layers:
        raise ValueError(
            f"{type(model).__name__}: no decoder layers to shard (its _no_split_modules names {sorted(names) or 'none'})"
        )
    return layers


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallel (PyTorch's FSDP2, ``torch.distributed.fsdp.fully_shard``) through Lightning's
    ``ModelParallelStrategy``, on any device, the CPU included (gloo): ``trainer=fsdp``.

    Every process is one data-parallel rank (the device mesh is ``(world size, 1)``: no tensor parallelism).
    Each decoder layer (:func:`decoder_layers`) is one sharding unit, with activation checkpointing on the same
    unit (transformers' gradient checkpointing, non-reentrant); everything else (embeddings, final norm, the head,
    tied or not) is the root unit, which is the policy's whole log-prob pass (:class:`~prefalign.module.PolicyPass`),
    so that its parameters are gathered around the pass prefalign runs (the decoder, then the head in chunks)
    rather than around the model's own ``forward``, which that pass never calls. Checkpoints are sharded (a
    folder, one file per rank, written through ``torch.distributed.checkpoint``); the final policy is gathered on
    rank 0 (:class:`GatherFullPolicy`).

    Args:
        activation_checkpointing: recompute each decoder layer's activations in the backward pass.
        reshard_after_forward: free each layer's gathered weights after its forward (FSDP's ZeRO-3; ``false``:
            keep them until the backward, ZeRO-2, more memory and one all-gather less per layer).
        kwargs: ``ModelParallelStrategy``'s (``save_distributed_checkpoint``, ``process_group_backend``, ``timeout``).
    """

    def __init__(self, activation_checkpointing: bool = True, reshard_after_forward: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("tensor_parallel_size", 1)
        super().__init__(**kwargs)
        self.activation_checkpointing = activation_checkpointing
        self.reshard_after_forward = reshard_after_forward

    def setup_environment(self) -> None:
        if self._data_parallel_size == "auto":  # every process a data-parallel rank (Lightning's auto: one per node)
            self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()

    def shard_module(self, module: PreferenceModule) -> None:
        """Shard ``module``'s policy in place (Lightning's ``configure_model``): each decoder layer a unit, the
        log-prob pass the root. A policy already sharded (a second ``fit``) is left as it is."""
        from torch.distributed.fsdp import FSDPModule, fully_shard

        if module.policy_pass is not None:
            return
        policy = module.policy
        if any(isinstance(m, FSDPModule) for m in policy.modules()):
            raise ValueError("the policy is already sharded by another FSDP run; load it again for a new run")
        if self.activation_checkpointing:
            # transformers' own, per decoder layer, non-reentrant (activation_checkpointing_enable from transformers 5)
            options = {"use_reentrant": False}
            if hasattr(policy, "activation_checkpointing_enable"):
                policy.activation_checkpointing_enable(activation_checkpointing_kwargs=options)
            elif hasattr(policy, "gradient_checkpointing_enable"):
                policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs=options)
            else:
                raise ValueError(
                    f"{type(policy).__name__} has no activation checkpointing; set trainer.strategy.activation_checkpointing=false"
                )
        mesh = self.device_mesh["data_parallel"]
        for layer in decoder_layers(policy):
            fully_shard(layer, mesh=mesh, reshard_after_forward=self.reshard_after_forward)
        module.set_policy_pass(fully_shard(PolicyPass(policy), mesh=mesh))


def is_sharded(strategy: Any) -> bool:
    """Whether ``strategy`` shards the parameters (FSDP), so that no process holds whole weights during ``fit``."""
    return isinstance(strategy, ModelParallelStrategy)


def policy_weights(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The policy's weights, named as in the policy itself, from a full state dict of the training module (the
    one ``get_model_state_dict`` gathers from a sharded run names them as the module does: ``policy.<name>``)."""
    return {key.removeprefix("policy."): value for key, value in state.items() if key.startswith("policy.")}


class GatherFullPolicy(L.Callback):
    """At the end of a sharded (FSDP) run, the policy's full weights gathered on rank 0 (``state``; ``None``
    elsewhere and for other strategies, whose module holds the full weights), to be saved in Hugging Face format.

    Runs in ``on_train_end``, while the model is still sharded; the gather is a collective of all ranks, offloaded
    to the CPU so that rank 0 needs host memory for one full copy, not device memory.
    """

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] | None = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not is_sharded(trainer.strategy):
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(trainer.strategy.model, options=options)
        if trainer.is_global_zero:
            self.state = policy_weights(state)


class PeakMemory(L.Callback):
    """At the end of training, every process's peak memory, gathered on all ranks (``per_process``: one entry per
    rank, in rank order): the host's peak resident set size of the process (``ru_maxrss``: the whole process so
    far, the passes before ``fit`` included) and, on CUDA, the peak of the device memory torch allocated."""

    def __init__(self) -> None:
        self.per_process: list[dict[str, float]] = []

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import resource

        host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
        device = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")
        mine = torch.tensor([host, device], dtype=torch.float64, device=pl_module.device)
        every = trainer.strategy.all_gather(mine).reshape(-1, 2).cpu().tolist() if trainer.world_size > 1 else [mine.tolist()]
        self.per_process = [
            {"host_peak_rss_mb": round(h, 1), **({"cuda_peak_allocated_mb": round(d, 1)} if d == d else {})} for h, d in every
        ]
