"""Selection rules over per-pair scores (:mod:`prefalign.selection.rules`)."""

from prefalign.selection.rules import (
    AlignmentPotentialSelection,
    BandSelection,
    BeesSelection,
    FullSelection,
    GroupSelection,
    InvertedSelection,
    LossDiffIRMSelection,
    OracleSelection,
    PZNSelection,
    RandomSelection,
    RankSelection,
    Selection,
    SelectionRule,
)

__all__ = [
    "AlignmentPotentialSelection",
    "BandSelection",
    "BeesSelection",
    "FullSelection",
    "GroupSelection",
    "InvertedSelection",
    "LossDiffIRMSelection",
    "OracleSelection",
    "PZNSelection",
    "RandomSelection",
    "RankSelection",
    "Selection",
    "SelectionRule",
]
