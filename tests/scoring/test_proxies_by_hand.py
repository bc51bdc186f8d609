"""IRM and LossDiff, the TIF paper's cheap proxies of influence, on two pairs worked out by hand.

TIF paper (Zhang et al., ICLR 2026), "Methodology: LossDiff-IRM Data Selection":

* ``IRM_theta(d) = beta * h``, ``h = log pi_theta(y_w|x)/pi_ref(y_w|x) - log pi_theta(y_l|x)/pi_ref(y_l|x)``;
* ``LossDiff(d) = ell(theta; d) - ell(theta_val; d)``, ``theta_val`` the model aligned on the validation set.

The scorers are called on log-probs given by hand (the shared policy pass and the cached reference), so the
expected values follow from these formulas alone.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch.testing import assert_close

from prefalign.losses import DPOLoss
from prefalign.scoring.proxies import IRMScorer, LossDiffScorer

# two pairs: log-probs summed over each response
POLICY = {"chosen_logps": torch.tensor([-10.0, -6.0]), "rejected_logps": torch.tensor([-12.0, -5.0])}
REFERENCE = {"chosen_logps": torch.tensor([-11.0, -6.0]), "rejected_logps": torch.tensor([-11.0, -4.0])}
# rho_w = policy - reference on the chosen = (1, 0); rho_l on the rejected = (-1, -1); h = rho_w - rho_l = (2, 1)


def test_irm_is_beta_times_the_log_ratio_margin() -> None:
    """``IRM = beta * h``: with h = (2, 1), beta = 0.1 gives (0.2, 0.1); the scorer's own beta wins over the loss's."""
    shared = {**POLICY, "reference": REFERENCE}
    context = SimpleNamespace(loss=DPOLoss(beta=0.1))
    assert_close(IRMScorer().score_batch(context, {}, shared), torch.tensor([0.2, 0.1]))
    assert_close(IRMScorer(beta=0.5).score_batch(context, {}, shared), torch.tensor([1.0, 0.5]))


def test_lossdiff_is_the_policy_loss_minus_the_validation_aligned_models_loss() -> None:
    """``LossDiff = ell(theta; d) - ell(theta_val; d)`` under DPO with beta = 1, ``ell = -log sigmoid(h)``.

    Policy: h = (2, 1), so ell(theta) = (log(1 + e^-2), log(1 + e^-1)) = (0.126928, 0.313262).
    Auxiliary model: chosen (-10, -7) and rejected (-10, -5) against the same reference give rho_w = (1, -1) and
    rho_l = (1, -1), so h = (0, 0) and ell(theta_val) = (log 2, log 2) = (0.693147, 0.693147).
    LossDiff = (0.126928 - 0.693147, 0.313262 - 0.693147) = (-0.566219, -0.379885): negative where the
    validation-aligned model finds the pair harder than the policy does.
    """
    auxiliary = {"chosen_logps": torch.tensor([-10.0, -7.0]), "rejected_logps": torch.tensor([-10.0, -5.0])}
    context = SimpleNamespace(loss=DPOLoss(beta=1.0), pair_logps=lambda model, batch, mismatched: auxiliary)
    scorer = LossDiffScorer()
    scorer._auxiliary = torch.nn.Identity()  # stands for theta_val: context.pair_logps gives its log-probs
    scores = scorer.score_batch(context, {}, {**POLICY, "reference": REFERENCE})
    assert_close(scores, torch.tensor([-0.566219, -0.379885]), atol=1e-6, rtol=0)
