"""``inrun=influence``: every trained pair's exact influence at the weights it is trained on, while training.

At each optimiser step ``t`` every pair ``d`` of the step's batches gets::

    IF_t(d) = < v , grad ell(theta_t; d) >

(TIF paper, the IF definition; :mod:`prefalign.scoring.influence`) at the weights ``theta_t`` *before* the step's
update, from the step's own forward and backward pass (:mod:`prefalign.inrun.ghost`): no scoring pass and no
per-pair gradient. ``v`` is the mean validation-loss gradient over the same parameters as the ``influence``
scorer's (all trainable parameters by default; the LoRA weights under LoRA), computed at the weights of the step it
is refreshed at, on the whole validation split or a fixed random subset (``val_pairs``). It is refreshed at each
epoch's first step and/or every ``refresh_every_n_steps`` steps; every record names the ``v`` it used.

What it writes is described in :mod:`prefalign.inrun.record`: a per-step record for every pair (shards that are
flushed with each checkpoint and survive a kill, resumed with the run) and, at the end, ``inrun/scores.parquet``
with the per-pair summaries as score columns that every rule and analysis reads.

The callback changes no number of the training: the hooks only read activations and gradients, and ``v`` is
computed with ``torch.autograd.grad`` (no ``.grad`` touched) in eval mode. Its costs: per step about one more
forward pass of the hooked layers (the ``V a_t`` products); per refresh one forward and backward pass over the
validation pairs; in memory one more copy of the trained parameters (``v``, also saved in checkpoints so that a
resumed run continues with the same ``v``). ``python -m bench.inrun`` measures them.

Several processes (DDP): each rank records its own pairs (its own shard folder); ``v`` is computed data-parallel
and summed over the ranks. Sharded training (FSDP) is refused: the hooks would see sharded parameters.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from prefalign import distributed
from prefalign.atomic import write_json
from prefalign.data.datamodule import PairDataset
from prefalign.inrun.ghost import GhostInfluence, select_parameters
from prefalign.inrun.record import RecordWriter, read_records, summarise, write_scores
from prefalign.reference import move_to

log = logging.getLogger(__name__)


class InRunInfluence(L.Callback):
    """Records every trained pair's in-run influence (module docstring).

    Args:
        output_dir: the run's folder; the record goes to ``<output_dir>/inrun/``.
        parameters: which parameters count, as the ``influence`` scorer's ``parameters``.
        refresh_every_n_steps: recompute ``v`` every this many optimiser steps (``None``: only at epoch starts).
        refresh_at_epoch_start: recompute ``v`` at the first step of every epoch (the first step of the run always
            computes one).
        val_pairs: compute ``v`` on this many validation pairs, a fixed random subset (``None``: all of them).
        seed: the seed of that subset.
        data_fingerprint: the training pairs' fingerprint, recorded in the summaries' provenance.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        parameters: str | list[str] = "trainable",
        refresh_every_n_steps: int | None = None,
        refresh_at_epoch_start: bool = True,
        val_pairs: int | None = None,
        seed: int = 0,
        data_fingerprint: str | None = None,
    ) -> None:
        for key, value in (("refresh_every_n_steps", refresh_every_n_steps), ("val_pairs", val_pairs)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise ValueError(f"inrun.{key} must be a positive integer or null, got {value!r}")
        if output_dir is None:
            raise ValueError("inrun: the run's output_dir is needed (where the record goes)")
        self.folder = Path(output_dir) / "inrun"
        self.parameters = parameters if isinstance(parameters, str) else list(parameters)
        self.refresh_every_n_steps = refresh_every_n_steps
        self.refresh_at_epoch_start = bool(refresh_at_epoch_start)
        self.val_pairs = val_pairs
        self.seed = seed
        self.data_fingerprint = data_fingerprint
        self.direction: dict[str, Tensor] | None = None
        self.refreshes: list[dict[str, Any]] = []
        self.ghost: GhostInfluence | None = None
        self.writer: RecordWriter | None = None
        self._restored = False
        self._settings: Any = None
        self._current: dict[str, Any] | None = None

    # -- checkpoint state: v and the refresh log, so that a resumed run continues with the same v ------------
    def state_dict(self) -> dict[str, Any]:
        return {"direction": self.direction, "refreshes": list(self.refreshes)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.direction = state_dict.get("direction")
        self.refreshes = list(state_dict.get("refreshes") or [])
        self._restored = True

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # the records of every step before the checkpoint's are on disk whenever the checkpoint is
        self._flush(trainer)

    # -- the fit ------------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lightning.pytorch.strategies import FSDPStrategy

        if stage == "fit" and isinstance(trainer.strategy, FSDPStrategy):
            raise ValueError(
                "inrun=influence does not run under sharded training (trainer=fsdp): its hooks read whole "
                "parameters and their gradients' inputs, which FSDP shards; use DDP or one device"
            )

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        policy = pl_module.policy
        chosen = select_parameters(policy, self.parameters, option="inrun.parameters")
        self.ghost = GhostInfluence(policy, chosen)
        self.ghost.attach()
        self._settings = pl_module.logp_settings
        pl_module.logp_settings = dataclasses.replace(self._settings, tracer=self.ghost)
        pl_module.pair_observer = self._observe
        self.writer = RecordWriter(self.folder, trainer.global_rank)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        assert self.writer is not None and self.ghost is not None
        if self._restored:  # the training state is restored by now: the resumed step is known
            self.writer.truncate(trainer.global_step)
            self.refreshes = [entry for entry in self.refreshes if entry["step"] <= trainer.global_step]
            if self.direction is not None:
                self.ghost.set_direction(self.direction)
        else:
            self.writer.clear()
        distributed.barrier()

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        assert self.ghost is not None
        if batch_idx % trainer.accumulate_grad_batches == 0:  # the first batch of an optimiser step
            self._maybe_refresh(trainer, pl_module, batch_idx)
        optimizer = trainer.optimizers[0]
        self._current = {
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "lr": float(optimizer.param_groups[0]["lr"]),
            "refresh": self.refreshes[-1]["refresh"],
        }
        self.ghost.begin(len(batch["pair_ids"]), pl_module.device)

    def _observe(self, batch: dict[str, Any], out: Any) -> None:
        """The module's training step, before its backward: hook the per-pair losses (``dL/d ell_i``)."""
        assert self.ghost is not None and self._current is not None
        out.losses.register_hook(self.ghost.pair_scale)
        self._current["pair_id"] = list(batch["pair_ids"])
        self._current["loss"] = out.losses.detach().double().cpu().numpy()
        self._current["margin"] = (out.chosen_rewards - out.rejected_rewards).detach().double().cpu().numpy()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        assert self.ghost is not None and self.writer is not None and self._current is not None
        influence = self.ghost.influence().cpu().numpy()
        self.ghost.end()
        self.writer.add(influence=influence, **self._current)
        self._current = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self.ghost is not None:
            self.ghost.end()

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer)
        self._release(pl_module)
        distributed.barrier()
        if trainer.is_global_zero:
            summary = summarise(read_records(self.folder))
            provenance = {
                "source": "inrun",
                "policy": str(self.folder.parent),
                "data_fingerprint": self.data_fingerprint,
                "refreshes": len(self.refreshes),
                "steps": trainer.global_step,
            }
            path = write_scores(summary, self.folder / "scores.parquet", provenance)
            log.info("in-run influence: %d pairs summarised in %s (%d refreshes of v)", len(summary), path, len(self.refreshes))

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._release(pl_module)

    def _release(self, pl_module: L.LightningModule) -> None:
        if self.ghost is not None:
            self.ghost.end()
            self.ghost.detach()
        if self._settings is not None:
            pl_module.logp_settings = self._settings
            pl_module.pair_observer = None
            self._settings = None

    def _flush(self, trainer: L.Trainer) -> None:
        if self.writer is not None:
            self.writer.flush()
        if trainer.is_global_zero and self.refreshes:
            write_json(self.refreshes, self.folder / "refreshes.json")

    # -- v ------------------------------------------------------------------------------------------------------
    def _maybe_refresh(self, trainer: L.Trainer, pl_module: L.LightningModule, batch_idx: int) -> None:
        step = trainer.global_step
        last = self.refreshes[-1] if self.refreshes else None
        due = last is None or self.direction is None
        if last is not None and last["step"] != step:
            due = due or (self.refresh_at_epoch_start and batch_idx == 0)
            due = due or bool(self.refresh_every_n_steps and step - last["step"] >= self.refresh_every_n_steps)
        if not due:
            return
        start = time.perf_counter()
        self.direction, pairs = self._validation_gradient(trainer, pl_module)
        assert self.ghost is not None
        self.ghost.set_direction(self.direction)
        norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in self.direction.values())))
        entry = {
            "refresh": len(self.refreshes) if last is None else last["refresh"] + 1,
            "step": step,
            "epoch": trainer.current_epoch,
            "val_pairs": pairs,
            "norm": norm,
            "seconds": round(time.perf_counter() - start, 3),
        }
        self.refreshes.append(entry)
        log.info("in-run influence: v #%d at step %d on %d validation pairs (norm %.4g, %.1f s)", entry["refresh"], step, pairs, norm, entry["seconds"])

    def _validation_dataset(self, trainer: L.Trainer) -> PairDataset:
        datamodule = trainer.datamodule
        dataset = datamodule.datasets["val"]
        if not len(dataset):
            raise ValueError("inrun=influence needs validation pairs (its v is the mean validation-loss gradient)")
        if self.val_pairs is None or self.val_pairs >= len(dataset):
            return dataset
        generator = torch.Generator().manual_seed(self.seed)
        keep = sorted(torch.randperm(len(dataset), generator=generator)[: self.val_pairs].tolist())
        subset = PairDataset([dataset.items[i] for i in keep], dataset.max_length, dataset.mismatched)
        if dataset.reference is not None:
            subset.reference = {key: values[keep] for key, values in dataset.reference.items()}
        return subset

    def _validation_gradient(self, trainer: L.Trainer, pl_module: L.LightningModule) -> tuple[dict[str, Tensor], int]:
        """``v = grad (1/|D_val|) sum_i ell(theta; d_val_i)`` over the chosen parameters, in eval mode, by
        ``torch.autograd.grad`` (the parameters' ``.grad``, which may hold accumulated gradients, is not touched);
        data-parallel over the ranks and summed."""
        assert self.ghost is not None
        datamodule = trainer.datamodule
        dataset = self._validation_dataset(trainer)
        loader = datamodule.loader(dataset, datamodule.eval_batch_size, shuffle=False)
        named = dict(pl_module.policy.named_parameters())
        parameters = [named[name] for name in self.ghost.names]
        sums = [torch.zeros_like(p) for p in parameters]
        was_training = pl_module.training
        pl_module.eval()
        try:
            # the loader's iterator draws a seed from the global generator: restored after, so that training with
            # the record draws exactly the random numbers it draws without it
            with torch.random.fork_rng(devices=[]), torch.enable_grad():
                for batch in distributed.share_batches(loader, "in-run influence: v"):
                    batch = trainer.precision_plugin.convert_input(move_to(batch, pl_module.device))
                    losses = pl_module(batch)[0].losses
                    grads = torch.autograd.grad(losses.sum() / len(dataset), parameters, allow_unused=True)
                    for total, grad in zip(sums, grads):
                        if grad is not None:
                            total += grad
        finally:
            pl_module.train(was_training)
        distributed.all_reduce_sum(sums)
        return {name: total.detach() for name, total in zip(self.ghost.names, sums)}, len(dataset)
