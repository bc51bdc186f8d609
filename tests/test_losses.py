"""Every loss against numbers worked out by hand.

Two pairs throughout:

    pair 1: s(y_w) = -10, s(y_l) = -12, s_ref(y_w) = -11, s_ref(y_l) = -11.5, |y_w| = 4, |y_l| = 5
            rho_w = 1, rho_l = -0.5, h = 1.5
    pair 2: s(y_w) = -3,  s(y_l) = -2,  s_ref(y_w) = -3,  s_ref(y_l) = -4,   |y_w| = 3, |y_l| = 2
            rho_w = 0, rho_l = 2, h = -2

-log sigma(x) = log(1 + exp(-x)) is written ``nls(x)`` below.
"""

import math

import pytest
import torch
from torch.testing import assert_close

from prefalign.losses import DPOLoss, DrDPOLoss, IPOLoss, KTOLoss, RDPOLoss, SFTLoss, SimPOLoss, SLiCLoss

T = lambda *values: torch.tensor(values, dtype=torch.float64)  # noqa: E731


@pytest.fixture
def policy():
    return {
        "chosen_logps": T(-10.0, -3.0),
        "rejected_logps": T(-12.0, -2.0),
        "chosen_lengths": T(4.0, 3.0),
        "rejected_lengths": T(5.0, 2.0),
        # KTO's mismatched completions: log-ratios 1, 0.5 (chosen side) and 0.5, 0 (rejected side) -> mean 0.5
        "kl_chosen_logps": T(-20.0, -18.0),
        "kl_rejected_logps": T(-15.0, -16.0),
    }


@pytest.fixture
def reference():
    return {
        "chosen_logps": T(-11.0, -3.0),
        "rejected_logps": T(-11.5, -4.0),
        "kl_chosen_logps": T(-21.0, -18.5),
        "kl_rejected_logps": T(-15.5, -16.0),
    }


def test_dpo(policy, reference):
    out = DPOLoss(beta=0.1)(policy, reference)
    # beta*h = 0.15 and -0.2: nls(0.15) = log(1 + e^-0.15) = log(1.8607080) ; nls(-0.2) = log(1 + e^0.2) = log(2.2214028)
    assert_close(out.losses, T(0.620957047789532, 0.7981388693815917))
    # rewards are beta * rho
    assert_close(out.chosen_rewards, T(0.1, 0.0))
    assert_close(out.rejected_rewards, T(-0.05, 0.2))


def test_dpo_label_smoothing(policy, reference):
    out = DPOLoss(beta=0.1, label_smoothing=0.1)(policy, reference)
    # 0.9 * nls(0.15) + 0.1 * nls(-0.15), with nls(-0.15) = 0.15 + nls(0.15) = 0.770957
    assert_close(out.losses[0], torch.tensor(0.635957047789532, dtype=torch.float64))


def test_rdpo(policy, reference):
    out = RDPOLoss(beta=0.1, flip_rate=0.1)(policy, reference)
    # [(1 - e) nls(x) - e nls(-x)] / (1 - 2e) with nls(-x) = x + nls(x) is nls(x) - e x / (1 - 2e):
    # x = 0.15: 0.620957047789532 - 0.1 * 0.15 / 0.8 = 0.620957047789532 - 0.01875
    # x = -0.2: 0.7981388693815917 + 0.1 * 0.2 / 0.8 = 0.7981388693815917 + 0.025
    assert_close(out.losses, T(0.602207047789532, 0.8231388693815917))
    assert_close(out.chosen_rewards, T(0.1, 0.0))
    # no flips assumed: plain DPO
    assert_close(RDPOLoss(beta=0.1, flip_rate=0.0)(policy, reference).losses, DPOLoss(beta=0.1)(policy, reference).losses)


def test_rdpo_is_unbiased_under_flips_at_its_rate(policy, reference):
    # a label kept with probability 1 - e and flipped with probability e: the expected rDPO loss is the clean
    # pair's DPO loss (the paper's defining property)
    flipped = {**policy, "chosen_logps": policy["rejected_logps"], "rejected_logps": policy["chosen_logps"]}
    flipped_reference = {**reference, "chosen_logps": reference["rejected_logps"], "rejected_logps": reference["chosen_logps"]}
    for eps in (0.1, 0.3):
        loss = RDPOLoss(beta=0.1, flip_rate=eps)
        expected = (1 - eps) * loss(policy, reference).losses + eps * loss(flipped, flipped_reference).losses
        assert_close(expected, DPOLoss(beta=0.1)(policy, reference).losses)
    with pytest.raises(ValueError, match="flip_rate must be in"):
        RDPOLoss(flip_rate=0.5)


def test_drdpo(policy, reference):
    loss = DrDPOLoss(beta=0.1, beta_prime=1.0)
    out = loss(policy, reference)
    # the per-pair losses are DPO's
    assert_close(out.losses, T(0.620957047789532, 0.7981388693815917))
    # beta' = 1: exp(-l_i) = sigma(beta h_i), so L = -log((sigma(0.15) + sigma(-0.2)) / 2)
    #          = -log((0.5374298453437496 + 0.45016600268752216) / 2) = -log(0.4937979240156359)
    assert_close(loss.reduce(out.losses), torch.tensor(0.705628906179458, dtype=torch.float64))
    # beta' = 0.5: -0.5 log((sigma(0.15)^2 + sigma(-0.2)^2) / 2)
    half = DrDPOLoss(beta=0.1, beta_prime=0.5)
    assert_close(half.reduce(out.losses), torch.tensor(0.7017403329725489, dtype=torch.float64))
    # a large beta' tends to DPO's mean (0.709547958585562); a weight of 0 leaves a pair out:
    # -log(exp(-l_1) / 2) = l_1 + log 2
    assert_close(DrDPOLoss(beta_prime=1e6).reduce(out.losses), out.losses.mean(), rtol=0, atol=1e-6)
    assert_close(loss.reduce(out.losses, T(1.0, 0.0)), torch.tensor(0.620957047789532 + math.log(2), dtype=torch.float64))
    # its gradient weighs each pair by softmax(-l / beta'): the harder pair (larger loss) weighs less
    losses = out.losses.clone().requires_grad_()
    loss.reduce(losses).backward()
    assert_close(losses.grad, torch.softmax(-out.losses, 0))
    assert losses.grad[1] < 0.5 < losses.grad[0]
    with pytest.raises(ValueError, match="beta_prime must be positive"):
        DrDPOLoss(beta_prime=0.0)


