"""The log-probability of a completion given its prompt: the one function training, scoring and evaluation use.

``s(y) = sum_t log pi(y_t | x, y_<t)`` over the completion tokens only (the prompt is never scored), summed
in float32 (float64 for a float64 model) whatever the model's dtype.

How a pass runs the model is one frozen :class:`LogpSettings`, built once per run from its config
(:func:`prefalign.run_setup.setup_run`) and handed to every pass of the run: training, reference log-probs,
scoring and held-out evaluation. Every way gives the same numbers up to float rounding (tested against each
other):

* ``share_prompt=True`` (default): the prompt batch runs once, its key/value cache is duplicated for the
  completions that follow it (chosen, rejected, and KTO's mismatched ones), and only completion tokens run
  after it. For a pair this costs ``|x| + |y_w| + |y_l|`` tokens instead of ``2|x| + |y_w| + |y_l|``.
* ``share_prompt=False``: each completion runs with its own copy of the prompt (TRL's concatenated batch).

In both, logits are computed only at the positions that predict completion tokens (``logits_to_keep``), not
over the prompt, which saves the vocabulary projection on every prompt token. A third way, padding-free packing
(:func:`packed_completion_logps`, ``pack_length`` in the configs and their default), runs each prompt once and
its completions after it in packed rows, without padding, in one decoder call; its vocabulary step can run in
chunks of tokens (``head_chunk_tokens``, :func:`chunked_head_logps`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from prefalign.keys import LOGP_SETTINGS

# (hidden (N, H), output embeddings, targets (N,)) -> log-probs (N,): the vocabulary step of a packed pass
HeadLogps = Callable[[Tensor, torch.nn.Module, Tensor], Tensor]


def _optional_count(key: str, value: Any) -> int | None:
    """``value`` if it is ``None`` or a positive integer (a bool is not one); the error names the config ``key``."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"{key} must be a positive integer or null, got {value!r}")
    return value


@dataclass(frozen=True)
class LogpSettings:
    """How every log-prob pass of a run runs the model; the same numbers whatever they are, float rounding aside.

    Built once per run from its config (:meth:`from_config`) and handed down, so that a second run in the same
    process never inherits the first one's settings. The default (no arguments) is a padded pass with the prompt
    shared and the vocabulary step in one piece.

    Attributes:
        share_prompt: run each prompt once for all of its completions (module docstring).
        pack_length: pack the sequences of a batch into rows of this many tokens, without padding
            (:func:`packed_completion_logps`); ``None``: padded batches.
        head_chunk_tokens: the vocabulary step of packed passes in chunks of this many tokens, never keeping a
            ``tokens x vocabulary`` tensor (:func:`chunked_head_logps`); ``None``: all at once.
        head_logps: a vocabulary step of packed passes that replaces both of those, ``(hidden (N, H), head,
            targets (N,)) -> (N,)``; not a config option: the JVP influence passes its forward-mode one
            (:mod:`prefalign.scoring.jvp_head`) for its own passes only.
        tracer: not a config option either: the in-run influence's
            :class:`~prefalign.inrun.ghost.GhostInfluence`, told by each pass which tokens belong to which pair
            (its ``tokens(owners)``) and given the chunked vocabulary step's logit gradients (its
            ``head_ghost()``). It changes no number of the pass.

    Raises:
        ValueError: ``pack_length`` or ``head_chunk_tokens`` is not a positive integer or ``None``, or
            ``share_prompt`` is not a bool (each named by its config key).
    """

    share_prompt: bool = True
    pack_length: int | None = None
    head_chunk_tokens: int | None = None
    head_logps: HeadLogps | None = None
    tracer: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.share_prompt, bool):
            raise ValueError(f"share_prompt must be true or false, got {self.share_prompt!r}")
        _optional_count("pack_length", self.pack_length)
        _optional_count("head_chunk_tokens", self.head_chunk_tokens)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> LogpSettings:
        """The settings of a run config's top-level ``share_prompt``, ``pack_length`` and ``head_chunk_tokens``
        (:data:`prefalign.keys.LOGP_SETTINGS`; absent ones take the defaults, as in an older run's config)."""
        return cls(**{name: cfg[name] for name in LOGP_SETTINGS if name in cfg})

    def key(self) -> dict[str, Any]:
        """The settings by their config keys, each of which changes a pass's float rounding: what cache keys hold."""
        return {name: getattr(self, name) for name in LOGP_SETTINGS}

    def vocabulary_logps(self, hidden: Tensor, head: torch.nn.Module, targets: Tensor) -> Tensor:
        """``log softmax(head(hidden))[target]`` per row, ``(N, H), (N,) -> (N,)``, the way these settings say."""
        if self.head_logps is not None:
            return self.head_logps(hidden, head, targets)
        if self.head_chunk_tokens is not None:
            ghost = self.tracer.head_ghost() if self.tracer is not None else None
            return chunked_head_logps(hidden, head, targets, self.head_chunk_tokens, ghost)
        return token_logps(head(hidden), targets)


