"""What restricts or re-weights the pairs of a run: one frozen object, read from the ``data`` config in one place.

:class:`PairRestrictions` gathers the ``data`` options that do not say where the pairs come from or how they are
tokenised and batched, but which of them a run trains on, how much each counts, in what order, and with what label
noise:

* ``selection``: a ``selection.json`` (or a folder holding one) written by ``select.py``: train on its kept pairs;
* ``weights``: ``<scores.parquet>:<column>``: per-pair weights of the training loss;
* ``order_by`` and ``order``: a curriculum, the training batches in the order of a score;
* ``flip_fraction``, ``val_flip_fraction`` and ``flip_seed``: label noise added at load time
  (:mod:`prefalign.data.noise`).

The first three are *choices* among the pairs a run loads, made on scores of those very pairs (:data:`CHOICES`);
the flips change the pairs themselves. :meth:`PairRestrictions.from_config` is the one reader of these options, the
data module (:class:`~prefalign.data.datamodule.PreferenceDataModule`) applies them, and ``PairRestrictions()``
(:data:`NO_RESTRICTIONS`) is the one way to say none. A stage that derives a run from another run's config says
what it keeps (:meth:`PairRestrictions.without_choices`, say) and writes that back into the derived config with
:meth:`PairRestrictions.config_changes`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prefalign.data.noise import check_fraction

# data.order: which end of the data.order_by score comes first (is "easy")
ORDERS = ("ascending", "descending")
# the restrictions that choose among the loaded pairs (they name pairs of one data set); flips change the pairs
CHOICES = ("selection", "weights", "order_by")


@dataclass(frozen=True)
class PairRestrictions:
    """Which of the loaded pairs a run trains on, with what weight, in what order, with what load-time label noise.

    Each attribute is the ``data.<attribute>`` option of the configs (``conf/data/*.yaml``).

    Attributes:
        selection: a ``selection.json`` (or a folder holding one) written by ``select.py``: train on its kept pairs
            only, checked against the loaded pairs by content
            (:func:`~prefalign.data.datamodule.read_selection`); the validation pairs are never restricted.
        weights: ``<scores.parquet>:<column>``: per-pair weights of the training loss
            (:func:`~prefalign.data.datamodule.read_weights`); every training pair needs one, and the validation
            metrics stay unweighted.
        order_by: ``<scores.parquet>:<column>``: a curriculum (SelectiveDPO, Curri-DPO): the training batches come
            in the order of this score, the same every epoch, instead of shuffled and length-grouped
            (:class:`~prefalign.data.sampling.OrderedBatchSampler`); under a selection only the kept pairs are
            ordered.
        order: ``ascending`` or ``descending``: which end of the ``order_by`` score comes first, i.e. is easy (a
            large reward margin is easy: ``descending``; a large loss is hard: ``ascending``). Equal scores keep
            the order of the pairs in the file.
        flip_fraction, val_flip_fraction: label noise added at load time, after ``max_*_pairs``: that fraction of
            the split's unflipped pairs get chosen and rejected swapped and are marked in their metadata.
        flip_seed: the seed of the flips (the validation split draws with ``flip_seed + 1``).

    Raises:
        ValueError: a flip fraction outside [0, 1), an ``order`` other than ascending or descending, or a
            ``flip_seed`` that is not a whole number (each named by its config key).
    """

    selection: str | None = None
    weights: str | None = None
    order_by: str | None = None
    order: str = "ascending"
    flip_fraction: float = 0.0
    val_flip_fraction: float = 0.0
    flip_seed: int = 0

    def __post_init__(self) -> None:
        check_fraction("data.flip_fraction", self.flip_fraction)
        check_fraction("data.val_flip_fraction", self.val_flip_fraction)
        if self.order not in ORDERS:
            raise ValueError(
                f"data.order={self.order!r}: expected {' or '.join(ORDERS)} (which end of data.order_by is easy)"
            )
        if isinstance(self.flip_seed, bool) or not isinstance(self.flip_seed, int):
            raise ValueError(f"data.flip_seed must be a whole number, got {self.flip_seed!r}")

    @classmethod
    def from_config(cls, data: Mapping[str, Any]) -> PairRestrictions:
        """The restrictions a ``data`` config node sets; options it lacks (an older run's config) take the defaults."""
        return cls(**{field.name: data[field.name] for field in dataclasses.fields(cls) if field.name in data})

    def flips(self, split: str) -> float:
        """The fraction of ``split``'s pairs flipped at load (``train`` or ``val``)."""
        return float(self.flip_fraction if split == "train" else self.val_flip_fraction)

    @property
    def choices(self) -> dict[str, str]:
        """The choices among the pairs that are set (:data:`CHOICES`), by option: ``{}`` when none is."""
        return {name: getattr(self, name) for name in CHOICES if getattr(self, name)}

    def without_choices(self) -> PairRestrictions:
        """All the loaded pairs, unweighted and shuffled; the same pairs (the load-time flips stay)."""
        return dataclasses.replace(self, **dict.fromkeys(CHOICES))

    def config_changes(self) -> dict[str, Any]:
        """These restrictions as dotted changes of a run config (``data.<option>``), every option included."""
        return {f"data.{field.name}": getattr(self, field.name) for field in dataclasses.fields(self)}


# nothing chosen, weighted, ordered or flipped: every pair as the source gives it
NO_RESTRICTIONS = PairRestrictions()
