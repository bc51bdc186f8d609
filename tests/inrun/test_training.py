"""``inrun=influence`` in real training runs: exact at the first step, resumable, and changing no number."""

import json

import pandas as pd
import pytest
import torch

from prefalign.inrun.record import read_records
from prefalign.run_setup import setup_run
from prefalign.scoring.base import ScoringContext
from prefalign.scoring.influence import InfluenceScorer
from tests.entry import compose_config, run_cli
from tests.test_cli import cache_with_tokenizer, check, train

SMALL = [
    "model=tiny_llama",
    "model.dtype=float64",
    "data.max_train_pairs=16",
    "data.batch_size=4",
    "data.max_val_pairs=6",
    "optimizer.lr=1e-3",
    "logger=csv",
]
FAULT = "+callbacks.fault._target_=tests.faults."


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return cache_with_tokenizer(tmp_path_factory.mktemp("cache"))


def scorer_influence(overrides, run, cache) -> dict[str, float]:
    """The ``influence`` scorer's IF of every training pair at the run's initial weights (the JVP; its own ``v``)."""
    cfg = compose_config("train", *overrides, f"paths.cache_dir={cache}", f"paths.output_dir={run}")
    setup = setup_run(cfg, write_files=False)
    model = setup.load_model()
    setup.attach_reference(model)
    context = ScoringContext(model, "initial", setup.loss, setup.datamodule, setup.source, cache, run, setup.logp_settings)
    scorer = InfluenceScorer()
    scorer.prepare(context)
    values = {}
    for batch in setup.datamodule.eval_loader("train"):
        values.update(zip(batch["pair_ids"], scorer.score_batch(context, batch, {}).tolist()))
    return values


@pytest.mark.parametrize(
    "settings",
    [
        ["loss=dpo"],
        ["loss=dpo", "pack_length=null", "trainer.accumulate_grad_batches=2"],
        ["loss=slic", "trainer.accumulate_grad_batches=2"],
        ["loss=ipo", "pack_length=null", "share_prompt=false"],
        ["loss=dpo", "model.lora={r: 4}"],
    ],
    ids=["dpo-packed", "dpo-padded-accumulate2", "slic-packed-accumulate2", "ipo-padded-unshared", "dpo-lora"],
)
def test_the_first_steps_influence_equals_the_scorer_at_the_initial_weights(settings, cache, tmp_path):
    overrides = [*SMALL, *settings]
    run = tmp_path / "run"
    check(run_cli("train", *overrides, "inrun=influence", "trainer.max_steps=1", f"paths.cache_dir={cache}", f"hydra.run.dir={run}"))
    records = read_records(run)
    first = records[records.step == 0]
    accumulate = 2 if "trainer.accumulate_grad_batches=2" in settings else 1
    assert len(first) == 4 * accumulate and (first.refresh == 0).all()
    expected = scorer_influence(overrides, tmp_path / "scorer", cache)
    for pair_id, value in zip(first.pair_id, first.influence):
        assert abs(value - expected[pair_id]) <= 1e-6 * abs(expected[pair_id]), (pair_id, value, expected[pair_id])
    assert max(abs(v) for v in first.influence) > 0


def test_the_record_summaries_and_refreshes(cache, tmp_path):
    run = tmp_path / "run"
    check(run_cli("train", *SMALL, "inrun=influence", "trainer.max_epochs=2", "inrun.refresh_every_n_steps=3",
                  "inrun.val_pairs=4", f"paths.cache_dir={cache}", f"hydra.run.dir={run}"))
    records = read_records(run)
    assert len(records) == 32 and sorted(records.step.unique()) == list(range(8))
    refreshes = json.loads((run / "inrun" / "refreshes.json").read_text())
    # step 0, step 3, step 4 (the second epoch's first step), step 7
    assert [entry["step"] for entry in refreshes] == [0, 3, 4, 7] and all(e["val_pairs"] == 4 for e in refreshes)
    assert list(records.groupby("step").refresh.first()) == [0, 0, 0, 1, 2, 2, 2, 3]
    scores = pd.read_parquet(run / "inrun" / "scores.parquet").set_index("pair_id")
    assert len(scores) == 16
    pair = records.pair_id.iloc[0]
    visits = records[records.pair_id == pair].sort_values("step")
    assert len(visits) == 2
    assert scores.loc[pair, "inrun_if_first"] == visits.influence.iloc[0]
    assert scores.loc[pair, "inrun_if_last"] == visits.influence.iloc[1]
    assert scores.loc[pair, "inrun_if_mean"] == pytest.approx(visits.influence.mean(), rel=1e-12)
    assert scores.loc[pair, "inrun_tracin"] == pytest.approx((visits.lr * visits.influence).sum(), rel=1e-12)
    # an ordinary scores file: a rule reads its columns
    selected = run_cli("select", f"scores={run}/inrun/scores.parquet", "select=tif", "select.score=inrun_if_mean",
                       f"hydra.run.dir={tmp_path / 'select'}")
    check(selected)
    assert json.loads((tmp_path / "select" / "selection.json").read_text())["kept"]


