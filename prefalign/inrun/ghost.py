"""Every pair's exact ``<v, grad ell_i(theta)>`` from the training step's own forward and backward pass.

For a module ``m`` with parameters ``W`` that acts on each token separately (a linear layer, an embedding, a
norm), the gradient of a loss through ``m`` is ``sum_t J_t^T delta_t``: ``delta_t`` is the gradient of the loss at
the module's output for token ``t`` and ``J_t`` the Jacobian of that output in ``W``. Its inner product with a
direction ``V`` is therefore::

    < V, grad_W ell >  =  sum_t  < delta_t ,  J_t V >  =  sum_t  < delta_t , d/de m(a_t; W + e V) >

For a linear layer ``J_t V = V a_t (+ V_b)``: one more product per token, the cost of the layer's forward pass;
for an embedding ``V[x_t]``; for any other module (norms, ...) one forward-mode JVP of that module alone. The
backward pass of the training step already holds every ``delta_t`` and every input ``a_t``, so summing
``<delta_t, J_t V>`` over the tokens that belong to pair ``i`` gives ``<V, grad ell_i>`` for every pair of the
batch, exactly (float rounding aside), with no per-pair gradient ever formed: the "ghost" inner products of
In-Run Data Shapley (Wang et al., ICLR 2025, Sec. 4) and GREATS (Wang et al., NeurIPS 2024, Sec. 3.2), here for
the pairwise losses of :mod:`prefalign.losses`. A module that is used several times (a tied embedding and
output head, the prompt pass and the completion pass of shared prompts) contributes once per use, which is what
the gradient does too.

Which tokens belong to which pair is said by the log-prob passes (:mod:`prefalign.logprobs`) through
:meth:`GhostInfluence.tokens`: a tensor of pair numbers whose shape is the leading dimensions of the decoder's
activations (``(rows, 1)`` for padded rows, one pair a row; ``(rows, width)`` for packed rows, ``-1`` for the
unused tail; ``(tokens,)`` for the vocabulary step of packed passes). The vocabulary step of chunked packed passes
(:func:`prefalign.logprobs.chunked_head_logps`) never calls the head module; it calls :meth:`head_ghost`'s
function with each chunk's logit gradient instead.

The per-pair sums are of the batch loss's gradient, ``dL/d ell_i * <v, grad ell_i>``: the training step's mean,
data weights, gradient accumulation and loss scaling all sit in ``dL/d ell_i``, which :meth:`pair_scale` takes from
the backward pass itself, so :meth:`influence` divides it out whatever they are. A pair whose loss has no
gradient in the step (data weight 0) has no in-run influence: NaN.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from torch.func import functional_call, jvp

from prefalign import distributed


def select_parameters(
    model: torch.nn.Module, parameters: str | list[str] = "trainable", option: str = "score.influence.parameters"
) -> dict[str, Tensor]:
    """The parameters an influence is taken over, by name.

    Args:
        model: the policy.
        parameters: ``"trainable"`` (those with ``requires_grad``: all under full fine-tuning, the adapters under
            LoRA), ``"all"``, or a list of regular expressions matched against parameter names
            (e.g. ``["layers\\.2[0-9]\\.", "lm_head"]``).
        option: the config key of ``parameters``, for the error.

    Raises:
        ValueError: nothing matches.
    """
    named = dict(model.named_parameters())
    if parameters == "trainable":
        chosen = {name: p for name, p in named.items() if p.requires_grad}
    elif parameters == "all":
        chosen = named
    else:
        patterns = [re.compile(pattern) for pattern in parameters]
        chosen = {name: p for name, p in named.items() if any(pattern.search(name) for pattern in patterns)}
    if not chosen:
        raise ValueError(f"{option}={parameters!r} matches no parameter of the model")
    return chosen


def mean_gradient(
    module: torch.nn.Module, names: list[str], losses_of: Callable[[Any], Tensor], batches: Iterable[Any], total: int
) -> dict[str, Tensor]:
    """``grad (1/total) sum_i ell_i`` over the parameters ``names`` of ``module``: the validation gradient ``v`` of
    the ``influence`` scorer and of the in-run influence, one implementation for both.

    ``losses_of(batch)`` runs the forward pass of a batch and returns its per-pair losses. The gradient is taken by
    ``torch.autograd.grad``, so no parameter's ``.grad`` is touched (safe in the middle of a gradient
    accumulation); for the pass, exactly the named parameters require a gradient (the others are not
    differentiated), and every flag is restored after. Under a launcher each rank passes its share of the batches
    and the sums are added over the ranks, so every rank returns the whole mean.

    Raises:
        ValueError: ``total`` is not positive.
    """
    if total <= 0:
        raise ValueError(f"the mean gradient needs at least one pair, got total={total}")
    named = dict(module.named_parameters())
    flags = {name: p.requires_grad for name, p in named.items()}
    chosen = set(names)
    parameters = [named[name] for name in names]
    sums = [torch.zeros_like(p) for p in parameters]
    try:
        for name, parameter in named.items():
            parameter.requires_grad_(name in chosen)
        with torch.enable_grad():
            for batch in batches:
                grads = torch.autograd.grad(losses_of(batch).sum() / total, parameters, allow_unused=True)
                for acc, grad in zip(sums, grads):
                    if grad is not None:
                        acc += grad
    finally:
        for name, parameter in named.items():
            parameter.requires_grad_(flags[name])
    distributed.all_reduce_sum(sums)
    return {name: acc.detach() for name, acc in zip(names, sums)}


def _reduce_to(values: Tensor, owners: Tensor) -> tuple[Tensor, Tensor]:
    """``values`` summed over the dimensions after ``owners``' and flattened, with ``owners`` broadcast to match."""
    if values.shape[: owners.dim()] != torch.broadcast_shapes(values.shape[: owners.dim()], owners.shape):
        raise RuntimeError(
            f"in-run influence: an output of shape {tuple(values.shape)} does not start with the token layout "
            f"{tuple(owners.shape)} of its pass (a module that mixes tokens cannot be split by pair)"
        )
    summed = values.flatten(owners.dim()).sum(-1) if values.dim() > owners.dim() else values
    return summed.reshape(-1), owners.expand(summed.shape).reshape(-1)


