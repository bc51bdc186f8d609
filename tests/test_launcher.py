"""Sweeps through hydra-submitit-launcher: the SLURM config asks SLURM for what the trainer will use, and a local
sweep runs its jobs through submitit, in parallel, with one warm-up and one scoring and the basic launcher's
numbers."""

from __future__ import annotations

import json
import math

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.entry import run_cli
from tests.test_cli import ROOT, cache_with_tokenizer, check, train
from tests.test_pipeline import SMALL, runs_of


def launcher_config(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[*overrides, "hydra.sweep.dir=/sweeps/s1"], return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def test_slurm_launcher_asks_for_the_trainers_devices_and_requeues(tmp_path, monkeypatch):
    import submitit

    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))  # no srun here

    params = launcher_config("hydra/launcher=slurm", "trainer.devices=2")
    assert params["_target_"].endswith("SlurmLauncher")
    assert params["submitit_folder"] == "/sweeps/s1/.submitit/%j"
    assert params["max_num_timeout"] > 0 and params["additional_parameters"] == {"requeue": True}
    # the sbatch script submitit writes from them, as the plugin hands them over (prefixed slurm_ but the common ones)
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    common = {"timeout_min", "gpus_per_node", "tasks_per_node", "cpus_per_task", "mem_gb", "nodes", "name", "stderr_to_stdout"}
    executor.update_parameters(**{
        key if key in common else f"slurm_{key}": value
        for key, value in params.items()
        if key not in {"_target_", "submitit_folder", "max_num_timeout"}
    })
    script = executor._executor._make_submission_file_text("python -m submitit.core._submit x", "uid")
    for line in ("--gpus-per-node=2", "--ntasks-per-node=2", "--requeue", "--signal=USR2@120", "--time=240"):
        assert f"#SBATCH {line}" in script, line
    assert "--partition" not in script  # null: the cluster's default partition
    assert launcher_config("hydra/launcher=slurm")["gpus_per_node"] == 1 == launcher_config("hydra/launcher=local")["gpus_per_node"]


def final_metrics(run: dict) -> dict[str, float]:
    return {key: value for key, value in run.items() if "/" in key and isinstance(value, (int, float))}


def test_local_launcher_sweep_warms_up_and_scores_once_with_the_basic_launchers_numbers(tmp_path):
    sweep = {"basic": tmp_path / "basic", "local": tmp_path / "local"}
    cache = {name: cache_with_tokenizer(tmp_path / f"cache_{name}") for name in ("basic", "local")}
    sweeps = {name: ["-m", *launcher, *SMALL, "select=lossdiff_irm", "select.keep_fraction=0.5,0.8",
                     f"paths.cache_dir={cache[name]}", f"hydra.sweep.dir={sweep[name]}"]
              for name, launcher in (("basic", []), ("local", ["hydra/launcher=local"]))}
    # the basic launcher runs its jobs one after the other in this process; submitit's, in processes of their own
    # that a new interpreter starts, as a user's sweep does
    check(run_cli("train", *sweeps["basic"]))
    check(train(*sweeps["local"]))
    basic, local = runs_of(sweep["basic"]), runs_of(sweep["local"])
    assert len(basic) == len(local) == 2
    # the jobs went through submitit: one folder per job (named by its id), each with its result
    jobs = [folder for folder in (sweep["local"] / ".submitit").iterdir() if folder.name.isdigit()]
    assert len(jobs) == 2 and all(list(folder.glob("*_result.pkl")) for folder in jobs)
    assert not (sweep["basic"] / ".submitit").exists()
    # the two jobs ran at the same time; still one warm-up and one scoring for both
    assert sorted(run["selection"]["warmup_from_cache"] for run in local) == [False, True]
    assert sorted(run["selection"]["scores_from_cache"] for run in local) == [False, True]
    assert len(list((cache["local"] / "warmup").iterdir())) == 1
    assert len(list((cache["local"] / "scores").iterdir())) == 1
    for ours, theirs in zip(local, basic):
        assert ours["dir"].name == theirs["dir"].name  # the same job (its overrides name its folder)
        kept = [json.loads((run["dir"] / "select" / "selection.json").read_text())["kept"] for run in (ours, theirs)]
        assert kept[0] == kept[1]
        expected = final_metrics(theirs)
        assert "val/rewards/accuracies" in expected and final_metrics(ours).keys() == expected.keys()
        for key, value in expected.items():
            assert math.isclose(final_metrics(ours)[key], value, rel_tol=0, abs_tol=1e-6), (ours["dir"].name, key)
