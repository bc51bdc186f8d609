"""Masked softmax attention with a hand-written forward-mode derivative, for the JVP influence.

Under ``torch.func.jvp`` PyTorch's attention runs its math backend and differentiates it op by op: ``repeat_kv``
copies of the keys and values for every query head (grouped-query attention), the additive mask, a "safe"
softmax with its all-masked-row checks, and a generic tangent for each of them, which on a CPU costs more than
the attention matmuls themselves on packed rows (``L x L`` score matrices). This module computes the same
attention and its JVP directly::

    S = scale * Q K^T + M,    P = softmax(S),    O = P V
    dS = scale * (dQ K^T + Q dK^T)
    dP = P * (dS - rowsum(P * dS))          (the softmax JVP)
    dO = dP V + P dV

with the query heads that share a key/value head stacked along the query axis (no key/value copies) and the
elementwise work on ``L x L`` done in place. It is exact (the same formulas, float rounding aside; the tests
compare against autograd in float64). It is only installed inside :func:`prefalign.scoring.influence.
jvp_influence`; it has no backward (training and the validation gradient use the model's own attention).
Calls it does not cover (soft-capping, sliding windows, attention sinks, dropout, a missing or non-4-D mask)
go to the math SDPA path, which forward-mode AD differentiates op by op.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

NAME = "prefalign_jvp"


class _Attention(torch.autograd.Function):
    """``(q (B, Hkv, G*L, d), k (B, Hkv, L, d), v, mask (B, 1, 1, L, L) additive, scale) -> (B, Hkv, G*L, d)``."""

    @staticmethod
    def forward(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float, groups: int) -> Tensor:
        batch, heads, rows, _ = q.shape
        length = k.shape[2]
        scores = torch.matmul(q, k.transpose(-1, -2)).mul_(scale).view(batch, heads, groups, rows // groups, length)
        probs = torch.softmax(scores.add_(mask), dim=-1).view(batch, heads, rows, length)
        return torch.matmul(probs, v), probs

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        q, k, v, _mask, scale, _groups = inputs
        _out, probs = output
        ctx.save_for_forward(q, k, v, probs)
        ctx.scale = scale
        ctx.mark_non_differentiable(probs)

    @staticmethod
    def jvp(ctx: Any, dq: Tensor | None, dk: Tensor | None, dv: Tensor | None, *_: Any) -> tuple[Tensor, None]:
        q, k, v, probs = ctx.saved_tensors
        if dq is None and dk is None:
            dscores = torch.zeros_like(probs)
        elif dk is None:
            dscores = torch.matmul(dq, k.transpose(-1, -2))
        else:
            dscores = torch.matmul(q, dk.transpose(-1, -2))
            if dq is not None:
                dscores.add_(torch.matmul(dq, k.transpose(-1, -2)))
        dscores.mul_(ctx.scale)
        # dP = P * (dS - rowsum(P * dS)), in place on dS
        dscores.sub_((probs * dscores).sum(-1, keepdim=True)).mul_(probs)
        dout = torch.matmul(dscores, v)
        if dv is not None:
            dout.add_(torch.matmul(probs, dv))
        return dout, None


def attention(
    module: torch.nn.Module,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attention_mask: Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[Tensor, None]:
    """A ``transformers`` attention function: ``(B, H, L, d)`` query/key/value -> ``(B, L, H, d)`` output."""
    unsupported = any(kwargs.get(name) is not None for name in ("softcap", "sliding_window", "s_aux", "position_bias"))
    mask = attention_mask
    if unsupported or dropout or mask is None or mask.dim() != 4 or mask.shape[1] != 1 or mask.dtype == torch.bool:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        with sdpa_kernel(SDPBackend.MATH):
            return sdpa_attention_forward(module, query, key, value, attention_mask, dropout, scaling, **kwargs)
    batch, heads, length, dim = query.shape
    kv_heads = key.shape[1]
    groups = heads // kv_heads
    scale = dim**-0.5 if scaling is None else scaling
    # query heads h = j * groups + g share key/value head j: stack them along the query axis
    stacked = query.reshape(batch, kv_heads, groups * length, dim)
    mask = mask[:, :, None, :, : key.shape[2]]
    out, _ = _Attention.apply(stacked, key, value, mask, scale, groups)
    return out.view(batch, heads, length, dim).transpose(1, 2).contiguous(), None


def register() -> str:
    """Register :func:`attention` with ``transformers`` (idempotent); returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(NAME, attention)
    # the models build additive float masks for it, as for eager attention (packed batches pass their own)
    AttentionMaskInterface.register(NAME, eager_mask)
    return NAME


@contextmanager
def installed(model: torch.nn.Module) -> Iterator[None]:
    """Run ``model`` (a ``transformers`` model) with :func:`attention` inside the block; restored after."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "_attn_implementation"):
        yield
        return
    previous = config._attn_implementation
    config._attn_implementation = register()
    try:
        yield
    finally:
        config._attn_implementation = previous