def test_the_record_changes_no_number_of_the_training(cache, tmp_path):
    common = [*SMALL, "trainer.max_epochs=2", f"paths.cache_dir={cache}"]
    check(run_cli("train", *common, f"hydra.run.dir={tmp_path / 'plain'}"))
    check(run_cli("train", *common, "inrun=influence", "inrun.refresh_every_n_steps=2", f"hydra.run.dir={tmp_path / 'inrun'}"))
    plain, traced = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("plain", "inrun"))
    for key, value in plain.items():
        if "/" in key:
            assert traced[key] == value, key  # exactly


RESUMED = [*SMALL, "inrun=influence", "trainer.max_epochs=2", "inrun.refresh_every_n_steps=3"]


@pytest.fixture(scope="module")
def whole(cache, tmp_path_factory):
    """The uninterrupted run the killed-and-resumed ones must equal (one for both signals)."""
    folder = tmp_path_factory.mktemp("whole")
    check(run_cli("train", *RESUMED, f"paths.cache_dir={cache}", f"hydra.run.dir={folder}"))
    return folder


@pytest.mark.parametrize("kill", ["SIGINT", "SIGKILL"])
def test_a_killed_run_resumes_to_the_same_record(kill, cache, whole, tmp_path):
    common = [*RESUMED, f"paths.cache_dir={cache}"]
    run = tmp_path / "run"
    resumed = [*common, f"hydra.run.dir={run}", "callbacks.checkpoint.every_n_train_steps=2"]
    # SIGINT: a checkpoint at the signal (step 5); SIGKILL: none, the run resumes from its step-6 checkpoint and
    # the shards flushed with it (a step of 4 pairs each, 4 steps an epoch: both in the middle of the second epoch)
    fault = [f"{FAULT}SignalAtStep", f"+callbacks.fault.step={7 if kill == 'SIGKILL' else 5}", f"+callbacks.fault.signum={kill}"]
    stopped = train(*resumed, *fault) if kill == "SIGKILL" else run_cli("train", *resumed, *fault)
    assert stopped.returncode == (-9 if kill == "SIGKILL" else 130), stopped.stderr[-3000:]
    saved = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == (6 if kill == "SIGKILL" else 5)
    check(run_cli("train", *resumed, "ckpt_path=last"))
    pd.testing.assert_frame_equal(read_records(run), read_records(whole), check_exact=False, rtol=1e-12)
    assert json.loads((run / "inrun" / "refreshes.json").read_text())[-1]["step"] == 7


def test_two_processes_record_what_one_process_records(cache, tmp_path):
    """DDP on two CPU processes (gloo), each half of the same global batch: every pair gets the IF it gets in one
    process; v is computed data-parallel and summed over the ranks."""
    common = [item for item in SMALL if not item.startswith("data.batch_size")] + ["inrun=influence", "trainer.max_steps=2",
                                                                                  f"paths.cache_dir={cache}"]
    one, two = tmp_path / "one", tmp_path / "two"
    check(run_cli("train", *common, "data.batch_size=8", f"hydra.run.dir={one}"))
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=4"]
    check(train(*common, *ddp, f"hydra.run.dir={two}"))
    assert sorted(path.name for path in (two / "inrun" / "records").iterdir()) == ["rank-00", "rank-01"]
    single, ranks = read_records(one), read_records(two)
    assert len(single) == len(ranks) == 16
    merged = single.merge(ranks, on=["step", "pair_id"], suffixes=("", "_ddp"))
    assert len(merged) == 16  # the same pairs at the same steps
    relative = ((merged.influence - merged.influence_ddp).abs() / merged.influence.abs()).max()
    assert relative < 1e-6, merged[["step", "pair_id", "influence", "influence_ddp"]]
    assert len(pd.read_parquet(two / "inrun" / "scores.parquet")) == 16
