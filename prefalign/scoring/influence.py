"""Exact first-order influence (IF) of every training pair on the mean validation loss.

TIF paper (Zhang et al., ICLR 2026), the IF definition (slide "Preliminary", and Eq. for IF_DPO)::

    IF(d) = < (1/|D_val|) sum_i grad ell(theta; d_val_i) ,  grad ell(theta; d) >

under the training loss ``ell`` (DPO, SLiC, IPO, SimPO, ...). Positive means the pair's gradient agrees with
the validation gradient: a gradient step on ``d`` lowers the validation loss, to first order.

**Exact at forward cost.** ``<grad ell_d(theta), v> = d/de ell_d(theta + e v)`` at ``e = 0``. With ``v`` the
mean validation gradient (one ordinary backward pass over the validation set), one forward-mode JVP
(``torch.func.jvp`` over ``torch.func.functional_call``) of the vector of per-pair losses along ``v`` returns
every pair's exact IF in the batch: no per-example gradient is ever formed. This is exact, not an
approximation: it equals the per-pair autograd inner product up to floating-point rounding
(:func:`per_pair_influence` is that reference, kept for tests and benchmarks).

Forward-mode AD needs attention with a forward-AD formula (PyTorch's fused flash / memory-efficient kernels
have none): the pass runs :mod:`prefalign.scoring.jvp_attention` (attention with a hand-written JVP), and
PyTorch's math SDPA backend wherever that does not apply. In packed batches the vocabulary projection and its
log-softmax have a hand-written JVP too (:mod:`prefalign.scoring.jvp_head`: no ``tokens x vocabulary`` tangent).
The RMSNorms, SiLU-gated MLPs and rotary embeddings were tried the same way and did not pay: forward-mode AD
differentiates them op by op at no measurable cost to the whole JVP (10.4-10.7 s with, 10.2-11.7 s without, on
32 pairs of the embedded model), whose time is ~80% matmuls at the CPU's peak.

``nn.Embedding(padding_idx=pad)`` zeroes the pad row of every gradient, so the validation gradient ``v`` has a
zero pad row and JVP and autograd agree.

Which parameters count is an option: every trainable parameter (default; the LoRA weights under LoRA), all
parameters, or those whose names match regular expressions.

**Several processes** (``torchrun``; :mod:`prefalign.distributed`). The validation gradient is data-parallel:
each rank back-propagates every ``N``-th validation batch, each batch's loss sum divided by the size of the
whole validation set, and the ranks' gradients are summed (all-reduce), so ``v`` is the one-process gradient up
to the order of the float additions. The JVP runs on an unwrapped replica of the policy on every rank, each rank
on its share of the training batches: ``torch.func.jvp`` does not pass through DDP or FSDP wrappers (PyTorch
issues 182641 and 102197), so this is data-parallel scoring, not model-parallel. Each device needs memory for a
full replica of the model (twice under ``dtype`` other than the policy's), the validation gradient ``v`` (one
more copy of the influence's parameters), and the JVP's activations with their tangents (about twice a forward
pass's, plus two ``L x L`` attention matrices per head for ``L = pack_length``); a model that does not fit one
device whole cannot be scored this way.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from prefalign import distributed
from prefalign.inrun.ghost import mean_gradient, select_parameters
from prefalign.logprobs import LogpSettings
from prefalign.losses import PreferenceLoss
from prefalign.models import DTYPES
from prefalign.module import PreferenceModule
from prefalign.reference import move_to
from prefalign.scoring import jvp_attention, jvp_head
from prefalign.scoring.base import Scorer, ScoringContext

log = logging.getLogger(__name__)


class PairLosses(torch.nn.Module):
    """``batch -> per-pair training losses (B,)``, through the training module's own forward, its log-prob passes
    run as ``logp_settings`` say (or as a call's own ``logp_settings``: the JVP's vocabulary step)."""

    def __init__(self, model: torch.nn.Module, loss: PreferenceLoss, logp_settings: LogpSettings = LogpSettings()) -> None:
        super().__init__()
        self.module = PreferenceModule(model, loss, optimizer=None, logp_settings=logp_settings)  # type: ignore[arg-type]

    @property
    def logp_settings(self) -> LogpSettings:
        return self.module.logp_settings

    def forward(self, batch: dict[str, Any], logp_settings: LogpSettings | None = None) -> Tensor:
        return self.module(batch, logp_settings)[0].losses


def validation_gradient(
    losses: PairLosses, loader: Any, names: list[str], device: torch.device, desc: str = "validation gradient"
) -> dict[str, Tensor]:
    """``v = grad (1/|D_val|) sum_i ell(theta; d_val_i)`` over the named parameters, in eval mode
    (:func:`prefalign.inrun.ghost.mean_gradient`, which the in-run influence uses too).

    Under a launcher each rank back-propagates every ``world_size``-th batch and the gradients are summed over
    the ranks: every rank returns the whole ``v``.
    """
    losses.eval()
    batches = distributed.share_batches(loader, desc)
    return mean_gradient(losses, names, lambda batch: losses(move_to(batch, device)), batches, len(loader.dataset))


def jvp_influence(losses: PairLosses, batch: dict[str, Any], direction: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Per-pair losses and ``<grad ell_d, direction>`` for every pair of a batch, in one forward-mode pass."""
    primals = {name: parameter.detach() for name, parameter in losses.named_parameters() if name in direction}
    tangents = {name: direction[name].to(primals[name].dtype) for name in primals}

    # packed passes take the vocabulary step with a hand-written forward-mode derivative, in this pass only
    settings = dataclasses.replace(losses.logp_settings, head_logps=jvp_head.head_logps)

    def per_pair(parameters: dict[str, Tensor]) -> Tensor:
        return functional_call(losses, parameters, (batch, settings), strict=False)

    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), jvp_attention.installed(losses.module.policy):
        values, influence = jvp(per_pair, (primals,), (tangents,))
    return values, influence


