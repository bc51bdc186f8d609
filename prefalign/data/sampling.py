"""Batch orders for training that can be resumed mid-epoch."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from prefalign.data.tokenization import TokenizedPair


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of pairs of similar length, so little compute goes into padding.

    The cost of a batch is set by its longest prompt and its longest completion (prompts and completions are
    padded separately, see :mod:`prefalign.data.collate`), so pairs are ordered by ``(longest completion,
    prompt length)``. For training (``shuffle=True``) the order is random but grouped, as transformers'
    ``group_by_length``: the pairs are shuffled, cut into groups of ``group_batches`` batches, each group is
    sorted by length and split into batches, and the batches are shuffled. Without shuffling the whole split
    is sorted (reference log-probs and scores are put back in data order by index).

    Args:
        items: the tokenised pairs.
        batch_size: pairs per batch.
        shuffle: random (grouped) order, reseeded every epoch from ``seed``.
        seed: the shuffle seed.
        group_batches: batches per sorted group when shuffling.
    """

    def __init__(self, items: list[TokenizedPair], batch_size: int, shuffle: bool, seed: int = 0, group_batches: int = 16) -> None:
        self.keys = [(max(len(i.chosen_ids), len(i.rejected_ids)), len(i.prompt_ids)) for i in items]
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.group_batches = group_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return (len(self.keys) + self.batch_size - 1) // self.batch_size

    def __iter__(self) -> Iterator[list[int]]:
        by_length = lambda index: self.keys[index]  # noqa: E731
        if not self.shuffle:
            order = sorted(range(len(self.keys)), key=by_length)
            yield from (order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size))
            return
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.keys), generator=generator).tolist()
        group = self.batch_size * self.group_batches
        batches = []
        for start in range(0, len(order), group):
            chunk = sorted(order[start : start + group], key=by_length)
            batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        for index in torch.randperm(len(batches), generator=generator).tolist():
            yield batches[index]
