"""Selection rules over per-pair scores (:mod:`prefalign.selection.rules`)."""

from prefalign.selection.rules import (
    BandSelection,
    BeesSelection,
    FullSelection,
    LossDiffIRMSelection,
    PZNSelection,
    RandomSelection,
    RankSelection,
    Selection,
    SelectionRule,
)

__all__ = [
    "BandSelection",
    "BeesSelection",
    "FullSelection",
    "LossDiffIRMSelection",
    "PZNSelection",
    "RandomSelection",
    "RankSelection",
    "Selection",
    "SelectionRule",
]
