"""Data-parallel passes outside fit: the helpers in one process, and ``score.py`` under ``torchrun`` writing the
files of one process, also when an interrupted run resumes with another number of processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
import torch
from filelock import FileLock

from prefalign import distributed
from prefalign.atomic import lock_path
from prefalign.data.datamodule import PreferenceDataModule
from prefalign.data.sources import LocalSource
from prefalign.models import TinyModel, default_cache_dir, embedded_tokenizer_dir
from prefalign.reference import cache_key, cached_reference_logps, compute_pair_logps, write_entry
from prefalign.scoring.base import read_scores
from tests.conftest import tiny_model
from tests.entry import CliResult, run_cli
from tests.test_cli import ROOT


def test_one_process_is_world_size_one(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.init_from_env() is False and not torch.distributed.is_initialized()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    items = list(range(5))
    assert distributed.share(items) == items and distributed.gather_shares(items) == items
    assert distributed.broadcast("value") == "value" and distributed.on_main(lambda: 7) == 7
    distributed.barrier()
    assert distributed.local_device(torch.device("cpu")) == torch.device("cpu")


def test_processes_of_lightnings_launcher_are_not_ranks_of_the_passes(monkeypatch):
    # Lightning's DDP launcher re-executes the script with WORLD_SIZE and LOCAL_RANK but no RANK, after its rank 0
    # did the passes alone: joining a group here would wait for a rank 0 that never comes
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.launched_world_size() == 1
    assert distributed.init_from_env() is False and not torch.distributed.is_initialized()


@pytest.mark.parametrize("world", [2, 3])
def test_shares_gather_back_in_order(monkeypatch, world):
    """Every rank's :func:`share` of 7 items (uneven), gathered as ``all_gather_object`` would, is the list again."""
    items = [f"batch{i}" for i in range(7)]
    shares = []
    for rank in range(world):
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        monkeypatch.setattr(distributed, "world_size", lambda: world)
        shares.append(distributed.share(items))
    assert sorted(sum(shares, [])) == sorted(items) and len(sum(shares, [])) == len(items)

    def all_gather_object(output, local, group=None):
        output[:] = shares

    monkeypatch.setattr(distributed, "_objects", lambda: None)
    monkeypatch.setattr(torch.distributed, "all_gather_object", all_gather_object)
    assert distributed.gather_shares(shares[1]) == items


