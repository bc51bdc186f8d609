"""A run is what its folder says: files read back run no code, a resume continues the same run, one run per folder,
resume commands that run as printed, and a finished run that keeps only what it needs on disk."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from prefalign.data.scores_file import PROVENANCE_KEY
from prefalign.folder_lock import FolderInUse, FolderLock, hold_folder
from prefalign.models import ModelSource
from prefalign.safe_config import UnsafeConfigError, project_targets
from prefalign.stages.train import run_training
from tests.entry import entry_point, run_cli
from tests.test_cli import cache_with_tokenizer

ROOT = Path(__file__).resolve().parents[1]
# 16 pairs in batches of 4: 4 steps
TINY = ["model=tiny_llama", "data.max_train_pairs=16", "data.batch_size=4", "data.max_val_pairs=8", "logger=csv"]


def config(primary: str, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(primary, overrides=list(overrides))


def train_config(run: Path, cache: Path, *overrides: str):
    return config("train", *TINY, f"paths.output_dir={run}", f"paths.cache_dir={cache_with_tokenizer(cache)}", *overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """One finished tiny run that kept its training state (so that it can be extended), and its cache."""
    cache = tmp_path_factory.mktemp("cache")
    run = tmp_path_factory.mktemp("runs") / "trained"
    run_training(train_config(run, cache, "callbacks.checkpoint.keep_training_state=true"))
    return run, cache


@pytest.fixture
def copied(trained, tmp_path) -> tuple[Path, Path]:
    run, cache = trained
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return copy, cache


@pytest.fixture
def nothing_loads(monkeypatch) -> list[str]:
    """Fail the test if the run's setup (tokenizer, data) or any model is loaded; the calls are listed."""
    calls: list[str] = []

    def refuse(name: str):
        def loader(*args, **kwargs):
            calls.append(name)
            raise AssertionError(f"{name} was called")

        return loader

    monkeypatch.setattr("prefalign.stages.train.setup_run", refuse("setup_run"))
    monkeypatch.setattr(ModelSource, "load_model", refuse("load_model"))
    return calls


