"""``pipeline.scores_from=warmup``: the selection pipeline's influence columns are its warm-up's in-run record."""

import json
from pathlib import Path

import pandas as pd
import pytest

from prefalign.data.scores_file import read_scores
from tests.entry import run_cli
from tests.test_cli import cache_with_tokenizer, check

TINY = ["model=tiny_llama", "data.max_train_pairs=24", "data.batch_size=4", "data.max_val_pairs=8", "optimizer.lr=1e-3",
        "logger=csv"]


def test_the_warm_up_is_the_scoring(tmp_path):
    cache = cache_with_tokenizer(tmp_path / "cache")
    common = [*TINY, "select=tif", "pipeline.scores_from=warmup", f"paths.cache_dir={cache}"]
    # irm is not an influence score: it is scored on the warm-up policy as before, beside the record's column
    check(run_cli("train", *common, "pipeline.extra_scores=[irm]", f"hydra.run.dir={tmp_path / 'run'}"))
    pipeline = json.loads((tmp_path / "run" / "pipeline.json").read_text())
    assert pipeline["score"]["from_inrun_record"] == ["influence"]
    warm = Path(pipeline["warmup"]["dir"])
    record = pd.read_parquet(warm / "inrun" / "scores.parquet").set_index("pair_id")
    scores, provenance = read_scores(tmp_path / "run" / "score")
    assert list(scores.columns) == ["pair_id", "irm", "influence"] and len(scores) == 24
    assert (scores.set_index("pair_id").influence == record.inrun_if_last.loc[scores.pair_id]).all()
    assert provenance["scorers"]["influence"]["column"] == "inrun_if_last"
    assert "inrun/scores.parquet" in (warm / "SHA256SUMS").read_text()  # part of the cached entry's checksums
    assert any("inrun=influence" in line for line in pipeline["commands"])  # the warm-up by hand records it too
    # another summary of the same warm-up: from the cache, no scoring pass at all
    check(run_cli("train", *common, "pipeline.inrun_summary=mean", f"hydra.run.dir={tmp_path / 'mean'}"))
    again = json.loads((tmp_path / "mean" / "pipeline.json").read_text())
    assert again["warmup"] == {"dir": str(warm), "from_cache": True} and again["score"]["from_cache"] is None
    scores, provenance = read_scores(tmp_path / "mean" / "score")
    assert (scores.set_index("pair_id").influence == record.inrun_if_mean.loc[scores.pair_id]).all()
    # a file of the record's columns only still says what it was made on: the analysis finds the data's truth
    assert provenance["config"]["data"]["max_train_pairs"] == 24
    check(run_cli("select", f"scores={tmp_path / 'mean' / 'score'}", "analyze=true", "analysis.rules=[tif,random]",
                  f"hydra.run.dir={tmp_path / 'analysis'}"))
    assert len(pd.read_csv(tmp_path / "analysis" / "detection.csv")) == 2
    # the warm-up of scores_from=scoring has no record: another cache entry
    check(run_cli("train", *TINY, "select=tif", f"paths.cache_dir={cache}", f"hydra.run.dir={tmp_path / 'scored'}"))
    scored = json.loads((tmp_path / "scored" / "pipeline.json").read_text())
    assert scored["warmup"]["dir"] != str(warm) and not (Path(scored["warmup"]["dir"]) / "inrun").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("pipeline.scores_from=later", "pipeline.scores_from must be one of"),
        ("pipeline.inrun_summary=median", "pipeline.inrun_summary must be one of"),
        ("pipeline.warmup_epochs=0", "needs pipeline.warmup_epochs >= 1"),
    ],
)
def test_bad_settings_are_named(override, message, tmp_path):
    cache = cache_with_tokenizer(tmp_path / "cache")
    failed = run_cli("train", *TINY, "select=tif", "pipeline.scores_from=warmup", override, f"paths.cache_dir={cache}",
                     f"hydra.run.dir={tmp_path / 'run'}")
    assert failed.returncode != 0 and message in failed.stderr
