"""Preference losses: one small ``nn.Module`` each, one shared signature.

Every loss maps per-sequence log-probs to per-pair losses (the batch loss is their mean)::

    loss(policy: dict[str, Tensor], reference: dict[str, Tensor] | None) -> LossOutput

``policy`` and ``reference`` hold ``chosen_logps`` and ``rejected_logps`` (summed completion log-probs
``s(y)``, shape ``(B,)``), ``chosen_lengths`` / ``rejected_lengths`` (``|y|`` in tokens, ``(B,)``) and, for
KTO, ``kl_chosen_logps`` / ``kl_rejected_logps`` (mismatched prompt/completion pairs). ``reference`` is
``None`` for reference-free losses (:attr:`PreferenceLoss.requires_reference` is ``False``), which then need
no reference forward pass at all.

Notation: ``rho_w = s(y_w) - s_ref(y_w)``, ``rho_l = s(y_l) - s_ref(y_l)``,
``h = rho_w - rho_l``. The rewards every loss reports are TRL's: ``beta * rho`` from summed log-probs
(``beta * s(y)`` for reference-free losses), detached.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger(__name__)

Logps = dict[str, Tensor]


@dataclass
class LossOutput:
    """Per-pair losses ``(B,)`` and the detached implicit rewards of chosen and rejected ``(B,)``."""

    losses: Tensor
    chosen_rewards: Tensor
    rejected_rewards: Tensor


class PreferenceLoss(nn.Module):
    """Base class. Subclasses implement :meth:`pair_losses`.

    Attributes:
        beta: the inverse temperature ``beta`` (also scales the reported rewards).
        requires_reference: whether reference log-probs are needed (``False``: no reference pass at all).
        requires_mismatched: whether mismatched prompt/completion log-probs are needed (KTO's KL term).
    """

    requires_reference: bool = True
    requires_mismatched: bool = False

    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        if beta <= 0:
            raise ValueError(f"loss.beta must be positive, got {beta}")
        self.beta = beta

    def log_ratios(self, policy: Logps, reference: Logps | None) -> tuple[Tensor, Tensor]:
        """``(rho_w, rho_l)``; without a reference, the policy's summed log-probs."""
        chosen, rejected = policy["chosen_logps"], policy["rejected_logps"]
        if reference is None:
            return chosen, rejected
        return chosen - reference["chosen_logps"], rejected - reference["rejected_logps"]

    def pair_losses(self, policy: Logps, reference: Logps | None) -> Tensor:
        raise NotImplementedError

    def reduce(self, losses: Tensor, weights: Tensor | None = None) -> Tensor:
        """The batch objective from the per-pair losses: their mean, each weighted by its pair's data weight
        (``data.weights``; 1 without). A loss whose objective is not a mean (:class:`DrDPOLoss`) overrides it."""
        return losses.mean() if weights is None else (losses * weights).mean()

    def forward(self, policy: Logps, reference: Logps | None = None) -> LossOutput:
        if self.requires_reference and reference is None:
            raise ValueError(f"{type(self).__name__} needs reference log-probs")
        losses = self.pair_losses(policy, reference if self.requires_reference else None)
        chosen_ratio, rejected_ratio = self.log_ratios(policy, reference)
        return LossOutput(losses, (self.beta * chosen_ratio).detach(), (self.beta * rejected_ratio).detach())

    def hparams(self) -> dict[str, float | bool]:
        """The loss's numeric and boolean hyper-parameters, for its ``repr`` (cache keys take the resolved loss
        config instead, every value included: :mod:`prefalign.keys`)."""
        values = {key: value for key, value in vars(self).items() if isinstance(value, (int, float, bool))}
        values.pop("training", None)
        return {"loss": type(self).__name__, **values}

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value}" for key, value in self.hparams().items() if key != "loss")