def test_the_other_losses_reduce_to_the_weighted_mean(policy, reference):
    out = DPOLoss()(policy, reference)
    assert_close(DPOLoss().reduce(out.losses, T(2.0, 0.0)), out.losses[0])


def test_slic(policy, reference):
    # max(0, 1 - beta*h): 1 - 0.15 = 0.85 ; 1 + 0.2 = 1.2
    assert_close(SLiCLoss(beta=0.1)(policy, reference).losses, T(0.85, 1.2))
    # margin 0.1: max(0, 0.1 - 0.15) = 0 (the hinge is inactive) ; 0.1 + 0.2 = 0.3
    assert_close(SLiCLoss(beta=0.1, margin=0.1)(policy, reference).losses, T(0.0, 0.3))
    # + 0.5 * NLL(y_w) with NLL = -s(y_w)/|y_w| = 10/4 = 2.5 and 3/3 = 1
    assert_close(SLiCLoss(beta=0.1, sft_weight=0.5)(policy, reference).losses, T(0.85 + 1.25, 1.2 + 0.5))


def test_ipo(policy, reference):
    # 1/(2 beta) = 5. Per-token: rho_w/|y_w| - rho_l/|y_l| = 1/4 + 0.5/5 = 0.35 -> (0.35 - 5)^2 = 21.6225
    #                                                         0/3 - 2/2 = -1     -> (-1 - 5)^2 = 36
    assert_close(IPOLoss(beta=0.1)(policy, reference).losses, T(21.6225, 36.0))
    # summed: (1.5 - 5)^2 = 12.25 ; (-2 - 5)^2 = 49
    assert_close(IPOLoss(beta=0.1, length_normalize=False)(policy, reference).losses, T(12.25, 49.0))


def test_simpo_is_reference_free(policy):
    loss = SimPOLoss(beta=2.5, gamma=1.375)
    assert not loss.requires_reference
    out = loss(policy, None)
    # 2.5 * (-10/4 + 12/5) - 1.375 = 2.5 * (-0.1) - 1.375 = -1.625 -> nls(-1.625) = log(1 + e^1.625) = log(6.0784)
    # 2.5 * (-3/3 + 2/2) - 1.375 = -1.375                          -> nls(-1.375) = log(1 + e^1.375)
    assert_close(out.losses, T(1.804744635385659, 1.600412651601648))
    # without a reference the rewards are beta * s(y)
    assert_close(out.chosen_rewards, T(-25.0, -7.5))


def test_kto(policy, reference):
    loss = KTOLoss(beta=0.1)
    assert loss.requires_mismatched
    assert_close(loss.reference_point(policy, reference), torch.tensor(0.5, dtype=torch.float64))
    out = loss(policy, reference)
    # pair 1: desirable 1 - sigma(0.1 * (1 - 0.5)) = 1 - sigma(0.05) = 0.487503
    #         undesirable 1 - sigma(0.1 * (0.5 + 0.5)) = 1 - sigma(0.1) = 0.475021 ; mean = 0.481262
    # pair 2: desirable 1 - sigma(0.1 * (0 - 0.5)) = 0.512497 ; undesirable 1 - sigma(0.1 * (0.5 - 2)) = 0.537430
    assert_close(out.losses, T(0.4812617080184248, 0.52496362091398))


def test_kto_reference_point_is_clamped_at_zero(policy, reference):
    policy = {**policy, "kl_chosen_logps": T(-30.0, -30.0), "kl_rejected_logps": T(-30.0, -30.0)}
    assert KTOLoss(beta=0.1).reference_point(policy, reference).item() == 0.0


def test_kto_warns_on_unbalanced_weights(caplog):
    KTOLoss(desirable_weight=2.0, undesirable_weight=1.0)
    assert "outside [1, 4/3]" in caplog.text


def test_sft(policy):
    loss = SFTLoss()
    assert not loss.requires_reference
    # -s(y_w)/|y_w| = 10/4, 3/3
    assert_close(loss(policy, None).losses, T(2.5, 1.0))


def test_losses_need_reference_when_declared(policy):
    with pytest.raises(ValueError, match="needs reference"):
        DPOLoss()(policy, None)


def test_invalid_beta():
    with pytest.raises(ValueError, match="beta must be positive"):
        DPOLoss(beta=0.0)


def test_gradients_flow_to_policy_logps(policy, reference):
    for loss in (DPOLoss(), RDPOLoss(), DrDPOLoss(), SLiCLoss(), IPOLoss(), SimPOLoss(), KTOLoss()):
        chosen = policy["chosen_logps"].clone().requires_grad_()
        out = loss({**policy, "chosen_logps": chosen}, reference)
        out.losses.mean().backward()
        assert chosen.grad is not None and chosen.grad.abs().sum() > 0, type(loss).__name__
        # raising the chosen log-prob never increases these losses
        assert (chosen.grad <= 0).all(), type(loss).__name__
