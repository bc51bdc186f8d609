"""Each score names itself in tables and reports: its class's ``label``, recorded in the scores file, read by the
analysis and by the docs' generated table.

The options are read from ``conf/score/``, so a new scorer (one class, one YAML) is covered without editing this file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import matplotlib.figure
import pandas as pd
import pytest

from prefalign.scoring.base import read_scores
from prefalign.scoring.config import build_scorers
from prefalign.selection.analysis import plot_scores, score_labels
from tests.entry import compose_config, run_cli
from tests.test_pipeline import TOKENIZER

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = sorted(path.stem for path in (ROOT / "conf" / "score").glob("*.yaml"))


def docs_hooks():
    """``docs/hooks.py`` (the site's table generators) as a module."""
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def score_config(tmp_path_factory):
    folder = tmp_path_factory.mktemp("labels")
    return lambda *overrides: compose_config(
        "score", f"paths.output_dir={folder}", f"paths.cache_dir={folder / 'cache'}", *overrides
    )


@pytest.fixture(scope="module")
def score_table() -> str:
    return docs_hooks().GENERATORS["scores"]()


@pytest.mark.parametrize("option", OPTIONS)
def test_every_score_has_its_own_label_and_the_docs_table_shows_it(option, score_config, score_table) -> None:
    (scorer,) = build_scorers(score_config(), [option])
    label = scorer.display_label()
    # the class's own name, not the column's fallback
    assert label == type(scorer).label and label and label != option
    assert f"| `{option}` | {label} |" in score_table.replace("\\", "")


def test_labels_tell_the_scores_apart(score_config) -> None:
    labels = [scorer.display_label() for scorer in build_scorers(score_config(), OPTIONS)]
    assert len(set(labels)) == len(labels), labels


def test_two_configurations_of_one_class_read_apart(score_config) -> None:
    cfg = score_config("+scorers.armo.option=reward_model", "+scorers.armo.model=RLHFlow/ArmoRM-Llama3-8B-v0.1")
    reward_model, armo = build_scorers(cfg, ["reward_model", "armo"])
    assert (reward_model.display_label(), armo.display_label()) == ("Reward model", "Reward model (armo)")


def test_the_scores_file_records_the_labels_and_the_analysis_names_scores_by_them(tmp_path) -> None:
    scored, analysed = tmp_path / "scored", tmp_path / "analysis"
    result = run_cli(
        "score", "model=tiny_llama", "data.max_train_pairs=8", "data.max_val_pairs=4",
        "scores=[reference_margin,random,per_token]", "+scorers.per_token.option=reference_margin",
        "+scorers.per_token.length_normalize=true",
        f"paths.cache_dir={tmp_path / 'cache'}", TOKENIZER, f"hydra.run.dir={scored}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scores, provenance = read_scores(scored)
    labels = {"reference_margin": "Reference margin", "random": "Random", "per_token": "Reference margin (per_token)"}
    assert score_labels(scores.columns, provenance) == labels
    assert {name: record["label"] for name, record in provenance["scorers"].items()} == labels

    result = run_cli("select", f"scores={scored}", "analyze=true", "analysis.rules=[random]",
                     "analysis.scatter=[[reference_margin,per_token]]", f"hydra.run.dir={analysed}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = (analysed / "analysis.md").read_text().split("## Score correlations", 1)[1].split("##", 1)[0]
    assert "| Reference margin | Random |" in report and "| Reference margin | Reference margin (per_token) |" in report
    # the CSV keeps the column names, which a script reads back
    correlations = pd.read_csv(analysed / "correlations.csv")
    assert set(correlations["score_a"]) | set(correlations["score_b"]) == set(labels)


def test_a_file_that_records_no_label_shows_the_column_and_plots_name_their_axes(tmp_path, monkeypatch) -> None:
    scores = pd.DataFrame({"pair_id": ["a", "b", "c"], "irm": [0.1, 0.5, 0.2], "mine": [1.0, 0.0, 2.0]})
    labels = score_labels(scores.columns, {"scorers": {"irm": {"class": "IRMScorer", "label": "IRM"}, "mine": {}}})
    assert labels == {"irm": "IRM", "mine": "mine"} and score_labels(scores.columns, {}) == {"irm": "irm", "mine": "mine"}
    axes: dict[str, tuple[str, str, str]] = {}
    monkeypatch.setattr(
        matplotlib.figure.Figure, "savefig",
        lambda figure, path, **_: axes.update({Path(path).name: (
            figure.axes[0].get_xlabel(), figure.axes[0].get_ylabel(), figure.axes[0].get_title())}),
    )
    written = plot_scores(scores, tmp_path, None, [("irm", "mine")], labels)
    assert [path.name for path in written] == ["hist_irm.png", "hist_mine.png", "scatter_irm_mine.png"]
    assert axes["hist_irm.png"] == ("IRM", "pairs", "IRM (3 pairs)")
    assert axes["scatter_irm_mine.png"][:2] == ("IRM", "mine")
    assert axes["scatter_irm_mine.png"][2].startswith("IRM vs mine (Spearman")
