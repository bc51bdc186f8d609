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

from prefalign.logprobs import LogpSettings, pair_logps
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
    ``reference`` log-probs are float32 sums over a completion's tokens: in bfloat16 (8 significant bits) a
    summed log-prob of -130.87 becomes -131.0, so each implicit reward ``beta * (s - s_ref)`` would carry an
    error of up to ``beta * 0.5`` nats from the cast alone, and the first-step DPO loss would not be log 2
    (measured on the tiny Llama in bfloat16: 0.6795 instead of 0.6931). Those tensors stay float32 here; the
    rest of the batch is converted as Lightning would (the token ids and masks are integers and unchanged).
    """

    def convert_input(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {
                key: value if key == "reference" else super(KeepReferencePrecision, self).convert_input(value)
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
    """The batch's cached reference log-probs in the loss's format (its ``reference`` field,
    :func:`~prefalign.data.collate.collate_pairs`), or ``None`` when there are none."""
    return batch.get("reference") or None


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


def nonfinite_count(parameters: list[Tensor]) -> int:
    """How many entries of ``parameters`` are NaN or infinite.

    One norm per tensor answers the usual case (all finite) in a single pass; only when a norm is not finite
    (a non-finite entry, or finite ones so large that the norm overflows) are the entries counted.
    A sharded parameter (a ``DTensor``) is counted on this process's shard only: the caller combines the ranks.
    """
    parameters = [local_part(p.detach()) for p in parameters]
    if not parameters:
        return 0
    norms = torch.stack([torch.linalg.vector_norm(p).float() for p in parameters])
    if torch.isfinite(norms).all():
        return 0
    return int(sum((~torch.isfinite(p)).sum() for p in parameters))


def local_part(tensor: Tensor) -> Tensor:
    """This process's shard of a sharded tensor (a ``DTensor`` of an FSDP run), or the tensor itself."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


