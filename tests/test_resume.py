"""Training that can really be resumed: killed mid-epoch (SIGINT, SIGKILL after a step checkpoint, an exception),
resumed with ``ckpt_path``, it ends with the metrics of an uninterrupted run; a finished run is left alone; runs
shorter than an epoch end with a validation; an interrupted warm-up of the selection pipeline resumes.

The runs that are signalled or killed from outside (SIGTERM, SIGKILL) run in a process of their own
(:func:`tests.test_cli.train`); the others, and every resume, run ``train.py``'s ``main()`` in this process
(:func:`tests.entry.run_cli`), a SIGINT (Ctrl-C) included."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from prefalign.data.sampling import RandomBatchSampler, ResumableLoader
from tests.entry import run_cli
from tests.test_cli import cache_with_tokenizer, check, train

# 48 pairs in batches of 4: 12 steps, long enough to be stopped in the middle
RUN = [
    "model=tiny_llama",
    "data.max_train_pairs=48",
    "data.batch_size=4",
    "data.max_val_pairs=8",
    "optimizer.lr=1e-3",
    "logger=csv",
]
FAULT = "+callbacks.fault._target_=tests.faults."


def metrics_of(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def assert_same_metrics(first: dict, second: dict) -> None:
    keys = [key for key, value in first.items() if isinstance(value, float)]
    assert any(key.startswith("val/") for key in keys) and "train/loss" in keys
    for key in keys:
        assert abs(first[key] - second[key]) <= 1e-6, (key, first[key], second[key])
    assert first["run"]["global_steps"] == second["run"]["global_steps"]


def saved_step(run: Path) -> int:
    return int(torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["global_step"])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[dict, Path]:
    cache = cache_with_tokenizer(tmp_path_factory.mktemp("cache"))
    run = tmp_path_factory.mktemp("uninterrupted")
    check(run_cli("train", *RUN, f"paths.cache_dir={cache}", f"hydra.run.dir={run}"))
    return metrics_of(run), cache


# SIGTERM as a scheduler sends it, to a run in a process of its own; SIGINT (Ctrl-C) to a run in this process, whose
# handlers take it the same way (the sweep test of test_run_integrity.py sends SIGINT to a process of its own)
@pytest.mark.parametrize(("signum", "code", "start"), [("SIGINT", 130, "in_process"), ("SIGTERM", 143, "new_process")])
def test_a_signal_mid_epoch_saves_and_the_resume_ends_as_an_uninterrupted_run(signum, code, start, uninterrupted, tmp_path):
    expected, cache = uninterrupted
    run = tmp_path / "run"
    common = [*RUN, f"paths.cache_dir={cache}", f"hydra.run.dir={run}"]
    signalled = [*common, f"{FAULT}SignalAtStep", "+callbacks.fault.step=7", f"+callbacks.fault.signum={signum}"]
    stopped = train(*signalled) if start == "new_process" else run_cli("train", *signalled)
    assert stopped.returncode == code, stopped.stderr[-3000:]
    log = stopped.stdout + stopped.stderr
    assert f"{signum} at step 7" in log and "ckpt_path=last" in log  # says where it stopped and how to resume
    assert saved_step(run) == 7 and not (run / "metrics.json").exists()
    check(run_cli("train", *common, "ckpt_path=last"))
    assert_same_metrics(expected, metrics_of(run))


def test_sigkill_after_a_step_checkpoint_resumes_to_the_same_metrics(uninterrupted, tmp_path):
    expected, cache = uninterrupted
    run = tmp_path / "run"
    common = [*RUN, f"paths.cache_dir={cache}", f"hydra.run.dir={run}", "callbacks.checkpoint.every_n_train_steps=5"]
    killed = train(*common, f"{FAULT}SignalAtStep", "+callbacks.fault.step=7", "+callbacks.fault.signum=SIGKILL")
    assert killed.returncode == -9
    assert saved_step(run) == 5  # the step checkpoint; nothing was written at the kill
    check(run_cli("train", *common, f"ckpt_path={run}/checkpoints/last.ckpt"))
    assert_same_metrics(expected, metrics_of(run))


def test_an_exception_mid_batch_saves_a_checkpoint_the_run_resumes_from(uninterrupted, tmp_path):
    expected, cache = uninterrupted
    run = tmp_path / "run"
    common = [*RUN, f"paths.cache_dir={cache}", f"hydra.run.dir={run}"]
    failed = run_cli("train", *common, f"{FAULT}RaiseAtStep", "+callbacks.fault.step=9")
    assert failed.returncode != 0 and "injected fault at step 9" in failed.stderr
    assert saved_step(run) == 9
    check(run_cli("train", *common, "ckpt_path=last"))
    assert_same_metrics(expected, metrics_of(run))  # the failed batch is redone, the logged steps are the same


def test_resuming_a_finished_run_says_so_and_leaves_its_files_alone(uninterrupted, tmp_path):
    _, cache = uninterrupted
    run = tmp_path / "run"
    common = ["model=tiny_llama", "data.max_train_pairs=16", "data.max_val_pairs=8", "logger=csv", f"paths.cache_dir={cache}"]
    check(run_cli("train", *common, f"hydra.run.dir={run}"))
    before = {name: hashlib.sha256((run / name).read_bytes()).hexdigest() for name in ("metrics.json", "config.yaml")}
    again = run_cli("train", *common, f"hydra.run.dir={run}", "ckpt_path=last")
    check(again)
    assert "is complete" in again.stdout + again.stderr
    after = {name: hashlib.sha256((run / name).read_bytes()).hexdigest() for name in before}
    assert after == before
    assert "val/loss" in metrics_of(run)


@pytest.mark.parametrize("length", ["trainer.max_steps=6", "trainer.limit_train_batches=5"])
def test_runs_shorter_than_an_epoch_end_with_a_validation(length, uninterrupted, tmp_path):
    _, cache = uninterrupted
    run = tmp_path / "run"
    check(run_cli("train", *RUN, length, f"paths.cache_dir={cache}", f"hydra.run.dir={run}"))
    metrics = metrics_of(run)
    assert metrics["run"]["global_steps"] == int(length.split("=")[1])
    for key in ("val/loss", "val/rewards/accuracies", "val/rewards/margins"):
        assert key in metrics, key


def test_a_pipeline_killed_during_its_warm_up_resumes_it(tmp_path):
    # 24 pairs in batches of 4: a warm-up of 6 steps, stopped at the fourth
    small = ["model=tiny_llama", "data.max_train_pairs=24", "data.batch_size=4", "data.max_val_pairs=12", "optimizer.lr=1e-3"]
    pipeline = [*small, "logger=csv", "select=irm", "select.keep_fraction=0.5"]
    reference = tmp_path / "reference"
    check(run_cli("train", *pipeline, f"paths.cache_dir={cache_with_tokenizer(tmp_path / 'cache_a')}",
                  f"hydra.run.dir={reference}"))
    run = tmp_path / "run"
    cache = cache_with_tokenizer(tmp_path / "cache_b")
    common = [*pipeline, f"paths.cache_dir={cache}", f"hydra.run.dir={run}"]
    stopped = run_cli("train", *common, f"{FAULT}SignalAtStep", "+callbacks.fault.step=4")  # SIGINT to this process
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    (warm,) = (cache / "warmup").iterdir()
    assert saved_step(warm) == 4 and not (warm / "metrics.json").exists()
    resumed = run_cli("train", *common, "ckpt_path=last")  # the command the interrupted run printed
    check(resumed)
    assert "warm-up: resuming" in resumed.stdout + resumed.stderr
    assert not (warm / "checkpoints").exists()  # a finished warm-up keeps its policy only
    assert_same_metrics(metrics_of(reference), metrics_of(run))
    first, second = (json.loads((folder / "select" / "selection.json").read_text()) for folder in (reference, run))
    assert first["kept"] == second["kept"] and len(first["kept"]) == 12


def test_the_loader_resumes_at_its_saved_position_and_refuses_another_data_order():
    data = list(range(10))
    loader = ResumableLoader(data, batch_sampler=RandomBatchSampler(10, 3, seed=5))
    loader.batch_sampler.set_epoch(2)
    full = [batch.tolist() for batch in loader]
    assert sorted(sum(full, [])) == data and len(full) == 4
    iterator = iter(loader)
    next(iterator), next(iterator)
    state = loader.state_dict()
    assert state == {"epoch": 2, "position": 2, "batches": 4, "seed": 5}

    fresh = ResumableLoader(data, batch_sampler=RandomBatchSampler(10, 3, seed=5))
    fresh.load_state_dict(state)
    fresh.batch_sampler.set_epoch(2)
    assert [batch.tolist() for batch in fresh] == full[2:]
    assert [batch.tolist() for batch in fresh] == full  # the skip holds for one iteration only
    fresh.batch_sampler.set_epoch(3)
    assert [batch.tolist() for batch in fresh] != full  # another epoch, another order

    other = ResumableLoader(list(range(12)), batch_sampler=RandomBatchSampler(12, 2, seed=5))
    with pytest.raises(ValueError, match="4 training batches per epoch and seed 5; this run has 6"):
        other.load_state_dict(state)


def test_a_checkpoint_at_an_epochs_last_batch_resumes_into_the_next_epoch(uninterrupted, tmp_path):
    """Stopped at the end of the first of two epochs (its last batch, before the epoch's end): the resumed run
    trains the whole second epoch, in that epoch's own order, and ends as an uninterrupted run."""
    _, cache = uninterrupted
    short = [*(item for item in RUN if not item.startswith("data.max_train_pairs")), "data.max_train_pairs=16",
             "trainer.max_epochs=2", f"paths.cache_dir={cache}"]
    whole, run = tmp_path / "whole", tmp_path / "run"
    check(run_cli("train", *short, f"hydra.run.dir={whole}"))
    stopped = run_cli("train", *short, f"hydra.run.dir={run}", f"{FAULT}SignalAtStep", "+callbacks.fault.step=4")
    assert stopped.returncode == 130 and saved_step(run) == 4  # 16 pairs in batches of 4: the epoch's last batch
    check(run_cli("train", *short, f"hydra.run.dir={run}", "ckpt_path=last"))
    assert metrics_of(run)["run"]["global_steps"] == 8
    assert_same_metrics(metrics_of(whole), metrics_of(run))
