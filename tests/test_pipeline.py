"""The selection pipeline end to end with the tiny models: warm-up, scores, selection, training; caching;
score.py and select.py; and every experiment sweep.

Each command runs its entry script's Hydra ``main()`` in this process (:func:`tests.entry.run_cli`), ``-m`` sweeps
included; the pipeline in a new interpreter is tested once, in ``tests/test_stages.py``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from prefalign.data.sources import BuiltinSource
from prefalign.models import default_cache_dir, embedded_tokenizer_dir
from prefalign.scoring.base import read_scores
from tests.entry import run_cli
from tests.test_cli import ROOT, check

SMALL = ["model=tiny_llama", "data.max_train_pairs=40", "data.max_val_pairs=12", "optimizer.lr=1e-3", "logger=csv"]
# the embedded tokenizer from the default cache, for a run with a cache of its own, which would otherwise convert it
# from GGUF again (about 6 s); not for a -m sweep, whose job folders are named by such overrides
TOKENIZER = f"model.cache_dir={default_cache_dir()}"


def cache_with_tokenizer(folder: Path) -> Path:
    """A new cache folder that holds only the embedded tokenizer, copied from the default cache (a verified entry,
    checked again where it is read): the cache of a -m sweep, which cannot take ``TOKENIZER``."""
    converted = embedded_tokenizer_dir()
    shutil.copytree(converted, folder / converted.relative_to(default_cache_dir()))
    return folder


def runs_of(sweep: Path) -> list[dict]:
    runs = sorted((p for p in sweep.iterdir() if (p / "metrics.json").exists()), key=lambda p: int(p.name.split("_")[0]))
    return [json.loads((run / "metrics.json").read_text()) | {"dir": run} for run in runs]


def test_keep_fraction_sweep_warms_up_and_scores_once(tmp_path):
    sweep, cache = tmp_path / "sweep", cache_with_tokenizer(tmp_path / "cache")
    result = run_cli(
        "train", "-m", *SMALL, "select=lossdiff_irm", "select.keep_fraction=0.5,0.64,0.8",
        f"paths.cache_dir={cache}", f"hydra.sweep.dir={sweep}",
    )
    check(result)
    runs = runs_of(sweep)
    assert [r["selection"]["warmup_from_cache"] for r in runs] == [False, True, True]
    assert [r["selection"]["scores_from_cache"] for r in runs] == [False, True, True]
    assert len({r["selection"]["warmup_dir"] for r in runs}) == 1
    for run, target in zip(runs, (0.5, 0.64, 0.8)):
        selection = json.loads((run["dir"] / "select" / "selection.json").read_text())
        assert selection["rule"] == "lossdiff_irm"
        assert target <= selection["kept_fraction"] <= target + 0.06  # 40 pairs: steps of 2.5 %
        assert run["run"]["train_pairs"] == selection["kept_count"] == len(selection["kept"])
        scores, provenance = read_scores(run["dir"])
        assert {"lossdiff", "irm"} <= set(scores.columns) and len(scores) == 40
        assert provenance["scorers"]["lossdiff"]["epochs"] == 1
        # the IRM of the warmed-up policy is not identically zero (theta != pi_ref after warm-up)
        assert scores["irm"].abs().max() > 0
    # one warm-up policy and one scores entry in the cache for the whole sweep
    assert len(list((cache / "warmup").iterdir())) == 1
    assert len(list((cache / "scores").iterdir())) == 1


def test_tif_bees_and_random_pipelines(tmp_path):
    sweep = tmp_path / "sweep"
    check(run_cli("train", "-m", *SMALL, "select=tif,bees,random", "++scorers.bees_implicit.seed_pairs=24",
                  f"hydra.sweep.dir={sweep}"))
    runs = {r["selection"]["rule"]: r for r in runs_of(sweep)}
    assert set(runs) == {"tif", "bees", "random"}
    tif = json.loads((runs["tif"]["dir"] / "select" / "selection.json").read_text())
    assert tif["thresholds"]["score"] == "influence" and 0.5 < tif["kept_fraction"] < 0.9
    bees = json.loads((runs["bees"]["dir"] / "select" / "selection.json").read_text())
    scores, _ = read_scores(runs["bees"]["dir"])
    margins = scores.set_index("pair_id").loc[bees["kept"]]
    assert (margins["annotator"] > 0).all() and (margins["bees_implicit"] > 0).all()  # eligibility
    assert runs["random"]["selection"]["kept_count"] == round(0.64 * 40)
    assert runs["random"]["selection"]["scores"] == []
    for run in runs.values():
        assert (run["dir"] / "policy" / "config.json").exists()


def test_restart_from_reference(tmp_path):
    run = tmp_path / "run"
    check(run_cli("train", *SMALL, "select=irm", "select.keep_fraction=0.5", "pipeline.restart_from=reference",
                  f"hydra.run.dir={run}"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["selection"]["restart_from"] == "reference" and metrics["run"]["train_pairs"] == 20


def test_score_select_and_analysis_scripts(tmp_path):
    scored = tmp_path / "scored"
    result = run_cli("score", "model=tiny_llama", "data.max_train_pairs=40", "data.max_val_pairs=12",
                     "scores=[irm,annotator,random,influence,ifd,ground_truth,logp_gap]", "shard_size=16",
                     f"hydra.run.dir={scored}")
    assert result.returncode == 0, result.stderr[-3000:]
    scores, provenance = read_scores(scored)
    assert list(scores.columns) == ["pair_id", "irm", "annotator", "random", "influence", "ifd", "ground_truth", "logp_gap"]
    assert (scores["logp_gap"] >= 0).all() and scores["logp_gap"].max() > 0
    assert len(scores) == 40 and provenance["data_fingerprint"] and provenance["config"]["data"]["max_train_pairs"] == 40
    summary = json.loads((scored / "scores_summary.json").read_text())
    # the initial model is its own reference: zero up to float32 rounding (batches are padded differently)
    assert abs(summary["statistics"]["irm"]["max"]) < 1e-5 and abs(summary["statistics"]["irm"]["min"]) < 1e-5
    # select.py applies a rule to the file
    selected = tmp_path / "selected"
    result = run_cli("select", f"scores={scored}", "select=topk", "select.score=annotator", "select.keep_fraction=0.25",
                     f"hydra.run.dir={selected}")
    assert result.returncode == 0, result.stderr[-3000:]
    selection = json.loads((selected / "selection.json").read_text())
    top = scores.sort_values("annotator", ascending=False, kind="stable")["pair_id"].head(10)
    assert sorted(selection["kept"]) == sorted(top) and selection["kept_count"] == 10
    # its complement (select.invert), the oracle (the clean pairs by metadata) and M_AP
    for rule, extra in (("topk", ["select.invert=true", "select.score=annotator", "select.keep_fraction=0.25"]),
                        ("oracle", []), ("map", []), ("if_group", ["select.group=large"])):
        result = run_cli("select", f"scores={scored}", f"select={rule}", *extra, f"hydra.run.dir={selected}_{rule}")
        assert result.returncode == 0, result.stderr[-3000:]
    dropped = json.loads((tmp_path / "selected_topk" / "selection.json").read_text())
    assert dropped["rule"] == "topk_dropped" and sorted(dropped["kept"]) == sorted(set(scores["pair_id"]) - set(top))
    oracle = json.loads((tmp_path / "selected_oracle" / "selection.json").read_text())
    truth = {pair.pair_id: pair.metadata for pair in BuiltinSource().load("train")}
    clean = [pid for pid in scores["pair_id"] if not truth[pid]["label_flipped"] and not truth[pid]["ambiguous"]]
    assert oracle["kept"] == clean and oracle["scores"] == ["ground_truth"]
    assert json.loads((tmp_path / "selected_map" / "selection.json").read_text())["kept_count"] == 16  # int(0.4 * 40)
    # the large third of influence: 40 pairs cut 14 + 13 + 13, the last 13 by influence
    large = json.loads((tmp_path / "selected_if_group" / "selection.json").read_text())
    by_influence = scores.sort_values("influence", kind="stable")["pair_id"]
    assert large["rule"] == "influence_large" and sorted(large["kept"]) == sorted(by_influence.tail(13))
    # and the analysis: overlap with TIF, correlations, noise kept, plots
    analysis = tmp_path / "analysis"
    result = run_cli("select", f"scores={scored}", "analyze=true",
                     "analysis.rules=[tif,topk,random,irm,oracle]", "analysis.scatter=[[influence,annotator]]",
                     f"hydra.run.dir={analysis}")
    assert result.returncode == 0, result.stderr[-3000:]
    report = (analysis / "analysis.md").read_text()
    assert "Overlap coefficient with tif" in report and "Noise kept" in report
    noise = pd.read_csv(analysis / "noise.csv").set_index("selection")
    # base rates are over the scored pairs (the first 40), not over the whole data file
    scored = set(scores["pair_id"])
    flipped = [pair.metadata["label_flipped"] for pair in BuiltinSource().load("train") if pair.pair_id in scored]
    assert len(flipped) == 40
    assert noise.loc["random", "label_flipped_base_rate"] == pytest.approx(sum(flipped) / 40)
    assert noise.loc["tif", "label_flipped_base_rate"] == pytest.approx(noise.loc["random", "label_flipped_base_rate"])
    kept = noise.loc["tif", "label_flipped_kept"]
    assert noise.loc["tif", "label_flipped_removed"] == pytest.approx(1 - kept / sum(flipped))
    assert (analysis / "plots" / "scatter_influence_annotator.png").exists()
    overlap = pd.read_csv(analysis / "overlap.csv", index_col=0)
    assert overlap.loc["tif", "tif"] == 1.0 and 0 <= overlap.loc["topk", "tif"] <= 1
    # the oracle at the analysis budget (64% of 40 = 26 pairs) keeps no flipped pair while clean ones remain
    if len(clean) >= 26:
        assert noise.loc["oracle", "label_flipped_kept"] == 0
    # every score as a detector of the flipped pairs: the ground truth's code (2 for a flipped pair, at most 1 for
    # the others) is a perfect one, from its high end
    detection = pd.read_csv(analysis / "detection.csv").set_index(["score", "target"])
    assert set(detection.index.get_level_values("score")) == set(scores.columns) - {"pair_id"}
    assert "Noise detection" in report
    if sum(flipped):
        perfect = detection.loc[("ground_truth", "label_flipped")]
        assert perfect["auroc"] == 1.0 and perfect["auprc"] == 1.0 and perfect["flagging_end"] == "high"
        assert perfect["chance_auprc"] == pytest.approx(sum(flipped) / 40)
        row = detection.loc[("random", "label_flipped")]
        assert row["auroc_low"] <= row["auroc"] <= row["auroc_high"]
        assert (analysis / "plots" / "roc_label_flipped.png").exists()


def test_scoring_resumes_after_an_interruption(tmp_path):
    common = ["model=tiny_llama", "data.max_train_pairs=40", "data.max_val_pairs=8", "scores=[irm,random]", "shard_size=16",
              f"paths.cache_dir={tmp_path / 'cache'}", TOKENIZER]
    first = run_cli("score", *common, f"hydra.run.dir={tmp_path / 'a'}")
    assert first.returncode == 0, first.stderr[-2000:]
    shards = sorted((tmp_path / "cache" / "scores").glob("*/shards/shard-*.parquet"))
    assert len(shards) == 3  # 40 pairs in shards of 16
    complete, _ = read_scores(tmp_path / "a")
    # lose the last shard and the final file, as if the run had been killed while scoring it
    shards[-1].unlink()
    (shards[-1].parent.parent / "scores.parquet").unlink()
    before = {path: path.stat().st_mtime_ns for path in shards[:-1]}
    second = run_cli("score", *common, f"hydra.run.dir={tmp_path / 'b'}")
    assert second.returncode == 0, second.stderr[-2000:]
    assert "resuming, 2 of 3 shards already done" in second.stdout + second.stderr
    assert {path: path.stat().st_mtime_ns for path in shards[:-1]} == before  # finished shards untouched
    resumed, _ = read_scores(tmp_path / "b")
    pd.testing.assert_frame_equal(resumed, complete)


EXPERIMENTS = sorted(path.stem for path in (ROOT / "conf" / "experiment").glob("*.yaml"))


@pytest.fixture(scope="module")
def experiment_cache(tmp_path_factory) -> Path:
    """One cache for every experiment's sweep: a warm-up or a score that another experiment already computed
    (same model, data and settings) is read from it, as a user's cache would serve it."""
    return cache_with_tokenizer(tmp_path_factory.mktemp("experiment-cache"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_runs_on_a_tiny_model(experiment, experiment_cache, tmp_path):
    sweep = tmp_path / "sweep"
    # little data (16 training pairs in two batches, 4 validation pairs); the BeeS proxy of the test bed (one epoch,
    # here on all 16 pairs) for every experiment, so that the shared cache trains it once
    result = run_cli("train", "-m", f"experiment={experiment}", "model=tiny_llama", "data.max_train_pairs=16",
                     "data.max_val_pairs=4", "++scorers.bees_implicit.seed_pairs=16", "++scorers.bees_implicit.epochs=1",
                     "logger=csv", f"hydra.sweep.dir={sweep}", f"paths.cache_dir={experiment_cache}")
    check(result)
    runs = runs_of(sweep)
    assert runs and all((run["dir"] / "policy" / "config.json").exists() for run in runs)


def test_pipeline_seed_fixes_the_stages_before_the_training(tmp_path):
    """pipeline.seed: the warm-up, the scores and the selection (every ${seed} of the rule and its scorers) take
    it; the final training keeps the run's own seed. Null: the run's seed everywhere, the config untouched."""
    from prefalign.stages.pipeline import derive, warmup_config, with_selection_seed
    from tests.entry import compose_config

    common = ["model=tiny_llama", "select=random", f"paths.cache_dir={tmp_path}", f"paths.output_dir={tmp_path / 'run'}"]
    plain = compose_config("train", *common, "seed=3")
    assert with_selection_seed(plain) is plain
    cfg = compose_config("train", *common, "seed=3", "pipeline.seed=7")
    stage = with_selection_seed(cfg)
    assert stage.seed == 7 and derive(stage, {}).select.seed == 7
    assert cfg.seed == 3 and derive(cfg, {}).select.seed == 3  # the run itself is unchanged
    # two training seeds, one pipeline seed: one warm-up
    other = with_selection_seed(compose_config("train", *common, "seed=4", "pipeline.seed=7"))
    assert warmup_config(stage)[1] == warmup_config(other)[1]
    assert warmup_config(stage)[1] != warmup_config(with_selection_seed(plain))[1]
    with pytest.raises(ValueError, match="pipeline.seed must be a whole number"):
        with_selection_seed(compose_config("train", *common, "pipeline.seed=0.5"))
