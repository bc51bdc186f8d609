"""The LightningModule: one policy, parameterised by a preference loss.

Logged metrics use TRL's names with a ``train/`` or ``val/`` prefix: ``loss``, ``rewards/chosen``,
``rewards/rejected``, ``rewards/accuracies``, ``rewards/margins``, ``logps/chosen``, ``logps/rejected``.
Rewards are ``beta * (s(y) - s_ref(y))`` from summed log-probs whatever the loss (``beta * s(y)`` for
reference-free losses); accuracies count pairs with a strictly larger chosen reward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.precision import HalfPrecision
from torch import Tensor
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import MeanMetric

from prefalign.logprobs import pair_logps
from prefalign.losses import LossOutput, PreferenceLoss

METRICS = (
    "loss",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/accuracies",
    "rewards/margins",
    "logps/chosen",
    "logps/rejected",
)


def warmup_schedule(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_ratio: float = 0.1, decay: str = "cosine"
) -> LambdaLR:
    """Linear warm-up over ``warmup_ratio`` of the steps, then ``cosine``, ``linear`` or ``constant``.

    Args:
        optimizer: the optimiser whose learning rate is scheduled.
        total_steps: number of optimiser steps of the whole run.
        warmup_ratio: share of the steps spent warming up (0.1 in the BeeS paper and the alignment handbook).
        decay: shape after warm-up.
    """
    if decay not in ("cosine", "linear", "constant"):
        raise ValueError(f"scheduler.decay must be cosine, linear or constant, got {decay!r}")
    warmup = int(math.ceil(warmup_ratio * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if decay == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1 + math.cos(math.pi * progress)) if decay == "cosine" else 1.0 - progress

    return LambdaLR(optimizer, factor)


class KeepReferencePrecision(HalfPrecision):
    """Lightning's ``bf16-true`` / ``16-true`` precision, less its rounding of the cached reference log-probs.

    Lightning casts every floating-point tensor of a batch to the weights' dtype before the step. The batch's
    ``reference_*_logps`` are float32 sums over a completion's tokens: in bfloat16 (8 significant bits) a
    summed log-prob of -130.87 becomes -131.0, so each implicit reward ``beta * (s - s_ref)`` would carry an
    error of up to ``beta * 0.5`` nats from the cast alone, and the first-step DPO loss would not be log 2
    (measured on the tiny Llama in bfloat16: 0.6795 instead of 0.6931). Those tensors stay float32 here; the
    rest of the batch is converted as Lightning would (the token ids and masks are integers and unchanged).
    """

    def convert_input(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {
                key: value if key.startswith("reference_") else super(KeepReferencePrecision, self).convert_input(value)
                for key, value in data.items()
            }
        return super().convert_input(data)


def precision_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Lightning ``Trainer`` keyword arguments with ``precision="bf16-true"`` or ``"16-true"`` swapped for
    :class:`KeepReferencePrecision` (a plugin instead of the flag, which Lightning does not accept together);
    every other precision is left to Lightning (``*-mixed`` autocasts without converting the batch)."""
    options = dict(options)
    if str(options.get("precision")) in ("bf16-true", "16-true"):
        precision = options.pop("precision")
        options["precision"] = None
        options["plugins"] = [*(options.get("plugins") or []), KeepReferencePrecision(precision)]
    return options


def reference_logps(batch: dict[str, Any]) -> dict[str, Tensor] | None:
    """The batch's cached reference log-probs in the loss's format, or ``None`` when there are none."""
    reference = {
        key[len("reference_") :]: value for key, value in batch.items() if key.startswith("reference_")
    }
    return reference or None