def nonfinite_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The metrics whose value is NaN or infinite (a run with any is no result)."""
    return {name: float(value) for name, value in metrics.items() if not math.isfinite(float(value))}


class PolicyPass(torch.nn.Module):
    """The policy's log-prob pass (:func:`~prefalign.logprobs.pair_logps`) as one module call.

    A sharded run (``trainer=fsdp``) makes it the root of the sharding: the pass calls the policy's decoder and
    then its head in chunks, never the model's own ``forward``, so the parameters outside the decoder layers
    (embeddings, final norm, head) are gathered around this call instead. It is not a submodule of the
    training module: the policy's weights keep their names (``policy.<name>``) in state dicts and checkpoints.
    """

    def __init__(self, policy: torch.nn.Module) -> None:
        super().__init__()
        self.policy = policy

    def forward(self, batch: dict[str, Any], settings: LogpSettings, mismatched: bool) -> dict[str, Tensor]:
        logps = pair_logps(self.policy, batch, settings, mismatched=mismatched)
        # views out of a sharded root would lose its backward hook to any in-place op on them: fresh tensors instead
        return {key: value.clone() if value._is_view() else value for key, value in logps.items()}


class PreferenceModule(L.LightningModule):
    """Trains ``model`` with ``loss`` on preference batches.

    Args:
        model: the policy (a Hugging Face causal LM, possibly wrapped by peft).
        loss: a :class:`~prefalign.losses.PreferenceLoss`.
        optimizer: partial optimiser, called with the trainable parameters.
        scheduler: optional partial scheduler, called with the optimiser and the total number of steps.
        logp_settings: how the policy's log-prob passes run (prompt sharing, packing, vocabulary chunks): the
            run's :class:`~prefalign.logprobs.LogpSettings`.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss: PreferenceLoss,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        logp_settings: LogpSettings = LogpSettings(),
    ) -> None:
        super().__init__()
        self.policy = model
        self.loss_fn = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.logp_settings = logp_settings
        # NaN kept in the means (torchmetrics drops it by default, which would hide a broken pair or policy)
        self.val_metrics = torch.nn.ModuleDict(
            {name.replace("/", "_"): MeanMetric(nan_strategy="disable") for name in METRICS}
        )
        # the global step of the last validation (None: none yet), so a run that stops mid-epoch can end with one
        self.validated_at_step: int | None = None
        # pairs this process trained on in this fit (its throughput, per device)
        self.pairs_trained = 0
        # the pairs of the optimiser step under way (all its accumulated batches), named if it breaks the weights
        self._step_pair_ids: list[str] = []
        # validation pairs with a non-finite loss in the validation under way
        self._nonfinite_val_pairs: list[str] = []
        # this process's per-pair values of the validation under way, and of the last complete one (not the sanity
        # check): {"pair_id": [...], "<metric>": [...]}, what held-out evaluation bootstraps
        self._val_pairs: dict[str, list[Any]] = {}
        self.last_val_pairs: dict[str, list[Any]] | None = None
        # called with each training batch and its loss output before the backward pass (the in-run influence,
        # prefalign.inrun, hooks the per-pair losses there); None: nothing
        self.pair_observer: Callable[[dict[str, Any], LossOutput], None] | None = None
        # the sharded log-prob pass of an FSDP run (set_policy_pass, by the strategy in configure_model); None:
        # the policy's own
        self.policy_pass: PolicyPass | None = None

    def set_policy_pass(self, policy_pass: PolicyPass) -> None:
        """Run the policy's log-prob passes through ``policy_pass`` (a sharded run's root unit). It is kept out
        of the module's submodules, so that the policy's weights keep their one name, ``policy.<name>``."""
        object.__setattr__(self, "policy_pass", policy_pass)

    def configure_model(self) -> None:
        """Lightning's hook for sharding: a strategy that shards the policy (``trainer=fsdp``'s
        :class:`~prefalign.trainer.FSDP2Strategy`) does it here; under any other, nothing happens."""
        shard = getattr(self.trainer.strategy, "shard_module", None) if self._trainer is not None else None
        if shard is not None:
            shard(self)

    def on_fit_start(self) -> None:
        # from_pretrained returns models in eval mode, scorers leave the policy and the loss in eval mode, and
        # Lightning keeps whatever mode it finds
        self.train()
        # per-pair weights were checked in float32 when read; a half-precision run weights its losses in its own
        # dtype, where a weight may overflow or every weight round to zero
        datamodule = getattr(self.trainer, "datamodule", None)
        if hasattr(datamodule, "check_weights"):
            dtype = next((p.dtype for p in self.policy.parameters() if p.is_floating_point()), torch.float32)
            datamodule.check_weights(dtype)

    def forward(
        self, batch: dict[str, Any], logp_settings: LogpSettings | None = None
    ) -> tuple[LossOutput, dict[str, Tensor]]:
        """Policy log-probs of the batch and the loss against its cached reference log-probs.

        Args:
            batch: a collated batch of pairs.
            logp_settings: this pass's settings instead of the module's (the JVP influence's vocabulary step).
        """
        settings, mismatched = logp_settings or self.logp_settings, self.loss_fn.requires_mismatched
        if self.policy_pass is not None:
            policy = self.policy_pass(batch, settings, mismatched)
        else:
            policy = pair_logps(self.policy, batch, settings, mismatched=mismatched)
        reference = reference_logps(batch) if self.loss_fn.requires_reference else None
        if self.loss_fn.requires_mismatched:
            # z0 is detached: the mismatched completions are evaluated but never trained on
            policy["kl_chosen_logps"] = policy["kl_chosen_logps"].detach()
            policy["kl_rejected_logps"] = policy["kl_rejected_logps"].detach()
        return self.loss_fn(policy, reference), policy

    def _check_finite(self, out: LossOutput, batch: dict[str, Any], weights: Tensor | None = None) -> None:
        """Stop at a non-finite per-pair loss, weight or weighted loss, naming those pairs and the step.

        A non-finite value left in the step would reach every weight through the gradient, and the next batch's
        pairs would be blamed for it.

        Raises:
            FloatingPointError: naming the global step and, per kind of value, the pairs whose value is not finite.
        """
        pair_ids = list(batch["pair_ids"])
        found = {"loss": ~torch.isfinite(out.losses.detach())}
        if weights is not None:
            found[f"weight (in {str(weights.dtype).removeprefix('torch.')})"] = ~torch.isfinite(weights)
            found["weighted loss"] = ~torch.isfinite(out.losses.detach() * weights) & ~found["loss"] & torch.isfinite(weights)
        parts = [
            f"{what} of pair ids {[pid for pid, flag in zip(pair_ids, bad.tolist()) if flag]}"
            for what, bad in found.items()
            if bad.any()
        ]
        if self._trainer is not None and self.trainer.world_size > 1:
            # every rank stops at the same step: one that went on alone would wait for the others in its backward
            if self.trainer.strategy.reduce_boolean_decision(bool(parts), all=False) and not parts:
                parts = ["values on another process"]
        if parts:
            raise FloatingPointError(f"non-finite {'; '.join(parts)} at global step {self.global_step}; stopping")

    def pair_values(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Per-pair values of every logged metric for one batch: what validation averages, and what held-out
        evaluation (:func:`prefalign.evaluation.policy.heldout_metrics`) bootstraps."""
        out, policy = self(batch)
        return pair_metrics(out, policy)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        out, policy = self(batch)
        if self.pair_observer is not None:
            self.pair_observer(batch, out)
        weights = batch.get("weights")
        weights = None if weights is None else weights.to(out.losses.dtype)
        self._check_finite(out, batch, weights)
        # the loss's batch objective: the mean of the weighted per-pair losses (data.weights; unweighted pairs have
        # weight 1) unless the loss says otherwise; logged as train/loss
        loss = self.loss_fn.reduce(out.losses, weights)
        size = len(batch["pair_ids"])
        self.pairs_trained += size
        self._step_pair_ids.extend(batch["pair_ids"])
        metrics = pair_metrics(out, policy)
        metrics["loss"] = loss.detach()
        for name, values in metrics.items():
            self.log(f"train/{name}", values.mean(), on_step=True, on_epoch=False, batch_size=size, prog_bar=name == "loss")
        return loss

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Lightning's step, then a check that the trainable weights are still finite.

        It comes before any checkpoint of the step is saved, so that no checkpoint holds non-finite weights.

        Raises:
            FloatingPointError: the step made weights non-finite (finite losses and weights, but an update too
                large for the dtype: typically the learning rate); names the step and its pairs.
        """
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        pair_ids, self._step_pair_ids = self._step_pair_ids, []
        bad = nonfinite_count([p for p in self.policy.parameters() if p.requires_grad])
        count = str(bad)
        if self.trainer.world_size > 1:  # FSDP shards differ: every rank stops together, or none
            bad = int(self.trainer.strategy.reduce_boolean_decision(bad > 0, all=False))
            count = "some"
        if bad:
            lr = ", ".join(f"{group['lr']:g}" for group in optimizer.param_groups)
            raise FloatingPointError(
                f"non-finite weights at global step {self.global_step}: the optimiser step (learning rate {lr}) made "
                f"{count} weights NaN or infinite, though the losses and weights of its pairs were finite (pair ids "
                f"{pair_ids[:8]}{' ...' if len(pair_ids) > 8 else ''}): the update itself overflowed; lower "
                "optimizer.lr or clip gradients (trainer.gradient_clip_val). Stopping: no policy, no metrics.json and "
                "no checkpoint of these weights are written"
            )

    def on_validation_epoch_start(self) -> None:
        self._val_pairs = {}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        values = self.pair_values(batch)
        bad = ~torch.isfinite(values["loss"])
        if bad.any():
            self._nonfinite_val_pairs.extend(pid for pid, flag in zip(batch["pair_ids"], bad.tolist()) if flag)
        self._val_pairs.setdefault("pair_id", []).extend(batch["pair_ids"])
        for name, value in values.items():
            self.val_metrics[name.replace("/", "_")].update(value)
            self._val_pairs.setdefault(name, []).extend(value.detach().float().cpu().tolist())

    def on_validation_epoch_end(self) -> None:
        results = {}
        for name in METRICS:
            metric = self.val_metrics[name.replace("/", "_")]
            results[f"val/{name}"] = metric.compute()
            self.log(f"val/{name}", results[f"val/{name}"], prog_bar=name == "rewards/accuracies")
            metric.reset()
        pair_ids, self._nonfinite_val_pairs = self._nonfinite_val_pairs, []
        bad = nonfinite_metrics(results)
        if bad:
            raise FloatingPointError(
                f"non-finite validation metrics at global step {self.global_step}: {bad}; validation pairs with a "
                f"non-finite loss: {pair_ids[:20] if pair_ids else 'none on this process'}. Stopping: no policy and "
                "no metrics.json are written"
            )
        if not self.trainer.sanity_checking:
            self.validated_at_step = self.global_step
            self.last_val_pairs, self._val_pairs = self._val_pairs, {}

    def configure_optimizers(self) -> Any:
        parameters = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(parameters)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer, total_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