def test_a_run_waits_for_the_reference_log_probs_another_run_is_computing(tokenizer, tmp_path):
    rows = [{"pair_id": f"p{i}", "prompt": f"Say {i}.", "chosen": f"{i}.", "rejected": f"No, {i + 1}."} for i in range(5)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    source = LocalSource(str(tmp_path / "train.jsonl"), str(tmp_path / "train.jsonl"))
    datamodule = PreferenceDataModule(source, tokenizer, eval_batch_size=2)
    datamodule.setup()
    dataset, loader = datamodule.datasets["train"], datamodule.eval_loader("train")
    model = tiny_model("llama")
    expected = compute_pair_logps(model, loader)
    loads: list[int] = []

    def reference(cache):
        def load_model():
            loads.append(1)
            return model

        return cached_reference_logps(
            reference_fingerprint="tiny", dataset=dataset, loader=loader, cache_dir=cache, load_model=load_model
        )

    # a first run computes and writes the entry
    logps, hit = reference(tmp_path / "first")
    assert not hit and loads == [1] and all(torch.equal(logps[k], expected[k]) for k in expected)

    # another run holds the entry's lock: this one waits, then finds the entry it wrote and computes nothing
    cache = tmp_path / "second"
    key = cache_key("tiny", dataset.fingerprint())
    other_run = FileLock(str(lock_path(cache, "reference_logps", key)))
    other_run.acquire()
    outcome: dict = {}
    waiting = threading.Thread(target=lambda: outcome.update(result=reference(cache)))
    waiting.start()
    time.sleep(1.5)
    assert waiting.is_alive() and loads == [1]
    write_entry(cache / "reference_logps" / key, [item.pair_id for item in dataset.items], expected, "tiny")  # as the other run would
    other_run.release()
    waiting.join(timeout=60)
    logps, hit = outcome["result"]
    assert hit and loads == [1] and all(torch.equal(logps[k], expected[k]) for k in expected)


def score(tmp_path, cache: str, processes: int, run: str) -> subprocess.CompletedProcess | CliResult:
    """``score.py`` with the tiny model on 16 pairs in shards of 6: under ``torchrun`` when ``processes`` > 1, else
    its ``main()`` in this process.

    The shard size stays: it decides the batches, whose padding changes LossDiff (a difference of two losses)
    by more than 1e-5 of its value."""
    args = [
        "model=tiny_llama", f"model.cache_dir={default_cache_dir()}", "data.max_train_pairs=16", "data.max_val_pairs=8",
        # batches of 2: every rank has several in the validation gradient and in each shard (which one may misplace)
        "data.eval_batch_size=2", f"policy={tmp_path / 'policy'}", "scores=[influence,lossdiff,irm]",
        "shard_size=6", f"paths.cache_dir={tmp_path / cache}", f"hydra.run.dir={tmp_path / run}",
    ]
    # one thread per process in every run (torchrun's default): the CPU kernels' float sums depend on it
    if processes == 1:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            result = run_cli("score", *args)
        finally:
            torch.set_num_threads(threads)
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        result = subprocess.run([*launcher, "score.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


def shards(tmp_path, cache: str) -> list:
    return sorted((tmp_path / cache / "scores").glob("*/shards/shard-*.parquet"))


def interrupt(tmp_path, cache: str, keep: int) -> None:
    """Lose all shards but the first ``keep`` and the final file, as a run killed while scoring would."""
    for path in shards(tmp_path, cache)[keep:]:
        path.unlink()
    for path in (tmp_path / cache / "scores").glob("*/scores.parquet"):
        path.unlink()


def assert_same_scores(run_dir, expected: pd.DataFrame) -> None:
    """Equal within 1e-5 of each score's scale (the ranks' gradients add up in another order: an influence
    near zero moves by ~1e-7, more than 1e-5 of itself)."""
    scores, _ = read_scores(run_dir)
    assert list(scores.columns) == list(expected.columns) and scores["pair_id"].tolist() == expected["pair_id"].tolist()
    for name in ("influence", "lossdiff", "irm"):
        actual, wanted = torch.tensor(scores[name].to_numpy()), torch.tensor(expected[name].to_numpy())
        scale = float(wanted.abs().max())
        torch.testing.assert_close(actual, wanted, rtol=1e-5, atol=1e-5 * scale, msg=lambda text: f"{name}: {text}")


def test_two_processes_score_like_one_and_resume_with_another_count(tmp_path):
    embedded_tokenizer_dir()  # converted once into the shared cache, not by every run
    # a policy other than the reference, so that IRM and LossDiff are not all zero
    TinyModel(name="tiny_llama", architecture="llama", seed=1).load_model().save_pretrained(tmp_path / "policy")

    score(tmp_path, "cache_one", 1, "one")
    one, _ = read_scores(tmp_path / "one")
    assert len(one) == 16 and (one[["influence", "lossdiff", "irm"]].abs() > 0).all().all()
    two = score(tmp_path, "cache_two", 2, "two")
    assert "rank 0 of 2" in two.stdout + two.stderr
    assert_same_scores(tmp_path / "two", one)
    # the same shard files, and reference cache entries identical to one process's, byte for byte
    assert [path.name for path in shards(tmp_path, "cache_two")] == [path.name for path in shards(tmp_path, "cache_one")]
    entries = sorted((tmp_path / "cache_one" / "reference_logps").iterdir())
    assert len(entries) == 2  # train and validation
    for entry in entries:
        other = tmp_path / "cache_two" / "reference_logps" / entry.name
        assert {file.name: file.read_bytes() for file in other.iterdir()} == {file.name: file.read_bytes() for file in entry.iterdir()}

    # 2 -> 1: the two-process run, killed after its first two shards (of 3), finished by one process
    interrupt(tmp_path, "cache_two", keep=2)
    kept = {path: path.stat().st_mtime_ns for path in shards(tmp_path, "cache_two")}
    resumed = score(tmp_path, "cache_two", 1, "two_then_one")
    assert "resuming, 2 of 3 shards already done (12 of 16 pairs)" in resumed.stdout + resumed.stderr
    assert {path: path.stat().st_mtime_ns for path in kept} == kept  # finished shards untouched
    assert_same_scores(tmp_path / "two_then_one", one)

    # 1 -> 2: the one-process run, killed after its first shard, finished by two processes
    interrupt(tmp_path, "cache_one", keep=1)
    resumed = score(tmp_path, "cache_one", 2, "one_then_two")
    assert "resuming, 1 of 3 shards already done (6 of 16 pairs)" in resumed.stdout + resumed.stderr
    assert_same_scores(tmp_path / "one_then_two", one)


SLURM_TASK = """
import json, sys
from prefalign import distributed
assert distributed.launched_world_size() == 2 and distributed.local_rank() == int(sys.argv[1])
assert distributed.init_from_env()
mine = distributed.share(list(range(7)))
print(json.dumps([distributed.rank(), distributed.world_size(), mine, distributed.gather_shares(mine)]))
"""


def test_the_tasks_of_a_slurm_job_step_are_the_ranks_of_the_passes(tmp_path):
    # what srun gives each of the tasks submitit starts (tasks_per_node=2), without torchrun's variables
    env = {key: value for key, value in os.environ.items() if key not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(SLURM_NTASKS="2", SLURM_NTASKS_PER_NODE="2", SLURM_NODELIST="localhost", SLURM_JOB_ID="4242",
               SLURM_JOB_NAME="train")
    tasks = [
        subprocess.Popen(
            [sys.executable, "-c", SLURM_TASK, str(task)], cwd=ROOT, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**env, "SLURM_PROCID": str(task), "SLURM_LOCALID": str(task)},
        )
        for task in range(2)
    ]
    outputs = [task.communicate(timeout=120) for task in tasks]
    assert all(task.returncode == 0 for task in tasks), [err[-2000:] for _, err in outputs]
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert [(rank, world) for rank, world, _, _ in results] == [(0, 2), (1, 2)]
    assert sorted(results[0][2] + results[1][2]) == list(range(7))  # each task computes its own share
    assert results[0][3] == results[1][3] == list(range(7))  # and every task has all of it, in order
