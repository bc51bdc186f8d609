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

**Selection that follows the model** (``online``, :class:`OnlineBand`): while training, the pairs whose current IF
falls outside the TIF band ``(low, high)`` of a running percentile estimate (the last ``window`` in-run IF values
of the run, on this process) are dropped from the step (weight 0) or down-weighted, the batch's other weights
rescaled so that its mean weight is unchanged. Two modes:

* ``same_step``: before each step, a scoring pass (forward and backward, its gradients discarded) gives every pair
  of the batch its IF at ``theta_t``; the update then runs on the kept pairs. Exact to the step, about twice the
  cost of a step.
* ``previous_visit``: a pair's IF from its last visit (an earlier epoch) decides its next one; nearly free, but
  the first epoch trains on every pair, and a dropped pair, which gets no gradient, keeps its last measured IF.

Each record row says which weight the rule gave the pair (``weight``), and ``inrun/online.json`` counts what
was dropped or down-weighted, per epoch.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

import lightning as L
import torch
from torch import Tensor

from prefalign import distributed
from prefalign.atomic import write_json
from prefalign.data.datamodule import PairDataset
from prefalign.inrun.ghost import GhostInfluence, mean_gradient, select_parameters
from prefalign.inrun.record import RecordWriter, read_records, summarise, write_scores
from prefalign.reference import move_to
from prefalign.selection.rules import band_mask

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
        online: the settings of an :class:`OnlineBand` that drops or down-weights pairs while training
            (``None``: record only, change nothing).
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
        online: dict[str, Any] | None = None,
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
        self.online = OnlineBand(**online) if online else None
        self.direction: dict[str, Tensor] | None = None
        self.refreshes: list[dict[str, Any]] = []
        self.ghost: GhostInfluence | None = None
        self.writer: RecordWriter | None = None
        self._restored = False
        self._settings: Any = None
        self._current: dict[str, Any] | None = None

    # -- checkpoint state: v and the refresh log, so that a resumed run continues with the same v ------------
    def state_dict(self) -> dict[str, Any]:
        state = {"direction": self.direction, "refreshes": list(self.refreshes)}
        if self.online is not None:
            state["online"] = self.online.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.direction = state_dict.get("direction")
        self.refreshes = list(state_dict.get("refreshes") or [])
        if self.online is not None and state_dict.get("online"):
            self.online.load_state_dict(state_dict["online"])
        self._restored = True

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # the records of every step before the checkpoint's are on disk whenever the checkpoint is
        self._flush(trainer)

    # -- the fit ------------------------------------------------------------------------------------------------
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        from lightning.pytorch.strategies import ModelParallelStrategy

        if stage == "fit" and isinstance(trainer.strategy, ModelParallelStrategy):
            raise ValueError(
                "inrun=influence does not run under sharded training (trainer=fsdp): its ghost products need each "
                "layer's whole weight and the validation gradient of that whole weight, and FSDP holds a shard of "
                "each on every process (gathered only for the moment of a layer's pass); use trainer=ddp or one device"
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
        pair_ids = list(batch["pair_ids"])
        if self.online is not None and self.online.mode == "same_step":
            # the scoring pass at theta_t; the step itself then needs no ghost products
            self._current.update(self._scoring_pass(pl_module, batch))
            factors = self.online.factors(self._current["influence"])
        elif self.online is not None:
            factors = self.online.factors(np.array([self.online.last.get(pair_id, np.nan) for pair_id in pair_ids]))
            self.ghost.begin(len(pair_ids), pl_module.device)
        else:
            factors = np.ones(len(pair_ids))
            self.ghost.begin(len(pair_ids), pl_module.device)
        self._current["weight"] = factors
        if self.online is not None:
            self.online.apply(batch, factors, trainer.current_epoch)

    def _observe(self, batch: dict[str, Any], out: Any) -> None:
        """The module's training step, before its backward: hook the per-pair losses (``dL/d ell_i``)."""
        assert self.ghost is not None and self._current is not None
        if self.ghost.active:
            out.losses.register_hook(self.ghost.pair_scale)
        self._current["pair_id"] = list(batch["pair_ids"])
        self._current["loss"] = out.losses.detach().double().cpu().numpy()
        self._current["margin"] = (out.chosen_rewards - out.rejected_rewards).detach().double().cpu().numpy()

    def _scoring_pass(self, pl_module: L.LightningModule, batch: dict[str, Any]) -> dict[str, Any]:
        """Every pair's IF at the current weights, from a forward and backward pass of the batch whose gradients
        are discarded (``torch.autograd.grad``: the parameters' ``.grad`` is not touched)."""
        assert self.ghost is not None
        named = dict(pl_module.policy.named_parameters())
        parameters = [named[name] for name in self.ghost.names]
        with torch.random.fork_rng(devices=[]):  # the step itself draws the same dropout as without this pass
            influence = self.ghost.pass_influence(
                lambda: pl_module(batch)[0].losses,
                lambda losses: torch.autograd.grad(losses.sum(), parameters, allow_unused=True),
                len(batch["pair_ids"]),
                pl_module.device,
            )
        return {"influence": influence.cpu().numpy()}

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        assert self.ghost is not None and self.writer is not None and self._current is not None
        if "influence" not in self._current:
            self._current["influence"] = self.ghost.influence().cpu().numpy()
        self.ghost.end()
        if self.online is not None:
            self.online.observe(self._current["pair_id"], self._current["influence"])
        self.writer.add(**self._current)
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
        if self.online is not None:
            write_json(self.online.report(), self.folder / "records" / f"online-rank-{trainer.global_rank:02d}.json")

    def summary(self) -> dict[str, Any]:
        """What ``metrics.json`` records of the in-run influence: where the record is, how many ``v``, and what the
        online rule did (its settings and the pairs it dropped or down-weighted on this process)."""
        facts: dict[str, Any] = {"record": str(self.folder), "refreshes": len(self.refreshes), "parameters": self.parameters}
        if self.online is not None:
            report = self.online.report()
            facts["online"] = {
                "mode": report["mode"],
                "action": report["action"],
                "band": report["band"],
                "outside": sum(epoch["outside"] for epoch in report["per_epoch"].values()),
                "pairs": sum(epoch["pairs"] for epoch in report["per_epoch"].values()),
            }
        return facts

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
        :func:`~prefalign.inrun.ghost.mean_gradient` (the parameters' ``.grad``, which may hold accumulated
        gradients, is not touched); data-parallel over the ranks and summed."""
        assert self.ghost is not None
        datamodule = trainer.datamodule
        dataset = self._validation_dataset(trainer)
        loader = datamodule.loader(dataset, datamodule.eval_batch_size, shuffle=False)

        def losses_of(batch: dict[str, Any]) -> Tensor:
            return pl_module(trainer.precision_plugin.convert_input(move_to(batch, pl_module.device)))[0].losses

        was_training = pl_module.training
        pl_module.eval()
        try:
            # the loader's iterator draws a seed from the global generator: restored after, so that training with
            # the record draws exactly the random numbers it draws without it
            with torch.random.fork_rng(devices=[]):
                batches = distributed.share_batches(loader, "in-run influence: v")
                direction = mean_gradient(pl_module.policy, self.ghost.names, losses_of, batches, len(dataset))
        finally:
            pl_module.train(was_training)
        return direction, len(dataset)


class OnlineBand:
    """The online TIF rule of ``inrun.online``: which pairs of a batch to drop or down-weight from their in-run IF.

    A pair is in the band when its IF lies strictly between the ``low``-th and ``high``-th percentiles of the
    running estimate (the TIF selector, ``I[delta_small < IF < delta_large]``, :func:`~prefalign.selection.rules.band_mask`),
    here over the last ``window`` IF values measured in this run. Until ``min_values`` values are in, and for a
    pair without an IF yet (``previous_visit``'s first epoch), every pair is kept.

    Args:
        mode: ``same_step`` or ``previous_visit`` (:mod:`prefalign.inrun.callback`).
        low, high: the band's percentiles (the TIF paper's 10 and 90 by default).
        action: ``drop`` (weight 0) or ``downweight`` (weight ``downweight``).
        downweight: the weight of a pair outside the band under ``action=downweight``.
        window: how many of the latest IF values the percentiles are taken over.
        min_values: how many values the estimate needs before it drops anything.
    """

    MODES = ("same_step", "previous_visit")
    ACTIONS = ("drop", "downweight")

    def __init__(
        self,
        mode: str = "previous_visit",
        low: float = 10.0,
        high: float = 90.0,
        action: str = "drop",
        downweight: float = 0.1,
        window: int = 2048,
        min_values: int = 64,
    ) -> None:
        if mode not in self.MODES:
            raise ValueError(f"inrun.online.mode must be one of {self.MODES}, got {mode!r}")
        if action not in self.ACTIONS:
            raise ValueError(f"inrun.online.action must be one of {self.ACTIONS}, got {action!r}")
        if not 0 <= low < high <= 100:
            raise ValueError(f"inrun.online needs 0 <= low < high <= 100, got ({low}, {high})")
        if not 0 <= downweight <= 1:
            raise ValueError(f"inrun.online.downweight must be in [0, 1], got {downweight}")
        if window < 1 or min_values < 1:
            raise ValueError(f"inrun.online.window and min_values must be positive, got {window} and {min_values}")
        self.mode, self.low, self.high, self.action = mode, float(low), float(high), action
        self.downweight, self.window, self.min_values = float(downweight), int(window), int(min_values)
        self.values: deque[float] = deque(maxlen=self.window)
        self.last: dict[str, float] = {}  # each pair's latest measured IF
        self.counts: dict[int, dict[str, int]] = {}

    def factors(self, influence: np.ndarray) -> np.ndarray:
        """The rule's factor for each pair (1 in the band or without a value, else 0 or ``downweight``)."""
        influence = np.asarray(influence, dtype=float)
        factors = np.ones(len(influence))
        if len(self.values) < self.min_values:
            return factors
        _, band = band_mask(np.asarray(self.values), self.low, self.high)  # the thresholds of the window
        inside = (influence > band["low_value"]) & (influence < band["high_value"])
        outside = np.isfinite(influence) & ~inside
        factors[outside] = 0.0 if self.action == "drop" else self.downweight
        return factors

    def apply(self, batch: dict[str, Any], factors: np.ndarray, epoch: int) -> None:
        """Put the factors into the batch's per-pair weights, rescaled so that the batch's mean weight is the same
        as without the rule (an all-outside batch is trained as it is: nothing to rescale to)."""
        counts = self.counts.setdefault(epoch, {"pairs": 0, "outside": 0})
        counts["pairs"] += len(factors)
        counts["outside"] += int((factors < 1).sum())
        if (factors == 1).all() or not (factors > 0).any():
            return
        weights = batch.get("weights")
        base = torch.ones(len(factors), dtype=torch.float64) if weights is None else weights.detach().double().cpu()
        scaled = base * torch.as_tensor(factors, dtype=torch.float64)
        if scaled.sum() <= 0:
            return
        scaled *= base.sum() / scaled.sum()
        device = batch["prompt_input_ids"].device
        batch["weights"] = scaled.to(device=device, dtype=torch.float32 if weights is None else weights.dtype)

    def observe(self, pair_ids: list[str], influence: np.ndarray) -> None:
        """Add the measured IF values to the running estimate and to each pair's latest value."""
        for pair_id, value in zip(pair_ids, np.asarray(influence, dtype=float)):
            if np.isfinite(value):
                self.values.append(float(value))
                self.last[pair_id] = float(value)

    def report(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "action": self.action,
            "band": [self.low, self.high],
            "per_epoch": {str(epoch): counts for epoch, counts in sorted(self.counts.items())},
        }

    def state_dict(self) -> dict[str, Any]:
        return {"values": list(self.values), "last": dict(self.last), "counts": {str(k): v for k, v in self.counts.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.values = deque(state.get("values") or [], maxlen=self.window)
        self.last = dict(state.get("last") or {})
        self.counts = {int(k): dict(v) for k, v in (state.get("counts") or {}).items()}
