"""The log-probability of a completion given its prompt: the one function training, scoring and evaluation use.

``s(y) = sum_t log pi(y_t | x, y_<t)`` over the completion tokens only (the prompt is never scored), summed
in float32 (float64 for a float64 model) whatever the model's dtype.

Two equivalent ways to run the model (tested against each other):

* ``share_prompt=True`` (default): the prompt batch runs once, its key/value cache is duplicated for the
  completions that follow it (chosen, rejected, and KTO's mismatched ones), and only completion tokens run
  after it. For a pair this costs ``|x| + |y_w| + |y_l|`` tokens instead of ``2|x| + |y_w| + |y_l|``.
* ``share_prompt=False``: each completion runs with its own copy of the prompt (TRL's concatenated batch).

In both, logits are computed only at the positions that predict completion tokens (``logits_to_keep``), not
over the prompt, which saves the vocabulary projection on every prompt token. A third way, padding-free packing
(:func:`packed_completion_logps`), runs every ``prompt + completion`` sequence without any padding.
"""

from __future__ import annotations

import torch
from torch import Tensor


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
) -> Tensor:
    """Logits ``(N, C, V)`` whose position ``t`` predicts completion token ``t``.

    Args:
        model: a Hugging Face causal LM (or a peft wrapper of one).
        prompt_input_ids, prompt_attention_mask: ``(B, P)``, left-padded.
        completion_input_ids, completion_attention_mask: ``(N, C)``, right-padded.
        prompt_index: ``(N,)`` row of the prompt each completion follows; default ``arange(N)`` (``N == B``).
        share_prompt: run each prompt once and reuse its cache (see module docstring).
    """
    n_completions, length = completion_input_ids.shape
    if prompt_index is None:
        prompt_index = torch.arange(n_completions, device=completion_input_ids.device)
    # the last completion token is never an input: nothing after it is scored
    inputs = completion_input_ids[:, :-1]
    if share_prompt:
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
    pack_length: int = 1024,
) -> tuple[Tensor, Tensor]:
    """:func:`completion_logps` with padding-free packing: no pad token is ever run through the model.

    Each completion becomes one sequence ``prompt + completion``; the sequences are packed greedily, in order,
    into rows of at most ``pack_length`` tokens (longer sequences get a row of their own) with position ids
    restarting at 0 for every sequence, which makes transformers build block-diagonal causal masks (packed
    sequence format; requires no attention mask and no cache). The decoder runs on the packed rows and the
    vocabulary projection only on the positions that predict completion tokens.
    """
    n_completions = completion_input_ids.shape[0]
    device = completion_input_ids.device
    if prompt_index is None:
        prompt_index = torch.arange(n_completions, device=device)
    prompts = [ids[mask.bool()] for ids, mask in zip(prompt_input_ids, prompt_attention_mask)]
    completions = [ids[mask.bool()] for ids, mask in zip(completion_input_ids, completion_attention_mask)]
    sequences = [torch.cat([prompts[int(p)], c]) for p, c in zip(prompt_index, completions)]
    rows: list[list[int]] = []  # sequence numbers per packed row
    lengths: list[int] = []
    for number, sequence in enumerate(sequences):
        if rows and lengths[-1] + len(sequence) <= pack_length:
            rows[-1].append(number)
            lengths[-1] += len(sequence)
        else:
            rows.append([number])
            lengths.append(len(sequence))
    width = max(lengths)
    pad_id = int(prompt_input_ids[0, 0]) if prompt_input_ids.numel() else 0
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    gather_rows, gather_positions, targets, owner = [], [], [], []
    for row, numbers in enumerate(rows):
        offset = 0
        for number in numbers:
            sequence = sequences[number]
            size, prompt_size = len(sequence), len(prompts[int(prompt_index[number])])
            input_ids[row, offset : offset + size] = sequence
            position_ids[row, offset : offset + size] = torch.arange(size, device=device)
            predicting = torch.arange(offset + prompt_size - 1, offset + size - 1, device=device)
            gather_rows.append(torch.full_like(predicting, row))
            gather_positions.append(predicting)
            targets.append(sequence[prompt_size:])
            owner.append(torch.full_like(predicting, number))
            offset += size
        # the tail of a row is one more "sequence" of padding, with its own positions, attended by nothing real
        position_ids[row, offset:] = torch.arange(width - offset, device=device)
    hidden = model.get_decoder()(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
    selected = hidden[torch.cat(gather_rows), torch.cat(gather_positions)]
    logits = model.get_output_embeddings()(selected)
    per_token = token_logps(logits, torch.cat(targets))
    owners = torch.cat(owner)
    sums = torch.zeros(n_completions, dtype=per_token.dtype, device=device).index_add(0, owners, per_token)
    counts = completion_attention_mask.sum(-1).to(per_token.dtype)
    return sums, counts


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
    )
    per_token = token_logps(logits, completion_input_ids)
    mask = completion_attention_mask.to(per_token.dtype)
    per_token = per_token * mask
    return per_token.sum(-1), mask.sum(-1)


def pair_logps(
    model: torch.nn.Module,
    batch: dict[str, Tensor],
    share_prompt: bool = True,
    mismatched: bool = False,
    pack_length: int | None = None,
) -> dict[str, Tensor]:
    """Log-probs of every completion of a pair batch in one pass over the model.

    Chosen, rejected (and, with ``mismatched``, KTO's mismatched completions) are stacked into one completion
    batch behind the shared prompts; with ``pack_length`` they are packed without padding instead
    (:func:`packed_completion_logps`).

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
    prompt_index = torch.arange(batch_size, device=ids.device).repeat(len(names))
    if pack_length:
        logps, lengths = packed_completion_logps(
            model, batch["prompt_input_ids"], batch["prompt_attention_mask"], ids, mask, prompt_index, pack_length
        )
    else:
        logps, lengths = completion_logps(
            model, batch["prompt_input_ids"], batch["prompt_attention_mask"], ids, mask, prompt_index, share_prompt
        )
    out: dict[str, Tensor] = {}
    for k, name in enumerate(names):
        part = slice(k * batch_size, (k + 1) * batch_size)
        out[f"{name}_logps"] = logps[part]
        if not name.startswith("kl_"):
            out[f"{name}_lengths"] = lengths[part]
    return out
