"""The TIF paper's cheap proxies of IF: the implicit reward margin (IRM) and the loss difference (LossDiff).

TIF paper (Zhang et al., ICLR 2026), "Methodology: LossDiff-IRM Data Selection":

* ``IRM_theta(d) = beta log pi_theta(y_w|x)/pi_ref(y_w|x) - beta log pi_theta(y_l|x)/pi_ref(y_l|x) = beta h``
  (needs ``theta != pi_ref``, i.e. after the warm-up epoch).
* ``LossDiff(d) = ell(theta; d) - ell(theta_val; d)``, ``theta_val`` an auxiliary model obtained by aligning
  ``theta`` on the validation set (one epoch in the paper). To first order, if ``theta_val ~ theta - eta v``
  then ``LossDiff ~ eta * IF``: pairs whose loss the validation set lowers are the ones it agrees with.

Both read the policy's log-probs of the batch from the runner's shared forward pass, so scoring IRM and
LossDiff together costs one policy pass plus one pass of the auxiliary model.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from transformers import AutoModelForCausalLM

from prefalign.atomic import atomic_directory
from prefalign.losses import PreferenceLoss
from prefalign.models import release_padding_row
from prefalign.module import PreferenceModule, precision_options, warmup_schedule
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
    needs_policy_logps = True

    def __init__(self, beta: float | None = None) -> None:
        self.beta = beta

    def score_batch(self, context: ScoringContext, batch: dict[str, Any], shared: dict[str, Tensor]) -> Tensor:
        beta = self.beta if self.beta is not None else context.loss.beta
        reference = reference_of(shared)
        chosen = shared["chosen_logps"] - reference["chosen_logps"]
        rejected = shared["rejected_logps"] - reference["rejected_logps"]
        return beta * (chosen - rejected)


def train_on_pairs(
    model: torch.nn.Module,
    context: ScoringContext,
    loader: Any,
    epochs: int,
    lr: float,
    desc: str,
    loss: PreferenceLoss | None = None,
) -> torch.nn.Module:
    """Train ``model`` in place on ``loader`` with ``loss`` (default: the context's), AdamW, warm-up + cosine."""
    module = PreferenceModule(
        model,
        loss or context.loss,
        optimizer=partial(torch.optim.AdamW, lr=lr, weight_decay=0.0),
        scheduler=partial(warmup_schedule, warmup_ratio=0.1, decay="cosine"),
        share_prompt=context.share_prompt,
        pack_length=context.pack_length,
    )
    options = {"accelerator": "auto", "devices": 1, "precision": "32-true", "gradient_clip_val": 1.0}
    options = precision_options({**options, **context.trainer_options})
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **options,
    )
    log.info("%s: %d epoch(s) on %d pairs, lr %g", desc, epochs, len(loader.dataset), lr)
    L.seed_everything(context.seed, workers=True, verbose=False)
    trainer.fit(module, train_dataloaders=loader)
    model.eval()
    return model


class LossDiffScorer(Scorer):
    """``lossdiff``: ``ell(theta; d) - ell(theta_val; d)`` with ``theta_val`` aligned on the validation set.

    The auxiliary model is cached by content (policy, validation data, loss and these options) in
    ``<cache_dir>/auxiliary/<key>``, so a sweep over selection thresholds trains it once.

    Args:
        epochs: epochs of alignment on the validation set (the paper: 1).
        lr: learning rate of that alignment.
        init: ``policy`` (start from ``theta``, the paper's choice) or ``reference`` (the initial weights).
    """

    name = "lossdiff"
    needs_policy_logps = True

    def __init__(self, epochs: int = 1, lr: float = 5e-6, init: str = "policy") -> None:
        if init not in ("policy", "reference"):
            raise ValueError(f"score.lossdiff.init must be policy or reference, got {init!r}")
        self.epochs = epochs
        self.lr = lr
        self.init = init
        self._auxiliary: torch.nn.Module | None = None

    def auxiliary_key(self, context: ScoringContext) -> str:
        payload = "|".join(
            [
                context.policy_fingerprint if self.init == "policy" else context.source.fingerprint(),
                context.data_fingerprint("val"),
                json.dumps(context.loss.hparams(), sort_keys=True),
                self.fingerprint(),
                str(context.seed),
            ]
        )
        return hashlib.sha1(payload.encode()).hexdigest()[:20]

    def prepare(self, context: ScoringContext) -> None:
        folder = Path(context.cache_dir) / "auxiliary" / self.auxiliary_key(context)
        if (folder / "config.json").exists():
            log.info("lossdiff: auxiliary model from cache %s", folder)
            model = release_padding_row(
                AutoModelForCausalLM.from_pretrained(folder, dtype=next(context.policy.parameters()).dtype)
            )
            self._auxiliary = model.to(context.device).eval()
            return
        start = context.policy if self.init == "policy" else context.source.load_base_model()
        model = copy.deepcopy(start) if self.init == "policy" else start
        if hasattr(model, "merge_and_unload"):
            model = model.merge_and_unload()  # the auxiliary model is fully fine-tuned
        for parameter in model.parameters():
            parameter.requires_grad_(True)
        model.train()
        loader = context.datamodule._loader("val", context.datamodule.batch_size, shuffle=True)
        model = train_on_pairs(model, context, loader, self.epochs, self.lr, "lossdiff auxiliary model")
        atomic_directory(folder, model.save_pretrained)
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
