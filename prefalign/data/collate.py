"""Batching tokenised pairs: prompts left-padded, completions right-padded.

With prompts left-padded to a common length ``P``, every prompt ends at column ``P - 1`` and every completion
starts at column ``P``. This lets :func:`prefalign.logprobs.completion_logps` run the shared prompt once and
both completions after it (prefix sharing), and compute logits only at completion positions.
"""

from __future__ import annotations

from typing import Any

import torch

COMPLETIONS = ("chosen", "rejected", "kl_chosen", "kl_rejected")


def pad(sequences: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token-id lists into ``(ids, attention_mask)`` tensors of shape ``(batch, longest)``."""
    longest = max(len(ids) for ids in sequences)
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if not sequence:
            continue
        span = slice(longest - len(sequence), longest) if left else slice(0, len(sequence))
        ids[row, span] = torch.tensor(sequence, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask


def collate_pairs(items: list[dict[str, Any]], pad_id: int) -> dict[str, Any]:
    """Collate :class:`~prefalign.data.datamodule.PairDataset` items into one batch.

    Keys: ``pair_ids`` (list), ``index`` ``(B,)``, ``prompt_input_ids`` / ``prompt_attention_mask`` ``(B, P)``
    left-padded, ``{chosen,rejected}_input_ids`` / ``..._attention_mask`` ``(B, C)`` right-padded, the same for
    ``kl_chosen`` / ``kl_rejected`` when present, and, when the data has them, ``reference`` (the pairs' reference
    log-probs in the losses' format, :data:`prefalign.losses.Logps`: ``{"chosen_logps": (B,), "rejected_logps":
    (B,)}``, with ``kl_*_logps`` when mismatched) and the per-pair loss ``weights`` ``(B,)``.
    """
    batch: dict[str, Any] = {
        "pair_ids": [item["pair_id"] for item in items],
        "index": torch.tensor([item["index"] for item in items], dtype=torch.long),
    }
    batch["prompt_input_ids"], batch["prompt_attention_mask"] = pad([i["prompt_ids"] for i in items], pad_id, True)
    for name in COMPLETIONS:
        if f"{name}_ids" in items[0]:
            ids, mask = pad([item[f"{name}_ids"] for item in items], pad_id, left=False)
            batch[f"{name}_input_ids"], batch[f"{name}_attention_mask"] = ids, mask
    if "weight" in items[0]:
        batch["weights"] = torch.stack([torch.as_tensor(item["weight"]) for item in items])
    if "reference" in items[0]:
        batch["reference"] = {
            name: torch.stack([torch.as_tensor(item["reference"][name]) for item in items]) for name in items[0]["reference"]
        }
    return batch
