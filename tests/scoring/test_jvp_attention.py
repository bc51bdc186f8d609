"""The JVP influence's attention: same values and same forward-mode derivative as PyTorch's attention."""

import pytest
import torch
from torch.func import jvp

from prefalign.scoring import jvp_attention
from tests.conftest import ARCHITECTURES, tiny_model


class _Module(torch.nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.num_key_value_groups = groups
        self.is_causal = True
        self.training = False


def reference(query, key, value, mask, scale):
    """Plain attention with every query head given its own copy of its key/value head (repeat_kv)."""
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    probs = torch.softmax(query @ key.transpose(-1, -2) * scale + mask, dim=-1)
    return (probs @ value).transpose(1, 2)


def packed_mask(batch, length, dtype):
    """Additive (B, 1, L, L) mask: causal, two segments per row, a padded tail attending to itself."""
    segment = torch.tensor([0] * (length // 2) + [1] * (length - length // 2 - 1) + [2])
    allowed = torch.ones(length, length, dtype=torch.bool).tril() & (segment[:, None] == segment[None, :])
    mask = torch.zeros(length, length, dtype=dtype).masked_fill(~allowed, torch.finfo(dtype).min)
    return mask.expand(batch, 1, length, length)


@pytest.mark.parametrize("heads,kv_heads", [(6, 2), (4, 4)])
def test_values_and_jvp_match_autograd_forward_mode(heads, kv_heads):
    generator = torch.Generator().manual_seed(0)
    batch, length, dim = 2, 7, 4

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    query, key, value = randn(batch, heads, length, dim), randn(batch, kv_heads, length, dim), randn(batch, kv_heads, length, dim)
    tangents = randn(batch, heads, length, dim), randn(batch, kv_heads, length, dim), randn(batch, kv_heads, length, dim)
    mask = packed_mask(batch, length, torch.float64)
    module = _Module(heads // kv_heads)
    scale = 0.37

    def ours(q, k, v):
        return jvp_attention.attention(module, q, k, v, mask, scaling=scale)[0]

    def theirs(q, k, v):
        return reference(q, k, v, mask, scale)

    out, tangent = jvp(ours, (query, key, value), tangents)
    expected_out, expected_tangent = jvp(theirs, (query, key, value), tangents)
    assert out.shape == (batch, length, heads, dim)
    torch.testing.assert_close(out, expected_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(tangent, expected_tangent, rtol=1e-12, atol=1e-12)
    assert tangent.abs().max() > 0.1  # a real derivative, not zeros on both sides

    # a tangent on the queries alone (keys and values constant) takes the other branch of the JVP
    _, q_only = jvp(lambda q: ours(q, key, value), (query,), (tangents[0],))
    _, q_expected = jvp(lambda q: theirs(q, key, value), (query,), (tangents[0],))
    torch.testing.assert_close(q_only, q_expected, rtol=1e-12, atol=1e-12)


def test_hand_worked_single_query():
    """One query over two keys: p = softmax(s), dp = p (ds - p.ds), worked out by hand."""
    module = _Module(1)
    query = torch.tensor([[[[1.0]], [[0.0]]]], dtype=torch.float64).transpose(1, 2)  # (1, 1, 2, 1): two positions
    key = torch.tensor([[[[1.0], [2.0]]]], dtype=torch.float64)
    value = torch.tensor([[[[10.0], [20.0]]]], dtype=torch.float64)
    mask = torch.zeros(1, 1, 2, 2, dtype=torch.float64)  # no masking: both positions see both keys
    dquery = torch.tensor([[[[1.0], [0.0]]]], dtype=torch.float64)
    out, tangent = jvp(
        lambda q: jvp_attention.attention(module, q, key, value, mask, scaling=1.0)[0],
        (query,),
        (dquery,),
    )
    # position 0: s = (1, 2), p = (1/(1+e), e/(1+e)), o = 10 p0 + 20 p1; ds = (1, 2), p.ds = p0 + 2 p1,
    # dp = p * (ds - p.ds), do = 10 dp0 + 20 dp1 = 10 p0 p1 (the variance of (10, 20) under p, scaled by 1/10)
    e = torch.e
    p0, p1 = 1 / (1 + e), e / (1 + e)
    assert out[0, 0, 0, 0].item() == pytest.approx(10 * p0 + 20 * p1, rel=1e-12)
    assert tangent[0, 0, 0, 0].item() == pytest.approx(10 * p0 * p1, rel=1e-12)
    # position 1: s = (0, 0), p = (1/2, 1/2), no tangent
    assert out[0, 1, 0, 0].item() == pytest.approx(15.0, rel=1e-12)
    assert tangent[0, 1, 0, 0].item() == pytest.approx(0.0, abs=1e-12)


def test_unsupported_calls_fall_back_to_pytorch_attention():
    generator = torch.Generator().manual_seed(1)
    query, key, value = (torch.randn(1, 2, 5, 4, generator=generator, dtype=torch.float64) for _ in range(3))
    module = _Module(1)
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    for mask in (causal.expand(1, 1, 5, 5), None):  # a boolean mask; no mask (causal)
        out, _ = jvp_attention.attention(module, query, key, value, mask, scaling=0.5)
        additive = torch.zeros(5, 5, dtype=torch.float64).masked_fill(~causal, float("-inf"))
        torch.testing.assert_close(out, reference(query, key, value, additive, 0.5))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_installed_only_inside_the_block_and_used_by_every_layer(architecture, monkeypatch):
    model = tiny_model(architecture, dtype="float64")
    generator = torch.Generator().manual_seed(2)
    input_ids = torch.randint(5, 100, (2, 9), generator=generator)
    attention_mask = torch.ones(2, 9, dtype=torch.long)
    attention_mask[1, :3] = 0  # a left-padded row: the 2-D mask becomes an additive 4-D one
    before = model.config._attn_implementation
    with torch.no_grad():
        expected = model(input_ids=input_ids, attention_mask=attention_mask).logits
    calls = []
    apply = jvp_attention._Attention.apply
    monkeypatch.setattr(jvp_attention._Attention, "apply", lambda *args: calls.append(1) or apply(*args))
    with torch.no_grad(), jvp_attention.installed(model):
        assert model.config._attn_implementation == jvp_attention.NAME
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    assert model.config._attn_implementation == before
    assert len(calls) == model.config.num_hidden_layers
    torch.testing.assert_close(logits[0], expected[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logits[1, 3:], expected[1, 3:], rtol=1e-10, atol=1e-10)
