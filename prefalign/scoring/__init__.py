"""Per-pair scores: exact influence, LossDiff, IRM, reward-model and annotator margins, IFD, the BeeS implicit
margin, LLM-judge ratings and random scores (:mod:`prefalign.scoring.base` describes the framework)."""