def batch_rows(batch: dict[str, Any], rows: slice) -> dict[str, Any]:
    """The pairs ``rows`` of a collated batch, their ``reference`` log-probs included."""

    def part(value: Any) -> Any:
        if isinstance(value, (Tensor, list)):
            return value[rows]
        return {key: part(item) for key, item in value.items()} if isinstance(value, dict) else value

    return {key: part(value) for key, value in batch.items()}


def per_pair_influence(losses: PairLosses, batch: dict[str, Any], direction: dict[str, Tensor]) -> Tensor:
    """Reference implementation: one autograd gradient per pair, dotted with ``direction`` (the paper's way)."""
    named = dict(losses.named_parameters())
    parameters = [named[name] for name in direction]
    flags = [p.requires_grad for p in parameters]
    for parameter in parameters:
        parameter.requires_grad_(True)
    results = []
    try:
        for row in range(len(batch["pair_ids"])):
            loss = losses(batch_rows(batch, slice(row, row + 1))).sum()
            gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
            dot = sum(
                (g * direction[name]).sum() for name, g in zip(direction, gradients) if g is not None
            )
            results.append(torch.as_tensor(dot, dtype=loss.dtype))
    finally:
        for parameter, flag in zip(parameters, flags):
            parameter.requires_grad_(flag)
    return torch.stack(results)


class InfluenceScorer(Scorer):
    """``influence``: the exact IF of each training pair on the mean validation loss (JVP, see module doc).

    Args:
        parameters: which parameters count (see :func:`select_parameters`).
        dtype: compute in this dtype (``float64`` for exactness checks; ``null`` keeps the policy's dtype).
        method: ``jvp`` (batched forward-mode, default) or ``autograd`` (per-pair gradients, the reference).
        pack_length: row length of the packed batches of this score (the validation gradient and the JVP),
            ``"run"`` for the run's ``pack_length``, ``None`` for padded batches; the run's other log-prob settings
            hold (prompt sharing, vocabulary chunks). The scores do not depend on it
            (float rounding aside); the JVP is fastest on shorter rows than a forward pass, because it carries
            two ``L x L`` attention matrices per head (``python -m bench.influence``).
    """

    name = "influence"
    label = "Exact influence (IF)"
    prepares_together = True  # the validation gradient is all-reduced

    def __init__(
        self,
        parameters: str | list[str] = "trainable",
        dtype: str | None = None,
        method: str = "jvp",
        pack_length: int | str | None = 128,
    ) -> None:
        if method not in ("jvp", "autograd"):
            raise ValueError(f"score.influence.method must be jvp or autograd, got {method!r}")
        if not (pack_length is None or pack_length == "run" or (isinstance(pack_length, int) and pack_length > 0)):
            raise ValueError(f"score.influence.pack_length must be a positive integer, 'run' or null, got {pack_length!r}")
        self.pack_length = pack_length
        if dtype is not None and dtype not in DTYPES:
            raise ValueError(f"score.influence.dtype must be one of {sorted(DTYPES)} or null, got {dtype!r}")
        self.parameters = parameters if isinstance(parameters, str) else list(parameters)
        self.dtype = dtype
        self.method = method
        self._losses: PairLosses | None = None
        self._direction: dict[str, Tensor] | None = None

    def prepare(self, context: ScoringContext) -> None:
        model = context.policy
        if self.dtype is not None and next(model.parameters()).dtype != DTYPES[self.dtype]:
            model = copy.deepcopy(model).to(DTYPES[self.dtype])
        settings = context.logp_settings
        if self.pack_length != "run":
            settings = dataclasses.replace(settings, pack_length=self.pack_length)
        self._losses = PairLosses(model, context.loss, settings)
        names = ["module.policy." + name for name in select_parameters(model, self.parameters)]
        self._direction = validation_gradient(self._losses, context.datamodule.eval_loader("val"), names, context.device)
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in self._direction.values()))
        log.info("influence: validation gradient over %d tensors, norm %.4g", len(names), norm)

    def score_batch(self, context: ScoringContext, batch: dict[str, Any], shared: dict[str, Tensor]) -> Tensor:
        assert self._losses is not None and self._direction is not None
        if self.method == "autograd":
            return per_pair_influence(self._losses, batch, self._direction)
        return jvp_influence(self._losses, batch, self._direction)[1]

    def release(self) -> None:
        self._losses = None
        self._direction = None