def pair_metrics(out: LossOutput, policy: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-pair values of every logged metric (TRL's names)."""
    return {
        "loss": out.losses.detach(),
        "rewards/chosen": out.chosen_rewards,
        "rewards/rejected": out.rejected_rewards,
        "rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).float(),
        "rewards/margins": out.chosen_rewards - out.rejected_rewards,
        "logps/chosen": policy["chosen_logps"].detach(),
        "logps/rejected": policy["rejected_logps"].detach(),
    }


class PreferenceModule(L.LightningModule):
    """Trains ``model`` with ``loss`` on preference batches.

    Args:
        model: the policy (a Hugging Face causal LM, possibly wrapped by peft).
        loss: a :class:`~prefalign.losses.PreferenceLoss`.
        optimizer: partial optimiser, called with the trainable parameters.
        scheduler: optional partial scheduler, called with the optimiser and the total number of steps.
        share_prompt: run each prompt once for both completions (see :mod:`prefalign.logprobs`).
        pack_length: pack the batch's sequences into rows of this many tokens without padding (``None``: padded
            batches); see :func:`~prefalign.logprobs.packed_completion_logps`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss: PreferenceLoss,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        share_prompt: bool = True,
        pack_length: int | None = None,
    ) -> None:
        super().__init__()
        self.policy = model
        self.loss_fn = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.share_prompt = share_prompt
        self.pack_length = pack_length
        self.val_metrics = torch.nn.ModuleDict({name.replace("/", "_"): MeanMetric() for name in METRICS})
        # the global step of the last validation (None: none yet), so a run that stops mid-epoch can end with one
        self.validated_at_step: int | None = None
        # pairs this process trained on in this fit (its throughput, per device)
        self.pairs_trained = 0

    def on_fit_start(self) -> None:
        # from_pretrained returns models in eval mode, scorers leave the policy and the loss in eval mode, and
        # Lightning keeps whatever mode it finds
        self.train()

    def forward(self, batch: dict[str, Any]) -> tuple[LossOutput, dict[str, Tensor]]:
        """Policy log-probs of the batch and the loss against its cached reference log-probs."""
        policy = pair_logps(
            self.policy,
            batch,
            share_prompt=self.share_prompt,
            mismatched=self.loss_fn.requires_mismatched,
            pack_length=self.pack_length,
        )
        reference = reference_logps(batch) if self.loss_fn.requires_reference else None
        if self.loss_fn.requires_mismatched:
            # z0 is detached: the mismatched completions are evaluated but never trained on
            policy["kl_chosen_logps"] = policy["kl_chosen_logps"].detach()
            policy["kl_rejected_logps"] = policy["kl_rejected_logps"].detach()
        return self.loss_fn(policy, reference), policy

    def _check_finite(self, out: LossOutput, batch: dict[str, Any]) -> None:
        bad = ~torch.isfinite(out.losses)
        if bad.any():
            pair_ids = [pid for pid, flag in zip(batch["pair_ids"], bad.tolist()) if flag]
            raise FloatingPointError(
                f"non-finite loss at global step {self.global_step} for pair ids {pair_ids}; stopping"
            )

    def pair_values(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Per-pair values of every logged metric for one batch: what validation averages, and what held-out
        evaluation (:func:`prefalign.evaluation.run.heldout_metrics`) bootstraps."""
        out, policy = self(batch)
        return pair_metrics(out, policy)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out, policy = self(batch)
        self._check_finite(out, batch)
        weights = batch.get("weights")
        # data.weights: the mean of weighted per-pair losses (unweighted pairs have weight 1); logged as train/loss
        loss = out.losses.mean() if weights is None else (out.losses * weights.to(out.losses.dtype)).mean()
        size = len(batch["pair_ids"])
        self.pairs_trained += size
        metrics = pair_metrics(out, policy)
        metrics["loss"] = loss.detach()
        for name, values in metrics.items():
            self.log(f"train/{name}", values.mean(), on_step=True, on_epoch=False, batch_size=size, prog_bar=name == "loss")
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        for name, values in self.pair_values(batch).items():
            self.val_metrics[name.replace("/", "_")].update(values)

    def on_validation_epoch_end(self) -> None:
        for name in METRICS:
            metric = self.val_metrics[name.replace("/", "_")]
            self.log(f"val/{name}", metric.compute(), prog_bar=name == "rewards/accuracies")
            metric.reset()
        if not self.trainer.sanity_checking:
            self.validated_at_step = self.global_step

    def configure_optimizers(self) -> Any:
        parameters = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(parameters)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