class Payload:
    """Unpickled, it creates ``marker`` (as any code a pickle names would run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


# -- checkpoints are read as data ----------------------------------------------------------------------------


def test_a_checkpoint_that_would_run_code_is_refused_and_named(tmp_path, nothing_loads):
    marker = tmp_path / "marker"
    payload = tmp_path / "payload.ckpt"
    torch.save({"global_step": 3, "epoch": 0, "state_dict": Payload(marker)}, payload)
    with pytest.raises(ValueError, match="refused") as error:
        run_training(train_config(tmp_path / "run", tmp_path / "cache", f"ckpt_path={payload}"))
    assert str(payload) in str(error.value)
    assert not marker.exists() and not nothing_loads


def test_a_truncated_last_checkpoint_is_named(copied, nothing_loads):
    run, cache = copied
    last = run / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(ValueError, match="cannot be read") as error:
        run_training(train_config(run, cache, "ckpt_path=last"))
    assert str(last) in str(error.value) and not nothing_loads


# -- a resume continues the same run --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key", "old", "new"),
    [
        ("optimizer.lr=1e-3", "optimizer.lr", "1e-05", "0.001"),
        ("loss=slic", "loss._target_", "'prefalign.losses.DPOLoss'", "'prefalign.losses.SLiCLoss'"),
        ("loss.beta=0.2", "loss.beta", "0.1", "0.2"),
        ("data.flip_fraction=0.25", "data.flip_fraction", "0.0", "0.25"),
        ("data.max_length=96", "data.max_length", "128", "96"),
        ("trainer.accumulate_grad_batches=2", "trainer.accumulate_grad_batches", "1", "2"),
    ],
)
def test_a_resume_with_another_setting_is_refused_before_any_model_loads(trained, nothing_loads, override, key, old, new):
    run, cache = trained
    last = run / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    with pytest.raises(ValueError, match="a resume continues the same run") as error:
        run_training(train_config(run, cache, f"ckpt_path={last}", "callbacks.checkpoint.keep_training_state=true", override))
    assert f"{key}: {old} in the checkpoint, {new} now" in str(error.value)
    assert not nothing_loads and last.read_bytes() == before


def test_more_epochs_on_resume_continue_the_run_and_are_recorded(copied):
    run, cache = copied
    first = json.loads((run / "metrics.json").read_text())
    result = run_training(train_config(run, cache, "ckpt_path=last", "trainer.max_epochs=2"))
    assert result["run"]["global_steps"] == 2 * first["run"]["global_steps"] == 8
    metrics = json.loads((run / "metrics.json").read_text())
    # keep_training_state is the extension's other half: the fixture kept it, this resume leaves it at the default
    assert metrics["resumed_with"] == {"trainer.max_epochs": [1, 2], "callbacks.checkpoint.keep_training_state": [True, False]}


def test_a_finished_run_keeps_only_its_progress_unless_asked(tmp_path):
    run, cache = tmp_path / "run", tmp_path / "cache"
    run_training(train_config(run, cache, "data.max_train_pairs=8"))
    last = run / "checkpoints" / "last.ckpt"
    kept = torch.load(last, weights_only=True)
    assert "state_dict" not in kept and "optimizer_states" not in kept and kept["global_step"] == 2
    assert last.stat().st_size < 100_000 and (run / "policy" / "model.safetensors").exists()
    # resumed as it was: complete, nothing written; extended: refused, with the way out named
    assert run_training(train_config(run, cache, "data.max_train_pairs=8", "ckpt_path=last"))["complete"]
    with pytest.raises(ValueError, match="keep_training_state=true"):
        run_training(train_config(run, cache, "data.max_train_pairs=8", "ckpt_path=last", "trainer.max_epochs=2"))


def test_a_resume_on_data_files_with_other_content_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    def pairs(path: Path, answer: str) -> None:
        rows = [{"pair_id": f"p{i}", "prompt": f"What is {i} + {i}?", "chosen": f"{2 * i}{answer}", "rejected": "no"} for i in range(8)]
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))

    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    pairs(train, ".")
    pairs(val, "!")
    run, cache = tmp_path / "run", tmp_path / "cache"
    local = ["data=local", f"data.source.train_path={train}", f"data.source.val_path={val}", "data.max_val_pairs=4"]
    run_training(train_config(run, cache, *local, "callbacks.checkpoint.keep_training_state=true"))
    pairs(train, ", surely.")  # the same file name, count and settings; other pairs
    loaded: list[str] = []
    monkeypatch.setattr(ModelSource, "load_model", lambda self: loaded.append("model"))
    with pytest.raises(ValueError, match="the training pairs are not the run's"):
        run_training(train_config(run, cache, *local, "ckpt_path=last", "trainer.max_epochs=2"))
    assert not loaded


def test_the_resume_command_of_a_sweep_experiments_job_runs_that_job_alone(tmp_path):
    from hydra.core.hydra_config import HydraConfig

    from prefalign.config import refuse_sweep_without_multirun

    def composed(overrides: list[str], mode: str):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("train", overrides=overrides, return_hydra_config=True)
        cfg.hydra.mode = mode
        cfg.hydra.overrides.task = overrides
        HydraConfig.instance().set_config(cfg)
        return cfg

    # job 1 of `python train.py -m experiment=keep_fraction_sweep`: the sweeper gave it its swept values
    job = ["experiment=keep_fraction_sweep", "select=random", "select.keep_fraction=0.64", f"paths.output_dir={tmp_path}"]
    try:
        command = entry_point("train").resume_command(composed(job, "MULTIRUN"))
        pasted = shlex.split(command)[2:]
        assert "hydra.sweeper.params=null" in pasted and "select.keep_fraction=0.64" in pasted
        resumed = composed(pasted, "RUN")
        refuse_sweep_without_multirun()  # one job, run alone
        assert resumed.select.keep_fraction == 0.64 and resumed.ckpt_path == "last"
        composed([item for item in pasted if item != "hydra.sweeper.params=null"], "RUN")
        with pytest.raises(ValueError, match="runs only with -m"):  # the sweep without -m is still refused
            refuse_sweep_without_multirun()
    finally:
        HydraConfig.instance().cfg = None


# -- configs read back are data -----------------------------------------------------------------------------------


def test_the_allow_list_is_what_the_config_groups_name():
    targets = project_targets()
    assert {"prefalign.losses.DPOLoss", "prefalign.data.sources.BuiltinSource", "torch.optim.AdamW"} <= targets
    assert "os.makedirs" not in targets and "torch.load" not in targets


def test_a_scores_provenance_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "marker"
    data = {"_target_": "prefalign.data.datamodule.PreferenceDataModule", "source": {"_target_": "os.makedirs", "name": str(marker)}}
    table = pa.Table.from_pandas(pd.DataFrame({"pair_id": [f"p{i}" for i in range(8)], "random": [i / 8 for i in range(8)]}))
    scores = tmp_path / "scores.parquet"
    pq.write_table(table.replace_schema_metadata({PROVENANCE_KEY: json.dumps({"config": {"data": data}})}), scores)
    cfg = config("select", f"scores={tmp_path}", "analyze=true", "analysis.rules=[random]", "analysis.scatter=[]",
                 f"paths.output_dir={tmp_path / 'analysis'}")
    with pytest.raises(UnsafeConfigError) as error:
        entry_point("select").run(cfg)
    assert str(scores) in str(error.value) and "data.source._target_='os.makedirs'" in str(error.value)
    assert not marker.exists()


def test_a_run_config_that_would_run_code_is_refused_by_evaluate(copied, tmp_path):
    run, cache = copied
    marker = tmp_path / "marker"
    run_cfg = yaml.safe_load((run / "config.yaml").read_text())
    run_cfg["model"] = {"_target_": "os.makedirs", "name": str(marker), "dtype": "float32"}
    (run / "config.yaml").write_text(yaml.safe_dump(run_cfg))
    cfg = config("evaluate", f"policy={run}", "bench.limit=2", f"paths.cache_dir={cache}", f"paths.output_dir={tmp_path / 'e'}")
    with pytest.raises(UnsafeConfigError) as error:
        entry_point("evaluate").run(cfg)
    assert str(run / "config.yaml") in str(error.value) and "model._target_='os.makedirs'" in str(error.value)
    assert not marker.exists()


# -- one run per folder -------------------------------------------------------------------------------------------


def assert_names_the_holder(error: pytest.ExceptionInfo, folder: Path) -> None:
    message = str(error.value)
    assert str(folder) in message and f"pid {os.getpid()}" in message and socket.gethostname() in message


def test_a_second_training_run_into_a_held_folder_fails_at_once(tmp_path, nothing_loads):
    run = tmp_path / "run"
    holder = FolderLock(run)
    holder.acquire()  # another run's lock (another open file: it excludes this process too)
    try:
        with pytest.raises(FolderInUse) as error:
            entry_point("train").run(train_config(run, tmp_path / "cache"))
    finally:
        holder.release()
    assert_names_the_holder(error, run)
    assert not nothing_loads and not (run / "config.yaml").exists() and not (run / ".lock").exists()


def test_a_second_selection_into_a_held_folder_fails_at_once(tmp_path):
    scores = tmp_path / "scores.parquet"
    pq.write_table(pa.Table.from_pandas(pd.DataFrame({"pair_id": ["a", "b", "c", "d"], "random": [0.1, 0.4, 0.2, 0.3]})), scores)
    folder = tmp_path / "select"
    cfg = config("select", f"scores={scores}", "select=topk", "select.score=random", "select.keep_fraction=0.5",
                 f"paths.output_dir={folder}")
    select = entry_point("select")
    holder = FolderLock(folder)
    holder.acquire()
    try:
        with pytest.raises(FolderInUse) as error:
            select.run(cfg)
        assert not (folder / "selection.json").exists()
    finally:
        holder.release()
    assert_names_the_holder(error, folder)
    assert select.run(cfg)["kept"] == 2  # once the other run is gone, the folder is free


def test_only_the_process_that_owns_a_run_takes_its_folder(tmp_path, monkeypatch):
    folder = tmp_path / "run"
    with hold_folder(folder), hold_folder(folder):  # a stage inside its own run's folder (the pipeline's training)
        assert json.loads((folder / ".lock").read_text())["pid"] == os.getpid()
        monkeypatch.setenv("LOCAL_RANK", "1")  # another process of the same multi-device run: takes nothing
        with hold_folder(folder):
            pass
        monkeypatch.delenv("LOCAL_RANK")
        with pytest.raises(FolderInUse):
            FolderLock(folder).acquire()
    assert not (folder / ".lock").exists()


def test_a_requeued_slurm_job_waits_for_its_predecessors_lock(tmp_path, monkeypatch):
    import threading

    folder = tmp_path / "run"
    predecessor = FolderLock(folder)
    predecessor.acquire()  # a killed job's lock that the file system has not dropped yet
    monkeypatch.setattr("prefalign.folder_lock.REQUEUE_WAIT_S", 5.0)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    threading.Timer(0.3, predecessor.release).start()
    with hold_folder(folder):
        assert json.loads((folder / ".lock").read_text())["pid"] == os.getpid()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # a first start does not wait
    predecessor.acquire()
    try:
        with pytest.raises(FolderInUse), hold_folder(folder):
            pass
    finally:
        predecessor.release()


# -- the resume command a sweep job prints runs as printed -------------------------------------------------------------


def test_a_file_system_without_flock_runs_unguarded_instead_of_in_use(tmp_path, monkeypatch, caplog):
    """Only contention means another run: ENOLCK (NFS without lockd, Lustre without -o flock) is no holder."""
    import errno
    import fcntl

    from prefalign import folder_lock

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    (tmp_path / folder_lock.LOCK_NAME).write_text("")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert folder_lock.held_by_another(tmp_path) is None
    lock = FolderLock(tmp_path)
    lock.acquire()  # no FolderInUse
    lock.release()
    assert "cannot lock files" in caplog.text


def test_a_second_process_into_a_held_folder_fails_before_hydra_writes_there(tmp_path):
    """Hydra writes .hydra/ and opens the job's log before the stage takes its lock: the check comes before both,
    and the failed run's stub-folder clean-up leaves the holder's folder alone."""
    scores = tmp_path / "scores.parquet"
    pq.write_table(pa.Table.from_pandas(pd.DataFrame({"pair_id": ["a", "b"], "random": [0.1, 0.4]})), scores)
    folder = tmp_path / "select"
    holder = FolderLock(folder)
    holder.acquire()
    try:
        # the lock is another open file: it excludes this process too, as it would another one
        second = run_cli("select", f"scores={scores}", "select=topk", "select.score=random", "select.keep_fraction=0.5",
                         f"hydra.run.dir={folder}")
        assert second.returncode != 0
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in second.stderr, second.stderr[-2000:]
        assert sorted(path.name for path in folder.iterdir()) == [".lock"]  # no .hydra/, no log, nothing removed
    finally:
        holder.release()


@pytest.mark.parametrize("folder", ["multirun/s/0_loss=dpo,model=tiny_llama", 'a "quoted" name', "ends\\", "x ${y} [1,2]"])
def test_a_folder_is_one_quoted_value_for_hydra(folder):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from prefalign.config import hydra_quoted

    value = OverridesParser.create().parse_override(f"hydra.run.dir={hydra_quoted(folder)}").value()
    assert OmegaConf.create({"dir": value}).dir == folder  # OmegaConf reads \${ as a literal ${


def test_an_interrupted_sweep_job_resumes_with_the_command_it_printed(tmp_path):
    sweep, cache = tmp_path / "sweep", cache_with_tokenizer(tmp_path / "cache")
    # a real SIGINT, to a sweep in a process of its own
    stopped = subprocess.run(
        [sys.executable, "train.py", "-m", *TINY, "loss.beta=0.1,0.2", f"hydra.sweep.dir={sweep}", f"paths.cache_dir={cache}",
         "+callbacks.fault._target_=tests.faults.SignalAtStep", "+callbacks.fault.step=2"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert stopped.returncode == 130, stopped.stderr[-3000:]
    (line,) = [line for line in (stopped.stdout + stopped.stderr).splitlines() if line.startswith("resume with: ")]
    command = line.removeprefix("resume with: ")
    (job,) = [path for path in sweep.iterdir() if path.is_dir()]  # the second job never started
    assert job.name.startswith("0_") and "=" in job.name and "," in job.name
    assert shlex.split(command)[:2] == ["python", "train.py"] and "-m" not in shlex.split(command)
    # pasted into a shell as printed: the shell's words after `python train.py` are the arguments train.py runs with
    words = subprocess.run(f"printf '%s\\0' {command.removeprefix('python train.py ')}", shell=True, cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")[:-1]
    resumed = run_cli("train", *words)
    assert resumed.returncode == 0, f"{command}\n{resumed.stderr[-3000:]}"
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["run"]["global_steps"] == 4 and "resumed_with" not in metrics
    assert "optimizer_states" not in torch.load(job / "checkpoints" / "last.ckpt", weights_only=True)