class GhostInfluence:
    """Per-pair ``<v, grad ell_i>`` over ``parameters`` of ``model``, from the backward pass of a training step.

    Use: :meth:`attach` once (forward hooks on every module that owns one of the parameters), :meth:`set_direction`
    with ``v``, then per batch ``with ghost.collecting(n_pairs): loss.backward()`` (the forward pass inside too),
    its passes telling which tokens are whose (:meth:`tokens`, done by :mod:`prefalign.logprobs` when the pass's
    settings carry this object), :meth:`pair_scale` given ``dL/d ell_i`` (a hook on the per-pair losses), and
    :meth:`influence` for the result. Outside :meth:`collecting` the hooks do nothing.

    Args:
        model: the policy.
        parameters: the parameters, by name (:func:`select_parameters`).
    """

    def __init__(self, model: torch.nn.Module, parameters: dict[str, Tensor]) -> None:
        self.model = model
        self.names = list(parameters)
        self._by_id = {id(parameter): name for name, parameter in parameters.items()}
        self._direction: dict[int, Tensor] = {}
        self._owners: Tensor | None = None
        self._totals: Tensor | None = None
        self._scale: Tensor | None = None
        self._handles: list[Any] = []

    # -- set-up -----------------------------------------------------------------------------------------------
    def attach(self) -> None:
        """Hook every module that directly owns one of the parameters (idempotent)."""
        if self._handles:
            return
        for module in self.model.modules():
            own = [p for p in module.parameters(recurse=False) if id(p) in self._by_id]
            if own:
                self._handles.append(module.register_forward_hook(self._hook, with_kwargs=True))

    def detach(self) -> None:
        """Remove the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def set_direction(self, direction: dict[str, Tensor]) -> None:
        """``v`` by parameter name (every name of :attr:`names`)."""
        missing = [name for name in self.names if name not in direction]
        if missing:
            raise ValueError(f"in-run influence: the direction has no tensor for {missing[:5]}")
        named = dict(self.model.named_parameters())
        self._direction = {id(named[name]): direction[name].detach() for name in self.names}

    # -- per batch ----------------------------------------------------------------------------------------------
    def begin(self, n_pairs: int, device: torch.device, dtype: torch.dtype = torch.float64) -> None:
        """From here until :meth:`end`, the hooks add each pair's share into a fresh total of ``n_pairs`` values."""
        if not self._direction:
            raise RuntimeError("in-run influence: no direction set before collecting")
        self._totals = torch.zeros(n_pairs, dtype=dtype, device=device)
        self._scale = None

    def end(self) -> None:
        """Stop collecting (idempotent); what was not read by :meth:`influence` is dropped."""
        self._totals, self._scale, self._owners = None, None, None

    @contextmanager
    def collecting(self, n_pairs: int, device: torch.device, dtype: torch.dtype = torch.float64) -> Iterator[None]:
        """:meth:`begin` and, after the block, :meth:`end`: read :meth:`influence` inside the block."""
        self.begin(n_pairs, device, dtype)
        try:
            yield
        finally:
            self._owners = None

    @property
    def active(self) -> bool:
        return self._totals is not None

    @contextmanager
    def tokens(self, owners: Tensor) -> Iterator[None]:
        """The module calls inside the block see ``owners``: the pair number of each token (module docstring)."""
        if self._totals is None:
            yield
            return
        previous, self._owners = self._owners, owners
        try:
            yield
        finally:
            self._owners = previous

    def pair_scale(self, scale: Tensor) -> None:
        """``dL/d ell_i`` of the batch's pairs, from the backward pass (a hook on the per-pair losses)."""
        self._scale = scale.detach()

    def influence(self) -> Tensor:
        """``<v, grad ell_i>`` of every pair of the batch (NaN where ``dL/d ell_i`` is 0), and the end of it.

        Raises:
            RuntimeError: the backward pass did not reach the per-pair losses (no :meth:`pair_scale`).
        """
        if self._totals is None or self._scale is None:
            raise RuntimeError("in-run influence: the batch's backward pass gave no per-pair loss gradient")
        totals, scale = self._totals, self._scale.to(self._totals.dtype)
        self._totals, self._scale = None, None
        values = totals / scale
        return torch.where(scale != 0, values, torch.full_like(values, float("nan")))

    def pass_influence(
        self, losses_of: Callable[[], Tensor], backward: Callable[[Tensor], Any], n_pairs: int, device: torch.device
    ) -> Tensor:
        """One forward and backward pass with the products collected, and its pairs' IF.

        ``losses_of()`` runs the forward pass and returns the per-pair losses; ``backward(losses)`` back-propagates
        any objective of them (a weighted mean, a scaled mean for accumulation, a sum through
        ``torch.autograd.grad``): :meth:`pair_scale` divides it out whatever it is.
        """
        self.begin(n_pairs, device)
        try:
            losses = losses_of()
            losses.register_hook(self.pair_scale)
            backward(losses)
            return self.influence()
        finally:
            self.end()

    # -- the hooks --------------------------------------------------------------------------------------------
    def _add(self, values: Tensor, owners: Tensor, totals: Tensor) -> None:
        flat, pairs = _reduce_to(values, owners)
        keep = pairs >= 0
        totals.index_add_(0, pairs[keep].to(totals.device), flat[keep].to(totals.dtype))

    def _hook(self, module: torch.nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        owners, totals = self._owners, self._totals
        if owners is None or totals is None or not torch.is_grad_enabled():
            return  # a pass that is not a traced training pass (validation, the direction's own pass, ...)
        if not isinstance(output, Tensor):
            raise RuntimeError(
                f"in-run influence: {type(module).__name__} owns trained parameters but returns "
                f"{type(output).__name__}, not a tensor of per-token outputs; choose parameters without it"
            )
        if not output.requires_grad:
            return
        inputs = tuple(a.detach() if isinstance(a, Tensor) else a for a in args)

        def on_gradient(gradient: Tensor) -> None:
            with torch.no_grad():
                self._add(self._contribution(module, inputs, kwargs, gradient), owners, totals)

        output.register_hook(on_gradient)

    def _contribution(self, module: torch.nn.Module, inputs: tuple, kwargs: dict[str, Any], gradient: Tensor) -> Tensor:
        """``<delta_t, J_t V>`` per output element (summed over the feature dimension where that is cheaper)."""
        direction = self._direction
        acc = torch.promote_types(gradient.dtype, torch.float32)
        if type(module) is torch.nn.Linear and not kwargs:
            (a,) = inputs
            v_weight, v_bias = direction.get(id(module.weight)), None
            if module.bias is not None:
                v_bias = direction.get(id(module.bias))
            result = torch.zeros(gradient.shape[:-1], dtype=acc, device=gradient.device)
            if v_weight is not None:
                v_weight = v_weight.to(a.dtype)
                # <delta, V a> = <V^T delta, a>: take the product on the narrower side
                if module.out_features <= module.in_features:
                    result += (gradient.to(acc) * torch.nn.functional.linear(a, v_weight).to(acc)).sum(-1)
                else:
                    result += ((gradient @ v_weight.to(gradient.dtype)).to(acc) * a.to(acc)).sum(-1)
            if v_bias is not None:
                result += gradient.to(acc) @ v_bias.to(acc)
            return result
        if type(module) is torch.nn.Embedding and not kwargs and id(module.weight) in direction:
            (ids,) = inputs
            tangent = torch.nn.functional.embedding(ids, direction[id(module.weight)].to(gradient.dtype))
            return (gradient.to(acc) * tangent.to(acc)).sum(-1)
        # any other module: a forward-mode JVP of the module alone, in its own parameters
        own = {name: p.detach() for name, p in module.named_parameters(recurse=False) if id(p) in direction}
        tangents = {name: direction[id(p)].to(p.dtype) for name, p in module.named_parameters(recurse=False) if id(p) in direction}

        def call(parameters: dict[str, Tensor]) -> Tensor:
            return functional_call(module, parameters, inputs, kwargs, strict=False)

        _, tangent = jvp(call, (own,), (tangents,))
        return gradient.to(acc) * tangent.to(acc)

    def head_ghost(self) -> Callable[[slice, Tensor, Tensor, Tensor, Tensor | None], None] | None:
        """For the chunked vocabulary step: a function of ``(chunk rows, dlogits, hidden, weight, bias)`` that adds
        each token's ``<dlogits_t, V_W h_t + V_b>``, with this pass's token owners; ``None`` outside a traced pass."""
        owners, totals = self._owners, self._totals
        if owners is None or totals is None:
            return None
        direction = self._direction

        def ghost(rows: slice, dlogits: Tensor, hidden: Tensor, weight: Tensor, bias: Tensor | None) -> None:
            v_weight = direction.get(id(weight))
            v_bias = direction.get(id(bias)) if bias is not None else None
            if v_weight is None and v_bias is None:
                return
            tangent = torch.zeros_like(dlogits)
            if v_weight is not None:
                tangent += torch.nn.functional.linear(hidden, v_weight.to(hidden.dtype)).to(dlogits.dtype)
            if v_bias is not None:
                tangent += v_bias.to(dlogits.dtype)
            self._add((dlogits * tangent).sum(-1), owners[rows], totals)

        return ghost
