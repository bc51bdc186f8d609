"""The TIF paper's cheap proxies of IF: the implicit reward margin (IRM) and the loss difference (LossDiff).

TIF paper (Zhang et al., ICLR 2026), "Methodology: LossDiff-IRM Data Selection":

* ``IRM_theta(d) = beta log pi_theta(y_w|x)/pi_ref(y_w|x) - beta log pi_theta(y_l|x)/pi_ref(y_l|x) = beta h``
  (needs ``theta != pi_ref``, i.e. after the warm-up epoch).
* ``LossDiff(d) = ell(theta; d) - ell(theta_val; d)``, ``theta_val`` an auxiliary model obtained by aligning
  ``theta`` on the validation set (one epoch in the paper). To first order, if ``theta_val ~ theta - eta v``
  then ``LossDiff ~ eta * IF``: pairs whose loss the validation set lowers are the ones it agrees with.

Both read the policy's log-probs of the batch from the runner's shared forward pass, so scoring IRM and
LossDiff together costs one policy pass plus one pass of the auxiliary model. So does the implicit term of the
alignment potential M_AP (:class:`LogpGapScorer`), which needs no reference at all.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from prefalign.atomic import atomic_entry, verified
from prefalign.models import load_checkpoint
from prefalign.scoring.base import Scorer, ScoringContext

log = logging.getLogger(__name__)


def reference_of(shared: dict[str, Any]) -> dict[str, Tensor]:
    reference = shared.get("reference")
    if not reference:
        raise ValueError("this score needs cached reference log-probs (run with a reference-based loss or score)")
    return reference


class IRMScorer(Scorer):
    """``irm``: the implicit reward margin ``beta * h`` of the current policy against the reference.

    Args:
        beta: the ``beta`` of the margin; ``null`` takes the training loss's ``beta``.
    """

    name = "irm"
    label = "IRM"
    needs_policy_logps = True

    def __init__(self, beta: float | None = None) -> None:
        self.beta = beta

    def score_batch(self, context: ScoringContext, batch: dict[str, Any], shared: dict[str, Tensor]) -> Tensor:
        beta = self.beta if self.beta is not None else context.loss.beta
        reference = reference_of(shared)
        chosen = shared["chosen_logps"] - reference["chosen_logps"]
        rejected = shared["rejected_logps"] - reference["rejected_logps"]
        return beta * (chosen - rejected)


class LogpGapScorer(Scorer):
    """``logp_gap``: ``|s(y_w)/|y_w| - s(y_l)/|y_l||``, the gap of the mean token log-probs under the policy.

    The implicit term of the alignment potential M_AP (Huang et al., "Larger or Smaller Reward Margins to Select
    Preferences for Alignment?", ICML 2025: ``M_AP = z(r_w - r_l) - z(|log-prob margin|)``; the authors' released
    ``metric_selection.py``, metric ``rm-logp``, calls this column ``logp_margin_norm_abs``: length-normalised and
    absolute). A small gap means
    the model does not yet tell the two answers apart. The paper takes it under the SFT model the training starts
    from; score the initial model (``pipeline.warmup_epochs=0``, or ``score.py`` without ``policy``) for that.
    """

    name = "logp_gap"
    label = "Log-prob gap"
    needs_policy_logps = True

    def score_batch(self, context: ScoringContext, batch: dict[str, Any], shared: dict[str, Tensor]) -> Tensor:
        chosen = shared["chosen_logps"].double() / shared["chosen_lengths"].double()
        rejected = shared["rejected_logps"].double() / shared["rejected_lengths"].double()
        return (chosen - rejected).abs()


class LossDiffScorer(Scorer):
    """``lossdiff``: ``ell(theta; d) - ell(theta_val; d)`` with ``theta_val`` aligned on the validation set.

    The auxiliary model trains with the run's loss, optimizer, scheduler and trainer settings (precision,
    accumulation, clipping), each overridable in ``train``, through the one trainer builder
    (:func:`prefalign.trainer.fit_auxiliary`). It is cached by content (the policy, the validation data and
    the resolved configs of the run and of this scorer) in ``<cache_dir>/auxiliary/<key>``, so a sweep over
    selection thresholds trains it once; the entry holds its checksums (``SHA256SUMS``), checked before it is used.

    Args:
        epochs: epochs of alignment on the validation set (the paper: 1).
        init: ``policy`` (start from ``theta``, the paper's choice) or ``reference`` (the initial weights).
        train: overrides of the run's ``optimizer``, ``scheduler`` and ``trainer`` settings for the auxiliary
            model (resolved by :func:`prefalign.scoring.config.build_scorers`).
    """

    name = "lossdiff"
    label = "LossDiff"
    needs_policy_logps = True

    def __init__(self, epochs: int = 1, init: str = "policy", train: dict[str, Any] | None = None) -> None:
        if init not in ("policy", "reference"):
            raise ValueError(f"score.lossdiff.init must be policy or reference, got {init!r}")
        if epochs < 1:
            raise ValueError(f"score.lossdiff.epochs must be at least 1, got {epochs}")
        self.epochs = epochs
        self.init = init
        self.train = train
        self._auxiliary: torch.nn.Module | None = None

    def auxiliary_key(self, context: ScoringContext) -> str:
        start = context.policy_fingerprint if self.init == "policy" else context.source.fingerprint()
        return context.key("lossdiff-auxiliary-v2", start, context.data_fingerprint("val"), self.settings)

    def prepare(self, context: ScoringContext) -> None:
        if self.train is None:
            raise ValueError("lossdiff needs its training settings (build it with prefalign.scoring.config.build_scorers)")
        folder = Path(context.cache_dir) / "auxiliary" / self.auxiliary_key(context)
        # a cache entry with its checksums: a truncated or garbled one is named, moved aside and trained again
        if verified(folder, context.cache_dir, "auxiliary", required=("config.json",)):
            log.info("lossdiff: auxiliary model from cache %s", folder)
            model = load_checkpoint(folder, next(context.policy.parameters()).dtype)
            self._auxiliary = model.to(context.device).eval()
            return
        start = context.policy if self.init == "policy" else context.source.load_base_model()
        model = copy.deepcopy(start) if self.init == "policy" else start
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()  # the auxiliary model is fully fine-tuned
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        model.train()
        model = context.fit(model, context.datamodule.fit_loader("val"), self.train, self.epochs, "lossdiff auxiliary model")
        atomic_entry(folder, model.save_pretrained)
        self._auxiliary = model.to(context.device).eval()

    def score_batch(self, context: ScoringContext, batch: dict[str, Any], shared: dict[str, Tensor]) -> Tensor:
        assert self._auxiliary is not None
        reference = reference_of(shared) if context.loss.requires_reference else None
        mismatched = context.loss.requires_mismatched
        with torch.no_grad():
            auxiliary = context.pair_logps(self._auxiliary, batch, mismatched=mismatched)
            policy = {key: value for key, value in shared.items() if key != "reference"}
            if mismatched:
                policy = context.pair_logps(context.policy, batch, mismatched=True)
            return context.loss(policy, reference).losses - context.loss(auxiliary, reference).losses

    def release(self) -> None:
        self._auxiliary = None
