"""Runs that share a cache directory at the same time produce each entry once (prefalign/atomic.py): the run that
gets an entry's lock computes it, the others wait for it and then read it from the cache."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from filelock import FileLock
from hydra import compose, initialize_config_dir

from prefalign.atomic import lock_path
from tests.test_cli import ROOT, cache_with_tokenizer

# a process that wants the entry <folder>/entry.json, and notes in produced.log that it computed it
CLAIMANT = """
import logging, os, sys, time
from pathlib import Path
from prefalign.atomic import lock_path, produce_once
logging.basicConfig(level=logging.INFO)
folder = Path(sys.argv[1])
entry = folder / "entry.json"
def produce():
    with open(folder / "produced.log", "a") as log:
        log.write(f"{os.getpid()}\\n")
    time.sleep(2)  # long enough for the others to find the lock taken
    entry.write_text("{}")
hit = produce_once(lock_path(folder / "cache", "things", "key"), entry.exists, produce, "the entry")
print("from cache" if hit else "produced", flush=True)
"""


def start(command: list[str], output: Path, **env: str) -> subprocess.Popen:
    with open(output, "w") as stream:
        return subprocess.Popen(command, cwd=ROOT, stdout=stream, stderr=subprocess.STDOUT, env={**os.environ, **env})


def wait_until_all_say(text: str, outputs: list[Path], processes: list[subprocess.Popen], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = [path.read_text(errors="replace") for path in outputs]
        if all(text in log for log in logs):
            return
        for process, log in zip(processes, logs):
            assert process.poll() is None, f"a run ended before waiting for the lock:\n{log[-3000:]}"
        time.sleep(0.5)
    raise AssertionError(f"not every run says {text!r} within {timeout} s:\n" + "\n---\n".join(logs))


def release_once_all_wait(
    lock: FileLock, commands: list[list[str]], outputs: list[Path], text: str, wait_s: float, finish_s: float, **env: str
) -> tuple[list[subprocess.Popen], list[str]]:
    """Start ``commands`` while this test holds ``lock``, release it once every one says ``text`` (so that all of
    them want the entry at the same time), and wait for them to finish; returns the processes and their logs."""
    processes = [start(command, output, **env) for command, output in zip(commands, outputs)]
    try:
        wait_until_all_say(text, outputs, processes, timeout=wait_s)
        lock.release()
        for process in processes:
            process.wait(timeout=finish_s)
    finally:
        for process in processes:
            process.kill()
    return processes, [output.read_text() for output in outputs]


def test_concurrent_claimants_produce_an_entry_once_and_the_others_wait_for_it(tmp_path):
    # this test holds the lock first, so that all three are sure to want the entry at the same time
    lock = FileLock(str(lock_path(tmp_path / "cache", "things", "key")))
    lock.acquire()
    outputs = [tmp_path / f"claimant{index}.out" for index in range(3)]
    commands = [[sys.executable, "-c", CLAIMANT, str(tmp_path)]] * 3
    processes, logs = release_once_all_wait(lock, commands, outputs, "waiting for the entry", 120, 120)
    assert [process.returncode for process in processes] == [0, 0, 0], logs
    assert len((tmp_path / "produced.log").read_text().split()) == 1, logs  # computed by one of them
    assert sorted(log.strip().splitlines()[-1] for log in logs) == ["from cache", "from cache", "produced"]


def test_another_devices_process_of_a_run_leaves_the_lock_to_its_rank_zero(tmp_path):
    # rank 0 of the run holds the lock (here: this test) and waits in fit for the other ranks: they must not wait
    lock = FileLock(str(lock_path(tmp_path / "cache", "things", "key")))
    lock.acquire()
    try:
        result = subprocess.run(
            [sys.executable, "-c", CLAIMANT, str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=60,
            env={**os.environ, "SLURM_PROCID": "1"},
        )
    finally:
        lock.release()
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "produced" and "waiting" not in result.stderr


# two selection pipelines with the same warm-up and scores: only the selection's kept fraction differs
PIPELINE = ["model=tiny_llama", "data.max_train_pairs=24", "data.max_val_pairs=8", "optimizer.lr=1e-3", "logger=csv",
            "select=lossdiff_irm"]


def warmup_lock(cache: Path) -> Path:
    """The lock of the two pipelines' warm-up (its key comes from their config, as the pipeline makes it)."""
    from prefalign.stages.pipeline import warmup_config

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*PIPELINE, f"paths.cache_dir={cache}", f"paths.output_dir={cache.parent}/x"])
    _, folder = warmup_config(cfg)
    return lock_path(cache, "warmup", folder.name)


def test_two_pipelines_started_together_share_one_warm_up_and_one_scoring(tmp_path):
    cache = cache_with_tokenizer(tmp_path / "cache")
    lock = FileLock(str(warmup_lock(cache)))
    lock.acquire()  # held until both runs wait for it: both reach the warm-up before either has trained it
    runs = {fraction: tmp_path / f"keep{fraction}" for fraction in ("0.5", "0.75")}
    outputs = [tmp_path / f"keep{fraction}.out" for fraction in runs]
    commands = [
        [sys.executable, "train.py", *PIPELINE, f"select.keep_fraction={fraction}", f"paths.cache_dir={cache}",
         f"hydra.run.dir={run}"]
        for fraction, run in runs.items()
    ]
    processes, logs = release_once_all_wait(
        lock, commands, outputs, "waiting for the warm-up run", 600, 900, HYDRA_FULL_ERROR="1"
    )
    assert [process.returncode for process in processes] == [0, 0], "\n---\n".join(log[-3000:] for log in logs)
    metrics = [json.loads((run / "metrics.json").read_text()) for run in runs.values()]
    # one trained the warm-up and computed the scores while the other waited, then read both from the cache
    assert sorted(m["selection"]["warmup_from_cache"] for m in metrics) == [False, True]
    assert sorted(m["selection"]["scores_from_cache"] for m in metrics) == [False, True]
    assert len({m["selection"]["warmup_dir"] for m in metrics}) == 1
    assert len(list((cache / "warmup").iterdir())) == 1
    assert len(list((cache / "scores").iterdir())) == 1
    assert [m["run"]["train_pairs"] for m in metrics] == [12, 18]