class DPOLoss(PreferenceLoss):
    """Direct Preference Optimization (Rafailov et al., 2023, Eq. 7), with optional label smoothing (cDPO).

    ``loss = -(1 - eps) * log sigma(beta * h) - eps * log sigma(-beta * h)``, ``h = rho_w - rho_l``.

    Args:
        beta: inverse temperature (0.1, the common default).
        label_smoothing: ``eps``, the assumed probability that a label is flipped (0 = plain DPO).
    """

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0) -> None:
        super().__init__(beta)
        if not 0 <= label_smoothing < 0.5:
            raise ValueError(f"loss.label_smoothing must be in [0, 0.5), got {label_smoothing}")
        self.label_smoothing = label_smoothing

    def pair_losses(self, policy: Logps, reference: Logps | None) -> Tensor:
        chosen_ratio, rejected_ratio = self.log_ratios(policy, reference)
        logits = self.beta * (chosen_ratio - rejected_ratio)
        eps = self.label_smoothing
        return -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)


class RDPOLoss(PreferenceLoss):
    """Robust DPO, rDPO (Chowdhury, Kini and Natarajan, "Provably Robust DPO: Aligning Language Models with Noisy
    Feedback", ICML 2024, Sec. 3: the de-biased loss), TRL's ``loss_type="robust"``.

    With labels flipped independently with a known probability ``eps < 1/2``::

        loss = [(1 - eps) * l(h) - eps * l(-h)] / (1 - 2 eps),   l(h) = -log sigma(beta * h)

    Its expectation over the flip of a pair's label is the clean pair's DPO loss,
    ``(1 - eps) * loss(h) + eps * loss(-h) = l(h)``: an unbiased estimate of the loss on clean labels (cDPO,
    :class:`DPOLoss`'s ``label_smoothing``, is biased instead). Unlike DPO's, the per-pair loss is not bounded
    below: a pair the policy already ranks with a large margin gets a negative loss, pushed further by
    ``-eps / (1 - 2 eps)`` of the reversed pair's gradient.

    Args:
        beta: inverse temperature.
        flip_rate: ``eps``, the assumed probability that a label is flipped, in ``[0, 0.5)`` (0 = plain DPO).
    """

    def __init__(self, beta: float = 0.1, flip_rate: float = 0.1) -> None:
        super().__init__(beta)
        if not 0 <= flip_rate < 0.5:
            raise ValueError(f"loss.flip_rate must be in [0, 0.5), got {flip_rate}")
        self.flip_rate = flip_rate

    def pair_losses(self, policy: Logps, reference: Logps | None) -> Tensor:
        chosen_ratio, rejected_ratio = self.log_ratios(policy, reference)
        logits = self.beta * (chosen_ratio - rejected_ratio)
        eps = self.flip_rate
        return (-(1 - eps) * F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)


class DrDPOLoss(DPOLoss):
    """Distributionally robustified DPO, Dr. DPO (Wu et al., "Towards Robust Alignment of Language Models:
    Distributionally Robustifying Direct Preference Optimization", ICLR 2025; the authors' code,
    ``junkangwu/Dr_DPO``): DPO's per-pair losses ``l_i`` (:class:`DPOLoss`, label smoothing included), combined
    over a batch of ``n`` pairs by a soft minimum instead of their mean::

        L = -beta' * log( (1/n) * sum_i exp(-l_i / beta') )

    Its gradient is ``sum_i w_i grad l_i`` with ``w_i = softmax(-l / beta')_i``: the pairs the policy finds hard
    (large ``l_i``, among them flipped labels) weigh less, the more so the smaller ``beta'``; ``beta' -> inf`` gives
    DPO's mean, and at ``beta' = 1`` ``exp(-l_i)`` is ``sigma(beta h_i)``, so ``L = -log mean_i sigma(beta h_i)``.
    The objective depends on which pairs share a batch (as in the paper: one optimiser batch, here one
    micro-batch of one device). With data weights ``w_i`` the mean inside the log is ``(1/n) sum_i w_i exp(...)``
    (a pair of weight 0 takes no part). The per-pair losses it reports (``train/loss`` is the objective) and
    that the scores and in-run influence differentiate are DPO's.

    Args:
        beta: inverse temperature.
        beta_prime: ``beta'``, the temperature of the soft minimum over the batch (the paper's default 1.0).
        label_smoothing: as in :class:`DPOLoss`.
    """

    def __init__(self, beta: float = 0.1, beta_prime: float = 1.0, label_smoothing: float = 0.0) -> None:
        super().__init__(beta, label_smoothing)
        if beta_prime <= 0:
            raise ValueError(f"loss.beta_prime must be positive, got {beta_prime}")
        self.beta_prime = beta_prime

    def reduce(self, losses: Tensor, weights: Tensor | None = None) -> Tensor:
        scaled = -losses / self.beta_prime
        if weights is not None:
            if not bool((weights > 0).any()):
                return (losses * weights).sum()  # nothing to train on in this batch: zero, with a gradient of zero
            scaled = scaled + torch.log(weights)
        return -self.beta_prime * (torch.logsumexp(scaled, 0) - math.log(len(losses)))


