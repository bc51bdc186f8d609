"""Batch orders for training that can be resumed mid-epoch.

A training epoch's order is a pure function of ``(seed, epoch)``, and :class:`ResumableLoader` counts the batches
it has handed out in the current epoch. Lightning saves that position with every checkpoint (the ``state_dict`` /
``load_state_dict`` protocol of resumable loaders) and gives it back before the first batch of a resumed run, so
a run resumed mid-epoch sees exactly the batches the interrupted run had not trained on, in the same order, and
ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from prefalign.data.tokenization import TokenizedPair


class _EpochForward:
    """``set_epoch`` forwarded to a :class:`ResumableBatchSampler` (its :attr:`~ResumableBatchSampler.sampler`)."""

    def __init__(self, owner: ResumableBatchSampler) -> None:
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)


class ResumableBatchSampler(Sampler[list[int]]):
    """Shuffled batches, reseeded every epoch from ``seed + epoch``, that can start part-way into an epoch.

    Subclasses say how one epoch's batches are made (:meth:`epoch_batches`); this class skips the batches a
    resumed run had already trained on (:meth:`resume_at`).

    With several processes (DDP, FSDP), every rank draws the same global batches of ``batch_size * world_size``
    items, as one process with that batch size would, and takes its own contiguous part of each; so the
    gradient averaged over the ranks is the one of the global batch, and a run on ``W`` devices with per-device
    batch ``B`` follows a one-process run with batch ``W * B``. A last global batch too small to give every rank
    ``B`` items is split as evenly as possible (the average over ranks is then of unequal parts, a small
    departure from the one-process run), and a rank it leaves empty repeats the batch's first item.

    Args:
        size: the number of items.
        batch_size: items per batch and per rank (the last batch may be smaller).
        seed: the shuffle seed.
        rank, world_size: this process's part of each global batch.
    """

    def __init__(self, size: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not one of world size {world_size}")
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, batches already trained on)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration draws; Lightning calls this before each epoch (through
        :attr:`sampler`)."""
        self.epoch = epoch

    @property
    def sampler(self) -> _EpochForward:
        """What Lightning's ``_set_sampler_epoch`` calls ``set_epoch`` on before every epoch: it reaches a loader's
        ``sampler`` and its ``batch_sampler.sampler``, never a batch sampler itself. Without this the epoch stayed
        0, so every epoch repeated the first one's order, and a run resumed from a checkpoint taken at an epoch's
        last batch found that epoch's position (its end) in the next epoch and trained nothing in it."""
        return _EpochForward(self)

    def resume_at(self, epoch: int, position: int) -> None:
        """Start epoch ``epoch`` at its batch ``position`` (the next iteration of that epoch only)."""
        if not 0 <= position <= len(self):
            raise ValueError(f"cannot resume at batch {position} of an epoch of {len(self)} batches")
        self._resume = (epoch, position)

    def start(self) -> int:
        """The batch the next iteration starts at (0 unless resuming in this epoch)."""
        if self._resume is not None and self._resume[0] == self.epoch:
            return self._resume[1]
        return 0

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def __len__(self) -> int:
        return (self.size + self.global_batch_size - 1) // self.global_batch_size

    def epoch_batches(self, generator: torch.Generator) -> list[list[int]]:
        """All global batches of one epoch (``global_batch_size`` items each), in order, drawn with ``generator``."""
        raise NotImplementedError

    def rank_part(self, batch: list[int]) -> list[int]:
        """This rank's contiguous part of a global batch."""
        if self.world_size == 1:
            return batch
        share = -(-len(batch) // self.world_size)  # ceil: the first ranks take the larger parts
        part = batch[self.rank * share : (self.rank + 1) * share]
        return part or batch[:1]

    def __iter__(self) -> Iterator[list[int]]:
        start = self.start()
        self._resume = None
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        for batch in self.epoch_batches(generator)[start:]:
            yield self.rank_part(batch)


class RandomBatchSampler(ResumableBatchSampler):
    """Batches of a random permutation (``data.group_by_length=false``)."""

    def epoch_batches(self, generator: torch.Generator) -> list[list[int]]:
        order = torch.randperm(self.size, generator=generator).tolist()
        size = self.global_batch_size
        return [order[i : i + size] for i in range(0, self.size, size)]


class LengthGroupedBatchSampler(ResumableBatchSampler):
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

    def __init__(
        self,
        items: list[TokenizedPair],
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        group_batches: int = 16,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__(len(items), batch_size, seed, rank, world_size)
        self.keys = [(max(len(i.chosen_ids), len(i.rejected_ids)), len(i.prompt_ids)) for i in items]
        self.shuffle = shuffle
        self.group_batches = group_batches

    def epoch_batches(self, generator: torch.Generator) -> list[list[int]]:
        by_length = lambda index: self.keys[index]  # noqa: E731
        size = self.global_batch_size
        if not self.shuffle:
            order = sorted(range(self.size), key=by_length)
            return [order[i : i + size] for i in range(0, self.size, size)]
        order = torch.randperm(self.size, generator=generator).tolist()
        group = size * self.group_batches
        batches = []
        for start in range(0, len(order), group):
            chunk = sorted(order[start : start + group], key=by_length)
            batches.extend(chunk[i : i + size] for i in range(0, len(chunk), size))
        return [batches[index] for index in torch.randperm(len(batches), generator=generator).tolist()]


class OrderedBatchSampler(ResumableBatchSampler):
    """Batches of one fixed order, the same every epoch: a curriculum (``data.order_by``, easy to hard).

    Nothing is shuffled and lengths are not grouped: the global batches are consecutive runs of ``order``, so a
    resumed run and the ranks of a multi-device run see them exactly as with the other samplers.

    Args:
        order: the item positions in training order (each item once).
        batch_size: items per batch and per rank (the last batch may be smaller).
        rank, world_size: this process's part of each global batch.
        seed: recorded in checkpoints only (the order does not depend on it).
    """

    def __init__(self, order: list[int], batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        super().__init__(len(order), batch_size, seed, rank, world_size)
        self.order = list(order)

    def epoch_batches(self, generator: torch.Generator) -> list[list[int]]:
        size = self.global_batch_size
        return [self.order[i : i + size] for i in range(0, self.size, size)]


class ResumableLoader(DataLoader):
    """A ``DataLoader`` over a :class:`ResumableBatchSampler` whose position in the epoch is saved in checkpoints.

    ``position`` counts the batches of the current epoch handed out so far (those a resumed run skips). It is
    counted here, where batches leave the loader, not in the sampler, which data-loader workers run ahead of.
    """

    def __init__(self, dataset: Any, batch_sampler: ResumableBatchSampler, **kwargs: Any) -> None:
        super().__init__(dataset, batch_sampler=batch_sampler, **kwargs)
        self.position = 0

    def __iter__(self) -> Iterator[Any]:
        # a generator: nothing runs until the first batch is asked for, after Lightning's set_epoch and restore
        self.position = self.batch_sampler.start()
        for batch in super().__iter__():
            self.position += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        sampler = self.batch_sampler
        return {"epoch": sampler.epoch, "position": self.position, "batches": len(sampler), "seed": sampler.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at the saved position; a checkpoint of another data order is refused.

        Raises:
            ValueError: the checkpoint's epoch had another number of batches or another seed (other data, batch
                size, selection or seed than the run being resumed).
        """
        sampler = self.batch_sampler
        if state["batches"] != len(sampler) or state["seed"] != sampler.seed:
            raise ValueError(
                f"the checkpoint was saved by a run with {state['batches']} training batches per epoch and seed "
                f"{state['seed']}; this run has {len(sampler)} and seed {sampler.seed}. Resume with the settings of "
                "the interrupted run (data, batch size, selection, seed)"
            )
        sampler.resume_at(state["epoch"], state["position"])
        self.position = state["position"]
