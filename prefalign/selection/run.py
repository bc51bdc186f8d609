"""``select.py``: apply a selection rule to a scores file, or compare several rules."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from prefalign.atomic import write_json
from prefalign.scoring.base import read_scores
from prefalign.selection.analysis import (
    correlation_table,
    ground_truth,
    markdown_table,
    noise_table,
    overlap_table,
    plot_scores,
)
from prefalign.selection.rules import Selection, SelectionRule

log = logging.getLogger(__name__)


def output_dir(cfg: DictConfig) -> Path:
    folder = Path(cfg.paths.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def run_selection(cfg: DictConfig) -> dict[str, Any]:
    """Apply ``cfg.select`` to ``cfg.scores``; writes ``selection.json``."""
    scores, provenance = read_scores(cfg.scores)
    rule: SelectionRule = instantiate(cfg.select)
    selection = rule.select(scores)
    folder = output_dir(cfg)
    record = {**selection.to_dict(), "scores_file": str(cfg.scores), "scores_provenance": provenance}
    write_json(record, folder / "selection.json")
    log.info("%s kept %d of %d pairs -> %s", selection.rule, len(selection.kept), selection.total, folder / "selection.json")
    return {"kept_fraction": selection.kept_fraction, "kept": len(selection.kept), "path": str(folder / "selection.json")}


def run_analysis(cfg: DictConfig) -> dict[str, Any]:
    """Overlap, correlation and noise tables plus plots for the rules in ``cfg.analysis``."""
    scores, provenance = read_scores(cfg.scores)
    folder = output_dir(cfg)
    analysis = cfg.analysis
    selections: dict[str, Selection] = {}
    skipped: dict[str, str] = {}
    for name in analysis.rules:
        if name not in cfg.rules:
            raise KeyError(f"analysis.rules: no rule '{name}' (available: {sorted(cfg.rules)})")
        node = OmegaConf.create(OmegaConf.to_container(cfg.rules[name], resolve=True))
        if "keep_fraction" in node and analysis.keep_fraction is not None:
            with open_dict(node):
                node.keep_fraction = analysis.keep_fraction
        rule: SelectionRule = instantiate(node)
        missing = [score for score in rule.scores if score not in scores.columns]
        if missing:
            skipped[name] = f"scores {missing} not in the file"
            continue
        selections[name] = rule.select(scores)
    for path in analysis.selections:
        data = json.loads(Path(path).read_text())
        selections[Path(path).parent.name or data["rule"]] = Selection.from_dict(data)

    # the ground truth of the scored pairs only: base rates and "removed" shares are over the scores' universe
    scored = set(scores["pair_id"])
    truth = ground_truth([pair for pair in instantiate(cfg.data.source).load("train") if pair.pair_id in scored])
    overlap = overlap_table(selections)
    overlap.index.name = "selection"
    correlations = correlation_table(scores)
    sections = [f"# Selector analysis\n\nScores: `{cfg.scores}` ({len(scores)} pairs; policy {provenance.get('policy')})"]
    sections.append(
        "## Kept fractions\n\n"
        + markdown_table(
            pd.DataFrame(
                [{"selection": n, "kept": len(s.kept), "kept_fraction": s.kept_fraction} for n, s in selections.items()]
            )
        )
    )
    against = analysis.against
    if against in overlap.index:
        column = overlap[[against]].rename(columns={against: f"overlap with {against}"})
        sections.append(f"## Overlap coefficient with {against}\n\n" + markdown_table(column, index=True))
    sections.append("## Overlap coefficients (all pairs of selections)\n\n" + markdown_table(overlap, index=True))
    sections.append("## Score correlations\n\n" + markdown_table(correlations))
    overlap.to_csv(folder / "overlap.csv")
    correlations.to_csv(folder / "correlations.csv", index=False)
    result: dict[str, Any] = {"selections": {n: s.kept_fraction for n, s in selections.items()}, "skipped": skipped}
    if truth is not None:
        noise = noise_table(selections, truth)
        noise.to_csv(folder / "noise.csv", index=False)
        sections.append(
            "## Noise kept (ground truth from metadata; a random selection keeps the base rate)\n\n"
            + markdown_table(noise)
        )
        result["noise"] = noise.to_dict(orient="records")
    else:
        sections.append("## Noise\n\nThe data carries no `label_flipped` / `ambiguous` metadata: no noise table.")
    if skipped:
        sections.append("## Skipped\n\n" + "\n".join(f"- {name}: {why}" for name, why in skipped.items()))
    plots = plot_scores(scores, folder / "plots", truth, [tuple(pair) for pair in analysis.scatter])
    sections.append("## Plots\n\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in plots))
    (folder / "analysis.md").write_text("\n\n".join(sections) + "\n")
    result["overlap"] = overlap.to_dict()
    result["correlations"] = correlations.to_dict(orient="records")
    write_json(result, folder / "analysis.json")
    log.info("analysis written to %s", folder / "analysis.md")
    return result