class SLiCLoss(PreferenceLoss):
    """SLiC hinge loss (Zhao et al., 2023, SLiC-HF Eq. 1; the RSO form of Liu et al., 2024, used by the TIF paper).

    ``loss = max(0, delta - beta * h) + lambda * NLL(y_w)`` with ``NLL(y_w) = -s(y_w) / |y_w|``.

    With ``delta = 1`` and ``lambda = 0`` this is TRL's ``hinge`` loss and the TIF paper's SLiC,
    ``max(0, 1 - (beta * rho_w - beta * rho_l))``.

    Args:
        beta: inverse margin.
        margin: ``delta``.
        sft_weight: ``lambda``, weight of the chosen response's token-averaged negative log-likelihood
            (SLiC-HF's regulariser; 0 by default).
    """

    def __init__(self, beta: float = 0.1, margin: float = 1.0, sft_weight: float = 0.0) -> None:
        super().__init__(beta)
        self.margin = margin
        self.sft_weight = sft_weight

    def pair_losses(self, policy: Logps, reference: Logps | None) -> Tensor:
        chosen_ratio, rejected_ratio = self.log_ratios(policy, reference)
        losses = torch.relu(self.margin - self.beta * (chosen_ratio - rejected_ratio))
        if self.sft_weight:
            losses = losses - self.sft_weight * policy["chosen_logps"] / policy["chosen_lengths"]
        return losses


class IPOLoss(PreferenceLoss):
    """Identity Preference Optimisation (Azar et al., 2024, Eq. 17).

    ``loss = (h' - 1 / (2 beta))^2`` with ``h' = rho_w / |y_w| - rho_l / |y_l|`` (TRL's per-token average,
    confirmed with the IPO authors; ``length_normalize=False`` uses summed log-ratios as OpenRLHF does).

    Args:
        beta: regularisation strength (``tau`` in the paper).
        length_normalize: average the log-ratios per token.
    """

    def __init__(self, beta: float = 0.1, length_normalize: bool = True) -> None:
        super().__init__(beta)
        self.length_normalize = length_normalize

    def pair_losses(self, policy: Logps, reference: Logps | None) -> Tensor:
        chosen_ratio, rejected_ratio = self.log_ratios(policy, reference)
        if self.length_normalize:
            chosen_ratio = chosen_ratio / policy["chosen_lengths"]
            rejected_ratio = rejected_ratio / policy["rejected_lengths"]
        return (chosen_ratio - rejected_ratio - 1 / (2 * self.beta)) ** 2


class SimPOLoss(PreferenceLoss):
    """Simple Preference Optimisation (Meng et al., 2024, Eq. 6), reference-free.

    ``loss = -log sigma(beta * s(y_w) / |y_w| - beta * s(y_l) / |y_l| - gamma)``.

    No reference log-probs are computed for this loss. Defaults are the paper's (beta 2.5, gamma 1.375), not
    TRL's ``CPOTrainer`` defaults (0.1, 0.5, plus an NLL term).

    Args:
        beta: reward scale.
        gamma: target reward margin.
        label_smoothing: as in :class:`DPOLoss`.
    """

    requires_reference = False

    def __init__(self, beta: float = 2.5, gamma: float = 1.375, label_smoothing: float = 0.0) -> None:
        super().__init__(beta)
        self.gamma = gamma
        self.label_smoothing = label_smoothing

    def pair_losses(self, policy: Logps, reference: Logps | None) -> Tensor:
        chosen = policy["chosen_logps"] / policy["chosen_lengths"]
        rejected = policy["rejected_logps"] / policy["rejected_lengths"]
        logits = self.beta * (chosen - rejected) - self.gamma
        eps = self.label_smoothing
        return -(1 - eps) * F.logsigmoid(logits) - eps * F.logsigmoid(-logits)


