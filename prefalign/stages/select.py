"""The selection stage, ``select.py``: apply a selection rule to a scores file, or compare several rules.

Input: ``scores`` (a ``scores.parquet`` or a folder holding one); the data, model and policy are the ones its
provenance records, never this config's defaults. Outputs, in the stage's directory: ``selection.json`` (the
kept pair ids, the rule, its resolved thresholds, the score columns it read and the data fingerprint that
``train.py data.selection=...`` checks), or with ``analyze=true`` ``analysis.md``, ``analysis.json``,
``overlap.csv``, ``correlations.csv``, ``noise.csv``, ``detection.csv`` (the scores as noise detectors: AUROC, AUPRC)
and ``plots/`` (ROC curves among them).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from prefalign.atomic import write_json
from prefalign.folder_lock import hold_folder
from prefalign.safe_config import checked_config
from prefalign.data.scores_file import read_scores
from prefalign.selection.analysis import (
    correlation_table,
    detection_table,
    ground_truth,
    markdown_table,
    noise_table,
    overlap_table,
    plot_roc,
    plot_scores,
    score_labels,
)
from prefalign.selection.config import rule_config, select_rule
from prefalign.selection.rules import Selection, SelectionRule

log = logging.getLogger(__name__)


def output_dir(cfg: DictConfig) -> Path:
    folder = Path(cfg.paths.output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_selection(
    folder: Path, selection: Selection, rule: SelectionRule, data_fingerprint: str | None, **extra: Any
) -> dict[str, Any]:
    """Write ``<folder>/selection.json``, the file ``train.py data.selection=...`` reads; returns a summary.

    Args:
        folder: the selection stage's directory.
        selection: what the rule kept.
        rule: the rule (its score columns are recorded).
        data_fingerprint: the content fingerprint of the pairs selected from, checked by the training stage.
        extra: more entries of the record (the scores file and its provenance).
    """
    record = {**selection.to_dict(), "scores": rule.scores, "data_fingerprint": data_fingerprint, **extra}
    path = write_json(record, folder / "selection.json")
    log.info("%s kept %d of %d pairs -> %s", selection.rule, len(selection.kept), selection.total, path)
    return {
        "kept_fraction": selection.kept_fraction,
        "kept": len(selection.kept),
        "rule": selection.rule,
        "thresholds": selection.thresholds,
        "path": str(path),
    }


def run_selection(cfg: DictConfig) -> dict[str, Any]:
    """Apply ``cfg.select`` to ``cfg.scores``; writes ``selection.json`` (holding the folder's lock:
    :mod:`prefalign.folder_lock`)."""
    with hold_folder(cfg.paths.output_dir):
        return _run_selection(cfg)


def _run_selection(cfg: DictConfig) -> dict[str, Any]:
    rule = select_rule(cfg.select)
    scores, provenance = read_scores(cfg.scores)
    selection = rule.select(scores)
    if not selection.kept:
        raise ValueError(f"select={selection.rule} kept no pairs of {cfg.scores} (thresholds: {selection.thresholds})")
    folder = output_dir(cfg)
    (folder / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return write_selection(
        folder,
        selection,
        rule,
        provenance.get("data_fingerprint"),
        scores_file=str(cfg.scores),
        scores_provenance={key: value for key, value in provenance.items() if key != "timings_s"},
    )


def analysis_rule(name: str, seed: int, keep_fraction: float | None) -> SelectionRule:
    """The rule of ``conf/select/<name>.yaml`` with the run's ``seed`` and, where it takes one, ``keep_fraction``
    (when not ``None``), as an analysis compares rules at one budget."""
    node = rule_config(name)
    if "seed" in node:
        node.seed = seed
    if "keep_fraction" in node and keep_fraction is not None:
        node.keep_fraction = keep_fraction
    return select_rule(node)


def analysis_data(provenance: dict[str, Any], scores_file: Any) -> list[Any]:
    """The training pairs the scores were computed on, loaded from the data config their provenance records.

    Raises:
        prefalign.safe_config.UnsafeConfigError: that config names a ``_target_`` prefalign's config groups do not.
    """
    data = (provenance.get("config") or {}).get("data")
    if not data or "source" not in data:
        raise ValueError(
            f"{scores_file}: the scores file records no data config (written by an older prefalign?); score again"
        )
    from prefalign.data.datamodule import data_split_pairs
    from prefalign.data.scores_file import scores_path

    # the recorded config is data, never code: its data source is built only if conf/ names its target
    checked = checked_config({"data": data}, f"{scores_path(scores_file)} (provenance config)", keys=["data"])
    # the pairs as the scored run loaded them (limit and load-time flips), so that added noise is in the truth
    return data_split_pairs(checked.data, "train")


def run_analysis(cfg: DictConfig) -> dict[str, Any]:
    """Overlap, correlation and noise tables plus plots for the rules in ``cfg.analysis`` (holding the folder's
    lock: :mod:`prefalign.folder_lock`)."""
    with hold_folder(cfg.paths.output_dir):
        return _run_analysis(cfg)


def _run_analysis(cfg: DictConfig) -> dict[str, Any]:
    scores, provenance = read_scores(cfg.scores)
    folder = output_dir(cfg)
    analysis = cfg.analysis
    selections: dict[str, Selection] = {}
    skipped: dict[str, str] = {}
    for name in analysis.rules:
        rule = analysis_rule(name, int(cfg.seed), analysis.keep_fraction)
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
    truth = ground_truth([pair for pair in analysis_data(provenance, cfg.scores) if pair.pair_id in scored])
    overlap = overlap_table(selections)
    overlap.index.name = "selection"
    correlations = correlation_table(scores)
    labels = score_labels(scores.columns, provenance)  # each score by its scorer's label in the report and plots
    sections = [f"# Selector analysis\n\nScores: `{cfg.scores}` ({len(scores)} pairs; policy {provenance.get('policy') or 'the initial model'}, {provenance.get('model')})"]
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
    named = correlations.replace({"score_a": labels, "score_b": labels})
    sections.append("## Score correlations\n\n" + markdown_table(named))
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
        detection = detection_table(scores, truth, seed=int(cfg.seed))
        detection.to_csv(folder / "detection.csv", index=False)
        sections.append(
            "## Noise detection (threshold-free; 95% bootstrap intervals over pairs)\n\n"
            "Each score as a detector of the flipped pairs and of the ambiguous pairs (each against all other "
            "pairs): AUROC (0.5 is chance; below 0.5 the score's low end flags them, `flagging_end`) and AUPRC "
            "of that end, against its chance level (the positives' share).\n\n"
            + markdown_table(detection.replace({"score": labels}), digits=3)
        )
        result["detection"] = detection.to_dict(orient="records")
    else:
        sections.append("## Noise\n\nThe data carries no `label_flipped` / `ambiguous` metadata: no noise table.")
    if skipped:
        sections.append("## Skipped\n\n" + "\n".join(f"- {name}: {why}" for name, why in skipped.items()))
    plots = plot_scores(scores, folder / "plots", truth, [tuple(pair) for pair in analysis.scatter], labels)
    if truth is not None:
        plots += plot_roc(scores, truth, folder / "plots", labels)
    sections.append("## Plots\n\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in plots))
    (folder / "analysis.md").write_text("\n\n".join(sections) + "\n")
    result["overlap"] = overlap.to_dict()
    result["correlations"] = correlations.to_dict(orient="records")
    write_json(result, folder / "analysis.json")
    log.info("analysis written to %s", folder / "analysis.md")
    return result