def _owned(tracer: Any, owners: Tensor) -> AbstractContextManager[Any]:
    """The tracer's ``tokens(owners)`` (which pair each token of the next model call belongs to), if there is one."""
    return tracer.tokens(owners) if tracer is not None else nullcontext()


def _positions(attention_mask: Tensor) -> Tensor:
    """Position ids that start at 0 at the first real token of each left-padded row."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)


def completion_logits(
    model: torch.nn.Module,
    prompt_input_ids: Tensor,
    prompt_attention_mask: Tensor,
    completion_input_ids: Tensor,
    completion_attention_mask: Tensor,
    prompt_index: Tensor | None = None,
    share_prompt: bool = True,
    tracer: Any = None,
) -> Tensor:
    """Logits ``(N, C, V)`` whose position ``t`` predicts completion token ``t``.

    Args:
        model: a Hugging Face causal LM (or a peft wrapper of one).
        prompt_input_ids, prompt_attention_mask: ``(B, P)``, left-padded.
        completion_input_ids, completion_attention_mask: ``(N, C)``, right-padded.
        prompt_index: ``(N,)`` row of the prompt each completion follows; default ``arange(N)`` (``N == B``).
        share_prompt: run each prompt once and reuse its cache (see module docstring).
        tracer: told that each row's tokens belong to its prompt's row (:attr:`LogpSettings.tracer`).
    """
    n_completions, length = completion_input_ids.shape
    if prompt_index is None:
        prompt_index = torch.arange(n_completions, device=completion_input_ids.device)
    # the last completion token is never an input: nothing after it is scored
    inputs = completion_input_ids[:, :-1]
    prompt_rows = torch.arange(prompt_input_ids.shape[0], device=inputs.device)[:, None]
    if share_prompt:
        with _owned(tracer, prompt_rows):
            prompt_out = model(
                input_ids=prompt_input_ids,
                attention_mask=prompt_attention_mask,
                position_ids=_positions(prompt_attention_mask),
                use_cache=True,
                logits_to_keep=1,
            )
        first = prompt_out.logits[prompt_index, -1:]  # predicts completion token 0
        if length == 1:
            return first
        cache = prompt_out.past_key_values
        cache.reorder_cache(prompt_index)
        prompt_mask = prompt_attention_mask[prompt_index]
        attention_mask = torch.cat([prompt_mask, completion_attention_mask[:, :-1]], dim=1)
        start = prompt_mask.sum(-1, keepdim=True)
        positions = start + torch.arange(length - 1, device=inputs.device)
        with _owned(tracer, prompt_index[:, None]):
            rest = model(
                input_ids=inputs,
                attention_mask=attention_mask,
                position_ids=positions,
                past_key_values=cache,
                use_cache=True,
            ).logits
        return torch.cat([first, rest], dim=1)
    input_ids = torch.cat([prompt_input_ids[prompt_index], inputs], dim=1)
    attention_mask = torch.cat([prompt_attention_mask[prompt_index], completion_attention_mask[:, :-1]], dim=1)
    with _owned(tracer, prompt_index[:, None]):
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=_positions(attention_mask),
            use_cache=False,
            logits_to_keep=length,
        )
    return out.logits


def packed_completion_logps(
    model: torch.nn.Module,
    prompt_input_ids: Tensor,
    prompt_attention_mask: Tensor,
    completion_input_ids: Tensor,
    completion_attention_mask: Tensor,
    prompt_index: Tensor | None = None,
    settings: LogpSettings = LogpSettings(pack_length=512),
) -> tuple[Tensor, Tensor]:
    """:func:`completion_logps` with padding-free packing: no pad token is run through the model but a row's tail.

    Each prompt and the completions that follow it form one *segment*: ``prompt, completion_1[:-1],
    completion_2[:-1], ...`` (with ``settings.share_prompt``; otherwise one segment ``prompt + completion[:-1]``
    per completion). Segments are packed first-fit decreasing into rows of at most ``settings.pack_length`` tokens
    (a longer segment gets a row of its own). Position ids restart at 0 for each segment, and every completion
    continues at the prompt's length, so each token sees exactly the positions it would see alone. A 4-D attention
    mask lets a token attend, causally, to its own segment's prompt and to its own completion only: the rejected
    completion never sees the chosen one. This combines prompt sharing (``|x| + |y_w| + |y_l|`` tokens a pair)
    with no padding and one decoder call. The vocabulary projection runs only on the positions that predict
    completion tokens (:meth:`LogpSettings.vocabulary_logps`).

    ``pack_length`` trades padding at row tails against attention cost: attention here is computed over the
    whole row (a dense masked ``L x L`` score matrix; no variable-length kernel runs on a CPU), so short rows of
    a few hundred tokens are fastest (``python -m bench.scoring`` measures it).

    Raises:
        ValueError: ``settings.pack_length`` is ``None``, or a prompt is empty.
    """
    if settings.pack_length is None:
        raise ValueError("packed_completion_logps needs settings.pack_length (None means padded batches)")
    pack_length = settings.pack_length
    n_completions = completion_input_ids.shape[0]
    device = completion_input_ids.device
    if prompt_index is None:
        prompt_index = torch.arange(n_completions, device=device)
    # the rows are laid out on the CPU (one copy of the ids instead of a device sync per sequence), then moved
    prompt_ids = prompt_input_ids.cpu()
    prompts = [ids[mask.bool()] for ids, mask in zip(prompt_ids, prompt_attention_mask.cpu())]
    completions = [ids[mask.bool()] for ids, mask in zip(completion_input_ids.cpu(), completion_attention_mask.cpu())]
    index = prompt_index.tolist()
    if settings.share_prompt:
        owners_of: dict[int, list[int]] = {}
        for number, prompt in enumerate(index):
            owners_of.setdefault(prompt, []).append(number)
        segments = list(owners_of.items())
    else:
        segments = [(prompt, [number]) for number, prompt in enumerate(index)]

    def size(segment: tuple[int, list[int]]) -> int:
        prompt, numbers = segment
        return len(prompts[prompt]) + sum(max(len(completions[n]) - 1, 0) for n in numbers)

    rows: list[list[tuple[int, list[int]]]] = []
    lengths: list[int] = []
    # first-fit decreasing: longest segments first, each into the first row it fits (rows fill to a few
    # percent of padding where in-order filling leaves 15-30%); the order of rows does not change any result
    for length, segment in sorted(((size(segment), segment) for segment in segments), key=lambda item: -item[0]):
        for row, used in enumerate(lengths):
            if used + length <= pack_length:
                rows[row].append(segment)
                lengths[row] += length
                break
        else:
            rows.append([segment])
            lengths.append(length)
    width = max(lengths)
    pad_id = int(prompt_ids[0, 0]) if prompt_ids.numel() else 0
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    # segment number and part (0: prompt, j: j-th completion of the segment) of every token; the tail of a row is
    # one more segment of its own, attended by nothing real
    segment_ids = torch.full((len(rows), width), -1, dtype=torch.long)
    # the prompt row (the pair, in pair_logps) each token belongs to, -1 for a row's tail: for a tracer
    prompt_of = torch.full((len(rows), width), -1, dtype=torch.long)
    part_ids = torch.zeros((len(rows), width), dtype=torch.long)
    gather_rows, gather_positions, targets, owner = [], [], [], []
    for row, row_segments in enumerate(rows):
        offset = 0
        for number, (prompt, numbers) in enumerate(row_segments):
            ids = prompts[prompt]
            p = len(ids)
            if p == 0:
                raise ValueError(f"packing needs a non-empty prompt; prompt row {prompt} of the batch is empty")
            input_ids[row, offset : offset + p] = ids
            position_ids[row, offset : offset + p] = torch.arange(p)
            segment_ids[row, offset : offset + p] = number
            prompt_of[row, offset : offset + p] = prompt
            last_prompt_token = offset + p - 1
            offset += p
            for part, completion in enumerate(numbers, start=1):
                tokens = completions[completion]
                n = len(tokens)
                if n == 0:
                    continue
                inputs = n - 1
                input_ids[row, offset : offset + inputs] = tokens[:-1]
                position_ids[row, offset : offset + inputs] = torch.arange(p, p + inputs)
                segment_ids[row, offset : offset + inputs] = number
                prompt_of[row, offset : offset + inputs] = prompt
                part_ids[row, offset : offset + inputs] = part
                predicting = torch.cat([torch.tensor([last_prompt_token]), torch.arange(offset, offset + inputs)])
                gather_rows.append(torch.full_like(predicting, row))
                gather_positions.append(predicting)
                targets.append(tokens)
                owner.append(torch.full_like(predicting, completion))
                offset += inputs
        position_ids[row, offset:] = torch.arange(width - offset)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
    visible_part = (part_ids[:, None, :] == 0) | (part_ids[:, :, None] == part_ids[:, None, :])
    allowed = (causal & same_segment & visible_part).unsqueeze(1).to(device)  # (rows, 1, query, key)
    dtype = next(model.parameters()).dtype
    attention_mask = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)
    with _owned(settings.tracer, prompt_of.to(device)):
        hidden = model.get_decoder()(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask,
            position_ids=position_ids.to(device),
            use_cache=False,
        ).last_hidden_state
    sums = torch.zeros(n_completions, dtype=torch.promote_types(hidden.dtype, torch.float32), device=device)
    if gather_rows:
        selected = hidden[torch.cat(gather_rows).to(device), torch.cat(gather_positions).to(device)]
        head, target_ids = model.get_output_embeddings(), torch.cat(targets).to(device)
        owners = torch.cat(owner).to(device)
        with _owned(settings.tracer, prompt_index[owners]):
            per_token = settings.vocabulary_logps(selected, head, target_ids)
        sums = sums.to(per_token.dtype).index_add(0, owners, per_token)
    counts = completion_attention_mask.sum(-1).to(sums.dtype)
    return sums, counts


class _ChunkedHeadLogps(torch.autograd.Function):
    """``(hidden (N, H), weight (V, H), bias (V,) or None, targets (N,), chunk, ghost) -> log softmax(W h + b)[target]``.

    Chunks of ``chunk`` tokens: the forward keeps only each token's log-sum-exp, the backward recomputes each
    chunk's logits, so no ``N x V`` tensor is ever kept (at most one ``chunk x V`` at a time). With
    ``G = dL/dz = g (onehot(y) - softmax(z))``: ``dh = G W``, ``dW = G^T h``, ``db = sum_t G``. ``ghost``
    (the in-run influence's, or ``None``) is handed each chunk's ``G`` in the backward pass.
    """

    @staticmethod
    def forward(
        hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, chunk: int, ghost: Any = None
    ) -> tuple[Tensor, Tensor]:
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        picked = torch.empty(hidden.shape[0], dtype=dtype, device=hidden.device)
        lse = torch.empty_like(picked)
        for start in range(0, hidden.shape[0], chunk):
            part = slice(start, start + chunk)
            logits = torch.nn.functional.linear(hidden[part], weight, bias).to(dtype)
            lse[part] = torch.logsumexp(logits, dim=-1)
            picked[part] = logits.gather(-1, targets[part].unsqueeze(-1)).squeeze(-1) - lse[part]
        return picked, lse

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: tuple) -> None:
        hidden, weight, bias, targets, chunk, ghost = inputs
        _picked, lse = output
        ctx.chunk = chunk
        ctx.ghost = ghost
        ctx.has_bias = bias is not None
        ctx.mark_non_differentiable(lse)
        ctx.save_for_backward(hidden, weight, bias if bias is not None else torch.empty(0), targets, lse)

    @staticmethod
    def backward(
        ctx: Any, grad: Tensor, _grad_lse: Any
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None, None]:
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        bias = bias if ctx.has_bias else None
        need_hidden, need_weight, need_bias = ctx.needs_input_grad[:3]
        dhidden = torch.empty_like(hidden) if need_hidden else None
        dweight = torch.zeros(weight.shape, dtype=lse.dtype, device=weight.device) if need_weight else None
        dbias = torch.zeros(weight.shape[0], dtype=lse.dtype, device=weight.device) if need_bias and bias is not None else None
        rows = torch.arange(min(ctx.chunk, hidden.shape[0]), device=hidden.device)
        for start in range(0, hidden.shape[0], ctx.chunk):
            part = slice(start, start + ctx.chunk)
            g = grad[part].to(lse.dtype)
            logits = torch.nn.functional.linear(hidden[part], weight, bias).to(lse.dtype)
            # G = g (onehot(y) - p), in place on the recomputed logits
            dlogits = logits.sub_(lse[part].unsqueeze(-1)).exp_().mul_(-g.unsqueeze(-1))
            dlogits[rows[: len(g)], targets[part]] += g
            if ctx.ghost is not None:
                ctx.ghost(part, dlogits, hidden[part], weight, bias)
            if dhidden is not None:
                dhidden[part] = dlogits.to(weight.dtype) @ weight
            if dweight is not None:
                dweight.addmm_(dlogits.T, hidden[part].to(lse.dtype))
            if dbias is not None:
                dbias += dlogits.sum(0)
        return (
            dhidden,
            None if dweight is None else dweight.to(weight.dtype),
            None if dbias is None else dbias.to(weight.dtype),
            None,
            None,
            None,
        )


def chunked_head_logps(
    hidden: Tensor, head: torch.nn.Module, targets: Tensor, chunk_tokens: int, ghost: Any = None
) -> Tensor:
    """``log softmax(head(hidden))[target]`` per row, ``(N, H), (N,) -> (N,)``, in chunks of ``chunk_tokens``
    tokens that never keep an ``N x V`` tensor (one more head matmul in the backward pass, which recomputes the
    logits). A head other than a plain ``nn.Linear`` (a LoRA-wrapped head, say) takes the generic path.

    ``ghost``: called in the backward pass with each chunk's ``(rows, dlogits, hidden, weight, bias)``
    (:meth:`prefalign.inrun.ghost.GhostInfluence.head_ghost`)."""
    if type(head) is not torch.nn.Linear:
        return token_logps(head(hidden), targets)
    return _ChunkedHeadLogps.apply(hidden, head.weight, head.bias, targets, chunk_tokens, ghost)[0]


def token_logps(logits: Tensor, token_ids: Tensor) -> Tensor:
    """``log softmax(logits)[token]`` per position, in float32 or wider: ``(..., V), (...) -> (...)``."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    picked = torch.gather(logits, -1, token_ids.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(logits, dim=-1)


def completion_logps(
    model: torch.nn.Module,
    prompt_input_ids: Tensor,
    prompt_attention_mask: Tensor,
    completion_input_ids: Tensor,
    completion_attention_mask: Tensor,
    prompt_index: Tensor | None = None,
    share_prompt: bool = True,
    tracer: Any = None,
) -> tuple[Tensor, Tensor]:
    """Summed completion log-probs ``s(y)`` and completion lengths ``|y|``, both ``(N,)`` (float32 or wider).

    Arguments as in :func:`completion_logits`.
    """
    logits = completion_logits(
        model,
        prompt_input_ids,
        prompt_attention_mask,
        completion_input_ids,
        completion_attention_mask,
        prompt_index,
        share_prompt,
        tracer,
    )
    per_token = token_logps(logits, completion_input_ids)
    mask = completion_attention_mask.to(per_token.dtype)
    per_token = per_token * mask
    return per_token.sum(-1), mask.sum(-1)


def sliding_window(model: torch.nn.Module) -> int | None:
    """The attention window of a model with sliding-window layers (Gemma 3's ``sliding_attention`` layers,
    Mistral's), or ``None``: every layer attends to the whole sequence."""
    config = getattr(model, "config", None)
    window = getattr(config, "sliding_window", None)
    if not window:
        return None
    types = getattr(config, "layer_types", None)
    if types is not None:
        return int(window) if "sliding_attention" in types else None
    return int(window) if getattr(config, "use_sliding_window", True) else None


def check_window(model: torch.nn.Module, longest: int) -> None:
    """Refuse sequences longer than a sliding-window model's window.

    prefalign's passes give the decoder their own 4-D masks (prompt sharing, packing), which transformers uses as
    they are for every layer: a sliding-window layer would attend past its window instead of failing. Up to the
    window the two are the same, so shorter sequences are exact.

    Raises:
        ValueError: ``longest`` (prompt plus completion tokens) is longer than the window.
    """
    window = sliding_window(model)
    if window is not None and longest > window:
        raise ValueError(
            f"a sequence of {longest} tokens is longer than the model's sliding attention window ({window}): prefalign's "
            f"own attention masks do not apply the window; keep data.max_length at most {window}"
        )


def pair_logps(
    model: torch.nn.Module,
    batch: dict[str, Tensor],
    settings: LogpSettings = LogpSettings(),
    mismatched: bool = False,
) -> dict[str, Tensor]:
    """Log-probs of every completion of a pair batch in one pass over the model.

    Chosen, rejected (and, with ``mismatched``, KTO's mismatched completions) are stacked into one completion
    batch behind the shared prompts; with ``settings.pack_length`` they are packed without padding instead, each
    prompt once with all of its completions when ``settings.share_prompt`` (:func:`packed_completion_logps`).

    Returns:
        ``chosen_logps``, ``rejected_logps``, ``chosen_lengths``, ``rejected_lengths`` and, with
        ``mismatched``, ``kl_chosen_logps`` and ``kl_rejected_logps``; each ``(B,)``.
    """
    names = ["chosen", "rejected"] + (["kl_chosen", "kl_rejected"] if mismatched else [])
    batch_size = batch["prompt_input_ids"].shape[0]
    width = max(batch[f"{name}_input_ids"].shape[1] for name in names)

    def widen(tensor: Tensor, value: int) -> Tensor:
        return torch.nn.functional.pad(tensor, (0, width - tensor.shape[1]), value=value)

    ids = torch.cat([widen(batch[f"{name}_input_ids"], 0) for name in names])
    mask = torch.cat([widen(batch[f"{name}_attention_mask"], 0) for name in names])
    check_window(model, int(batch["prompt_attention_mask"].sum(-1).max()) + int(mask.sum(-1).max()))
    prompt_index = torch.arange(batch_size, device=ids.device).repeat(len(names))
    if settings.pack_length is not None:
        logps, lengths = packed_completion_logps(
            model, batch["prompt_input_ids"], batch["prompt_attention_mask"], ids, mask, prompt_index, settings
        )
    else:
        logps, lengths = completion_logps(
            model,
            batch["prompt_input_ids"],
            batch["prompt_attention_mask"],
            ids,
            mask,
            prompt_index,
            settings.share_prompt,
            settings.tracer,
        )
    out: dict[str, Tensor] = {}
    for k, name in enumerate(names):
        part = slice(k * batch_size, (k + 1) * batch_size)
        out[f"{name}_logps"] = logps[part]
        if not name.startswith("kl_"):
            out[f"{name}_lengths"] = lengths[part]
    return out
