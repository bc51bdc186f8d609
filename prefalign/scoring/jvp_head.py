"""Token log-probs through the vocabulary projection with a hand-written forward-mode derivative, for the JVP.

The last step of every log-prob is ``z = W h (+ b)`` over the vocabulary (``V`` = 49k to 152k) and
``logp = z[y] - logsumexp(z)``. Forward-mode AD differentiated op by op materialises the logits' tangent
``dz = dW h + W dh (+ db)`` (an ``N x V`` tensor, as large as the logits) and then makes several elementwise passes
over both for the log-sum-exp and its tangent (on the 2-core CPU, 1.21 s of a ~11 s JVP over 32 pairs of the
embedded model; 0.90 s this way). With ``p = softmax(z)`` the tangent needs no ``N x V`` tensor but ``p``::

    dlogp_t = dz_t[y_t] - <p_t, dz_t>
            = <dh_t, W[y_t] - p_t W> + <h_t, dW[y_t] - p_t dW> + (db[y_t] - <p_t, db>)

two ``N x V x H`` matmuls (``p W`` and ``p dW``, the same count as ``dW h + W dh``) and row dot products of
width ``H``. The forward computes ``log_softmax`` in chunks of tokens, keeps ``p`` (``N x V``, the size of the
logits the generic path keeps too) for the tangent, and returns ``logp[y]``. Exact, float rounding aside (the
tests compare it with the generic path in float64). Used only by the passes
of :func:`prefalign.scoring.influence.jvp_influence` (their :class:`~prefalign.logprobs.LogpSettings`'s
``head_logps``); it has no backward (training and the validation gradient keep the generic path).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from prefalign import logprobs

CHUNK_TOKENS = 512  # tokens per chunk of the forward: bounds its N x V temporaries to one chunk's


class _HeadLogps(torch.autograd.Function):
    """``(hidden (N, H), weight (V, H), bias (V,) or None, targets (N,)) -> logp (N,)`` with a JVP."""

    @staticmethod
    def forward(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor) -> tuple[Tensor, Tensor]:
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        probs = torch.empty(hidden.shape[0], weight.shape[0], dtype=dtype, device=hidden.device)
        picked = torch.empty(hidden.shape[0], dtype=dtype, device=hidden.device)
        for start in range(0, hidden.shape[0], CHUNK_TOKENS):
            part = slice(start, start + CHUNK_TOKENS)
            logits = torch.nn.functional.linear(hidden[part], weight, bias).to(dtype)
            logp = torch.log_softmax(logits, dim=-1)
            del logits
            picked[part] = logp.gather(-1, targets[part].unsqueeze(-1)).squeeze(-1)
            torch.exp(logp, out=probs[part])
        return picked, probs

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        hidden, weight, bias, targets = inputs
        _picked, probs = output
        ctx.save_for_forward(hidden, weight, targets, probs)
        ctx.mark_non_differentiable(probs)

    @staticmethod
    def jvp(ctx: Any, dhidden: Tensor | None, dweight: Tensor | None, dbias: Tensor | None, _dtargets: Any) -> tuple[Tensor, None]:
        hidden, weight, targets, probs = ctx.saved_tensors
        dtype = probs.dtype
        dpicked = torch.zeros(hidden.shape[0], dtype=dtype, device=hidden.device)
        if dhidden is not None:
            w = weight.to(dtype)
            # <dh_t, W[y_t] - p_t W>
            dpicked += (dhidden.to(dtype) * (w[targets] - probs @ w)).sum(-1)
        if dweight is not None:
            dw = dweight.to(dtype)
            # <h_t, dW[y_t] - p_t dW>
            dpicked += (hidden.to(dtype) * (dw[targets] - probs @ dw)).sum(-1)
        if dbias is not None:
            db = dbias.to(dtype)
            dpicked += db[targets] - probs @ db
        return dpicked, None


def head_logps(hidden: Tensor, head: torch.nn.Module, targets: Tensor) -> Tensor:
    """``log softmax(head(hidden))[target]`` per row, ``(N, H), (N,) -> (N,)``, with the JVP above.

    ``head`` other than a plain ``nn.Linear`` (a LoRA-wrapped head, say) takes the generic path.
    """
    if type(head) is not torch.nn.Linear:
        return logprobs.token_logps(head(hidden), targets)
    picked, _probs = _HeadLogps.apply(hidden, head.weight, head.bias, targets)
    return picked
