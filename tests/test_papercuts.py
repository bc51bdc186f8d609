"""What a newcomer meets first: progress lines in a redirected log, a short ``--help``, fast failures."""

from __future__ import annotations

import csv
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from prefalign.config import unread_selection_settings, warn_unread_selection_settings
from prefalign.models import HubModel, HubUnavailableError
from prefalign.stub_folders import RemoveStubFolder
from prefalign.sweep_summary import SweepSummary
from prefalign.trainer import build_trainer
from tests.entry import run_cli
from tests.test_cli import cache_with_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def config(primary: str, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(primary, overrides=list(overrides))


class PairsModule(L.LightningModule):
    """A one-weight module fed batches shaped like prefalign's (``pair_ids`` and a tensor), logging ``train/loss``."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(1))

    def training_step(self, batch, batch_idx):
        loss = (self.weight * batch["x"]).pow(2).mean()
        self.log("train/loss", loss, batch_size=len(batch["pair_ids"]))
        return loss

    def train_dataloader(self):
        batches = [{"pair_ids": [f"p{index}", f"q{index}"], "x": torch.full((2,), float(index))} for index in range(6)]
        return torch.utils.data.DataLoader(batches, batch_size=None)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_progress_lines_reach_the_log_when_the_output_is_not_a_terminal(tmp_path, caplog):
    cfg = config("train", "trainer.max_epochs=1", "trainer.accelerator=cpu", "logger=csv",
                 "callbacks.progress_log.every_n_steps=2", "callbacks.progress_log.enabled=true")
    trainer = build_trainer(cfg, tmp_path, checkpoints=False, enable_progress_bar=False, enable_model_summary=False)
    with caplog.at_level(logging.INFO, logger="prefalign"):
        trainer.fit(PairsModule())
    lines = [record.getMessage() for record in caplog.records if record.name.startswith("prefalign")]
    progress = [line for line in lines if line.startswith("step ")]
    assert [line.split(" | ")[0] for line in progress] == [
        "step 2/6 (33%)", "step 4/6 (67%)", "step 6/6 (100%)", "step 6/6 (100%)"
    ], lines
    assert "loss " in progress[0] and "pairs/s" in progress[0] and "left" in progress[0], progress[0]
    assert progress[-1].endswith("(done)")


def test_progress_lines_are_on_by_default_when_the_output_is_redirected(tmp_path):
    # pytest captures both streams (not terminals), as nohup or "> train.log" would
    trainer = build_trainer(config("train", "trainer.accelerator=cpu"), tmp_path, checkpoints=False)
    (progress,) = [callback for callback in trainer.callbacks if type(callback).__name__ == "ProgressLog"]
    assert progress.active and progress.every_n_seconds == 30


def test_help_shows_usage_examples_and_the_groups_not_the_whole_config():
    # a new interpreter, as a user asks: --help is answered before the heavy imports
    result = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "Usage:" in lines and any(line.startswith("  python train.py debug=fast") for line in lines), result.stdout
    assert any(line.startswith("loss: ") and "dpo" in line for line in lines), result.stdout
    assert "--cfg job" in result.stdout
    # the composed config (its _target_ lines) is one flag away, not printed
    assert "_target_" not in result.stdout and len(lines) < 60, result.stdout


def test_a_hub_model_without_the_hub_fails_within_seconds_saying_what_to_do(monkeypatch):
    # an endpoint that refuses connections stands for a machine without the hub, whether or not this one has it
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    source = HubModel(name="not_cached", hub_name="prefalign-tests/not-a-model")
    started = time.monotonic()
    with pytest.raises(HubUnavailableError) as failure:
        source.load_tokenizer()
    assert time.monotonic() - started < 20
    message = str(failure.value)
    assert "model=not_cached" in message and "not in the local Hugging Face cache" in message, message
    assert "hf download prefalign-tests/not-a-model" in message and "model.path=" in message, message


def test_a_hub_model_in_the_local_cache_needs_no_hub(monkeypatch, tmp_path):
    from huggingface_hub import constants

    snapshot = tmp_path / "models--prefalign-tests--cached" / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--prefalign-tests--cached" / "refs").mkdir()
    (tmp_path / "models--prefalign-tests--cached" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    HubModel(name="cached", hub_name="prefalign-tests/cached").check_available()  # no error: transformers loads it
    with pytest.raises(HubUnavailableError, match="HF_HUB_OFFLINE"):
        HubModel(name="missing", hub_name="prefalign-tests/missing").check_available()


def test_selection_settings_that_select_full_does_not_read_are_named_in_a_warning(caplog):
    ignored = config("train", "select.keep_fraction=0.5", "pipeline.extra_scores=[irm,random]")
    with caplog.at_level(logging.WARNING, logger="prefalign"):
        assert warn_unread_selection_settings(ignored) == ["select.keep_fraction=0.5", "pipeline.extra_scores=[irm,random]"]
    (warning,) = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert "select=full" in warning and "select.keep_fraction=0.5" in warning and "pipeline.extra_scores" in warning
    # read by the rule, or left at full's own values: nothing to say
    assert unread_selection_settings(config("train")) == []
    assert unread_selection_settings(config("train", "select=topk", "select.keep_fraction=0.5")) == []
    assert unread_selection_settings(config("train", "select.keep_fraction=1.0")) == []


def test_bench_limit_limits_the_held_out_pass_too(tmp_path):
    from prefalign.evaluation.policy import heldout_values

    cache = cache_with_tokenizer(tmp_path / "cache")
    run_cfg = config("train", "model=tiny_llama", "data.max_train_pairs=8", "data.max_val_pairs=8", "data.eval_batch_size=4",
                     f"paths.output_dir={tmp_path / 'run'}", f"paths.cache_dir={cache}")
    policy = instantiate(run_cfg.model).load_model()
    everything = heldout_values(run_cfg, policy, cache)
    limited = heldout_values(run_cfg, policy, cache, limit=3)
    assert len(everything["pair_id"]) == 8
    # three of the pairs (the first of the split, as data.max_val_pairs keeps them), each with its value of the full pass
    assert len(limited["pair_id"]) == 3
    loss = dict(zip(everything["pair_id"], everything["loss"]))
    assert limited["loss"] == pytest.approx([loss[pair_id] for pair_id in limited["pair_id"]], abs=1e-5)


def fake_job(sweep: Path, name: str, overrides: list[str], metrics: dict | None) -> None:
    (sweep / name / ".hydra").mkdir(parents=True)
    (sweep / name / ".hydra" / "overrides.yaml").write_text("".join(f"- {item}\n" for item in overrides))
    if metrics is not None:
        (sweep / name / "metrics.json").write_text(json.dumps(metrics))


def test_a_sweep_ends_with_a_summary_table_of_its_jobs(tmp_path, caplog):
    sweep = tmp_path / "sweep"
    common = ["model=tiny_llama", "data.max_train_pairs=24"]
    fake_job(sweep, "0_loss=dpo,loss.beta=0.1", [*common, "loss=dpo", "loss.beta=0.1"],
             {"train/loss": 0.61, "val/rewards/accuracies": 0.7, "val/loss": 0.65, "run": {"elapsed_s": 3.0}})
    fake_job(sweep, "1_loss=ipo,loss.beta=0.1", [*common, "loss=ipo", "loss.beta=0.1"],
             {"train/loss": 0.42, "val/rewards/accuracies": 0.625, "val/loss": 0.5})
    fake_job(sweep, "10_loss=dpo,loss.beta=0.3", [*common, "loss=dpo", "loss.beta=0.3"], None)  # failed
    with caplog.at_level(logging.INFO, logger="prefalign"):
        SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    markdown = (sweep / "summary.md").read_text()
    assert "2 of 3 jobs done" in markdown
    assert "| job | loss | loss.beta | train/loss | val/loss | val/rewards/accuracies | status |" in markdown, markdown
    assert "| 0 | dpo | 0.1 | 0.6100 | 0.6500 | 0.7000 | done |" in markdown, markdown
    assert "| 10 | dpo | 0.3 |  |  |  | no metrics.json |" in markdown, markdown
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [row["job"] for row in rows] == ["0", "1", "10"] and rows[1]["val/rewards/accuracies"] == "0.625"
    assert any("0.6100" in record.getMessage() for record in caplog.records)


def test_a_sweep_with_a_failed_job_has_its_summary_after_each_job(tmp_path):
    """Hydra's basic sweeper re-raises a failed job's error before on_multirun_end: the jobs' own ends write it."""
    from hydra.types import RunMode

    fake_job(tmp_path, "0_loss=dpo", ["loss=dpo"], {"train/loss": 0.61, "val/loss": 0.65})
    fake_job(tmp_path, "1_loss=ipo", ["loss=ipo"], None)  # failed
    single = OmegaConf.create({"hydra": {"mode": RunMode.RUN, "sweep": {"dir": str(tmp_path)}}})
    SweepSummary().on_job_end(single, job_return=None)
    assert not (tmp_path / "summary.md").exists()  # a single run is no sweep
    sweep = OmegaConf.create({"hydra": {"mode": RunMode.MULTIRUN, "sweep": {"dir": str(tmp_path)}}})
    SweepSummary().on_job_end(sweep, job_return=None)
    assert "1 of 2 jobs done" in (tmp_path / "summary.md").read_text()


def test_a_sweep_without_metrics_writes_no_summary(tmp_path):
    fake_job(tmp_path, "0_scores=[irm]", ["scores=[irm]"], None)
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert not (tmp_path / "summary.md").exists()


def test_a_run_that_fails_at_once_leaves_no_folder(tmp_path):
    run = tmp_path / "run"
    result = run_cli("select", f"hydra.run.dir={run}")
    assert result.returncode != 0 and "scores" in result.stderr, result.stderr
    assert not run.exists(), sorted(path.name for path in run.iterdir())


def test_a_failed_run_folder_with_results_is_kept(tmp_path):
    from hydra.core.utils import JobReturn, JobStatus

    config = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(tmp_path)}, "output_subdir": ".hydra", "job": {"name": "train"}}})
    (tmp_path / ".hydra").mkdir()
    (tmp_path / "train.log").write_text("")
    (tmp_path / "checkpoints").mkdir()
    RemoveStubFolder().on_job_end(config, JobReturn(status=JobStatus.FAILED))
    assert (tmp_path / "checkpoints").is_dir()
    (tmp_path / "checkpoints").rmdir()
    RemoveStubFolder().on_job_end(config, JobReturn(status=JobStatus.COMPLETED))  # a finished run stays, stub or not
    assert tmp_path.is_dir()
    RemoveStubFolder().on_job_end(config, JobReturn(status=JobStatus.FAILED))
    assert not tmp_path.exists()
