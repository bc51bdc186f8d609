"""The JVP influence's vocabulary step: same log-probs and same forward-mode derivative as the generic path."""

import math

import pytest
import torch
from torch.func import jvp

from prefalign import logprobs
from prefalign.scoring import jvp_head


def generic(hidden, weight, bias, targets):
    return logprobs.token_logps(torch.nn.functional.linear(hidden, weight, bias), targets)


def fused(hidden, weight, bias, targets):
    return jvp_head._HeadLogps.apply(hidden, weight, bias, targets)[0]


@pytest.mark.parametrize("with_bias", [False, True])
def test_values_and_jvp_match_autograd_forward_mode(with_bias, monkeypatch):
    monkeypatch.setattr(jvp_head, "CHUNK_TOKENS", 3)  # 7 tokens: chunks of 3, 3 and 1
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    tokens, width, vocab = 7, 5, 11
    hidden, weight = randn(tokens, width), randn(vocab, width)
    bias = randn(vocab) if with_bias else None
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    dhidden, dweight = randn(tokens, width), randn(vocab, width)
    primals = (hidden, weight) + ((bias,) if with_bias else ())
    tangents = (dhidden, dweight) + ((randn(vocab),) if with_bias else ())

    def ours(*args):
        return fused(args[0], args[1], args[2] if with_bias else None, targets)

    def theirs(*args):
        return generic(args[0], args[1], args[2] if with_bias else None, targets)

    value, tangent = jvp(ours, primals, tangents)
    expected_value, expected_tangent = jvp(theirs, primals, tangents)
    torch.testing.assert_close(value, expected_value, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tangent, expected_tangent, rtol=1e-12, atol=1e-12)
    assert tangent.abs().max() > 0.1  # a real derivative, not zeros on both sides

    # a tangent on one input alone (the other constant) takes one branch of the JVP each
    for index in (0, 1):
        def only(x, index=index):
            args = list(primals)
            args[index] = x
            return args

        _, ours_only = jvp(lambda x: ours(*only(x)), (primals[index],), (tangents[index],))
        _, theirs_only = jvp(lambda x: theirs(*only(x)), (primals[index],), (tangents[index],))
        torch.testing.assert_close(ours_only, theirs_only, rtol=1e-12, atol=1e-12)


def test_hand_worked_two_word_vocabulary():
    """h = 1, W = (1, 0): z = (1, 0), p = (e/(1+e), 1/(1+e)); target 0: logp = 1 - log(1+e).

    dW = (1, 2), dh = 0: dz = (1, 2), dlogp = dz_0 - p.dz = 1 - (e + 2)/(1+e) = -1/(1+e).
    """
    hidden = torch.tensor([[1.0]], dtype=torch.float64)
    weight = torch.tensor([[1.0], [0.0]], dtype=torch.float64)
    dweight = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    targets = torch.tensor([0])
    value, tangent = jvp(lambda w: fused(hidden, w, None, targets), (weight,), (dweight,))
    e = math.e
    assert value.item() == pytest.approx(1 - math.log(1 + e), rel=1e-12)
    assert tangent.item() == pytest.approx(-1 / (1 + e), rel=1e-12)


def test_plain_linear_heads_only(monkeypatch):
    # (that only the JVP's own passes take this step: tests/scoring/test_influence.py)
    generator = torch.Generator().manual_seed(3)
    head = torch.nn.Linear(4, 9, bias=False).double()
    hidden = torch.randn(5, 4, generator=generator, dtype=torch.float64)
    targets = torch.randint(0, 9, (5,), generator=generator)
    calls = []
    apply = jvp_head._HeadLogps.apply
    monkeypatch.setattr(jvp_head._HeadLogps, "apply", lambda *args: calls.append(1) or apply(*args))
    value = jvp_head.head_logps(hidden, head, targets)
    # a head that is not a plain nn.Linear (a LoRA wrapper, say) takes the generic path
    wrapped = torch.nn.Sequential(head)
    generic_value = jvp_head.head_logps(hidden, wrapped, targets)
    assert len(calls) == 1
    expected = generic(hidden, head.weight, None, targets)
    torch.testing.assert_close(value, expected.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(generic_value, expected, rtol=1e-12, atol=1e-12)