class KTOLoss(PreferenceLoss):
    """Kahneman-Tversky Optimisation (Ethayarajh et al., 2024, Eq. 8), built from paired data.

    Each pair gives one desirable example (the chosen completion) and one undesirable example (the rejected)::

        z0       = max(0, mean over the batch of (s(y') - s_ref(y')))   # y' mismatched completions, detached
        desirable   = lambda_D * (1 - sigma(beta * (rho_w - z0)))
        undesirable = lambda_U * (1 - sigma(beta * (z0 - rho_l)))
        loss        = (desirable + undesirable) / 2

    The per-pair loss is the mean of its two examples, so the batch mean equals TRL's mean over all
    ``2B`` examples. Mismatched completions follow TRL: each prompt with the previous example's completion
    (built at data level by :class:`~prefalign.data.datamodule.PairDataset`). ``z0`` is averaged across
    processes when running distributed. Needs a batch size above 1.

    Args:
        beta: inverse temperature.
        desirable_weight: ``lambda_D``.
        undesirable_weight: ``lambda_U``.
    """

    requires_mismatched = True

    def __init__(self, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> None:
        super().__init__(beta)
        self.desirable_weight = desirable_weight
        self.undesirable_weight = undesirable_weight
        # paired data has as many desirable as undesirable examples, so TRL's check reduces to the weights
        ratio = desirable_weight / undesirable_weight
        if not 1 <= ratio <= 4 / 3:
            log.warning(
                "KTO: lambda_D * n_D / (lambda_U * n_U) = %.3g lies outside [1, 4/3], the range the KTO "
                "authors recommend",
                ratio,
            )

    def reference_point(self, policy: Logps, reference: Logps) -> Tensor:
        """``z0``: the detached, clamped batch-mean log-ratio of mismatched completions."""
        if "kl_chosen_logps" not in policy or "kl_chosen_logps" not in reference:
            raise ValueError("KTO needs the log-probs of mismatched completions (kl_chosen_logps, kl_rejected_logps)")
        ratios = torch.cat(
            [
                policy["kl_chosen_logps"] - reference["kl_chosen_logps"],
                policy["kl_rejected_logps"] - reference["kl_rejected_logps"],
            ]
        ).detach()
        total = torch.stack([ratios.sum(), torch.tensor(float(ratios.numel()), device=ratios.device)])
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(total)
        return (total[0] / total[1]).clamp(min=0)

    def pair_losses(self, policy: Logps, reference: Logps | None) -> Tensor:
        assert reference is not None
        z0 = self.reference_point(policy, reference)
        chosen_ratio, rejected_ratio = self.log_ratios(policy, reference)
        desirable = self.desirable_weight * (1 - torch.sigmoid(self.beta * (chosen_ratio - z0)))
        undesirable = self.undesirable_weight * (1 - torch.sigmoid(self.beta * (z0 - rejected_ratio)))
        return (desirable + undesirable) / 2


class SFTLoss(PreferenceLoss):
    """Supervised fine-tuning on the chosen responses: ``loss = -s(y_w) / |y_w|`` (token-averaged NLL).

    Turns a base model (Pythia has no instruct release) into the SFT starting point the papers use. No
    reference is needed; the reported rewards are ``beta * s(y)`` with ``beta = 1``.
    """

    requires_reference = False

    def __init__(self, beta: float = 1.0) -> None:
        super().__init__(beta)

    def pair_losses(self, policy: Logps, reference: Logps | None) -> Tensor:
        return -policy["chosen_logps"] / policy["chosen_lengths"]
