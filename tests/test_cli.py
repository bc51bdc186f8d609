"""End-to-end: the real ``train.py`` entry point, with the tiny models and the built-in data.

Most runs go through ``train.py``'s Hydra ``main()`` in this process (:func:`tests.entry.run_cli`); a plain run
and a ``-m`` multirun stay in a new interpreter, as a user starts them (:func:`train`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from prefalign.models import TinyModel, default_cache_dir, embedded_tokenizer_dir
from tests.entry import CliResult, run_cli

ROOT = Path(__file__).resolve().parents[1]
LOSSES = ("dpo", "slic", "simpo", "ipo", "kto")
TINY = ("tiny_llama", "tiny_pythia", "tiny_qwen3")
ARCHITECTURE = {"tiny_llama": "llama", "tiny_pythia": "gpt_neox", "tiny_qwen3": "qwen3"}
# small and quick: 24 training pairs in 3 steps, 8 validation pairs, a learning rate a random model notices
QUICK = ["data.max_train_pairs=24", "data.max_val_pairs=8", "optimizer.lr=1e-3", "logger=csv"]
# smaller still for the fifteen runs of every loss on every model: 16 training pairs in 2 steps
QUICKER = ["data.max_train_pairs=16", "data.max_val_pairs=8", "optimizer.lr=1e-3", "logger=csv"]


def train(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """``python train.py <args>`` in a new interpreter."""
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    result = subprocess.run(
        [sys.executable, "train.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    return result


def cache_with_tokenizer(folder: Path) -> Path:
    """``folder`` as a new cache (``paths.cache_dir``) that holds the tiny models' tokenizer already: a copy of the
    shared cache's verified entry, which a run would otherwise convert from GGUF into its new cache (seconds)."""
    shared = embedded_tokenizer_dir()
    shutil.copytree(shared, folder / shared.relative_to(default_cache_dir()), dirs_exist_ok=True)
    return folder


def check(result: subprocess.CompletedProcess | CliResult) -> None:
    assert result.returncode == 0, f"train.py failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"


def policy_moved(policy_dir: Path, model_name: str) -> float:
    """Largest change of any weight between the saved policy and the tiny model's initial weights."""
    initial = TinyModel(name=model_name, architecture=ARCHITECTURE[model_name]).load_model().state_dict()
    trained = load_file(policy_dir / "model.safetensors")
    shared = [key for key in trained if key in initial]  # tied weights may be stored under one name only
    assert len(shared) >= len(initial) - 1
    return max((trained[key] - initial[key]).abs().max().item() for key in shared)


def test_every_loss_on_every_tiny_model_in_one_multirun(tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("train", "-m", f"model={','.join(TINY)}", f"loss={','.join(LOSSES)}", *QUICKER, f"hydra.sweep.dir={sweep}")
    check(result)
    runs = sorted(path for path in sweep.iterdir() if path.is_dir() and (path / "metrics.json").exists())
    assert len(runs) == len(TINY) * len(LOSSES)
    for run in runs:
        metrics = json.loads((run / "metrics.json").read_text())
        model_name = metrics["run"]["model"]
        assert f"model={model_name}" in run.name and "loss=" in run.name  # one clearly named directory each
        assert metrics["run"]["train_pairs"] == 16 and metrics["run"]["global_steps"] == 2
        assert torch.isfinite(torch.tensor(metrics["train/loss"])), run.name
        for key in ("val/loss", "val/rewards/accuracies", "val/rewards/margins", "val/logps/chosen"):
            assert key in metrics, (run.name, key)
        assert policy_moved(run / "policy", model_name) > 1e-4, run.name
        assert (run / "checkpoints" / "last.ckpt").exists()
        assert json.loads((run / "data_report.json").read_text())["train"]["kept"] == 16


def test_multirun_over_losses_and_betas(tmp_path):
    # the multirun of a new interpreter, as a user starts it
    sweep = tmp_path / "sweep"
    check(train("-m", "model=tiny_llama", "loss=dpo,slic", "loss.beta=0.05,0.1", *QUICK, f"hydra.sweep.dir={sweep}"))
    names = sorted(path.name for path in sweep.iterdir() if (path / "metrics.json").exists())
    # one directory per combination, numbered by job and named by its overrides (sorted by key)
    common = "data.max_train_pairs=24,data.max_val_pairs=8,logger=csv"
    assert names == [
        f"0_{common},loss.beta=0.05,loss=dpo,model=tiny_llama,optimizer.lr=0.001",
        f"1_{common},loss.beta=0.1,loss=dpo,model=tiny_llama,optimizer.lr=0.001",
        f"2_{common},loss.beta=0.05,loss=slic,model=tiny_llama,optimizer.lr=0.001",
        f"3_{common},loss.beta=0.1,loss=slic,model=tiny_llama,optimizer.lr=0.001",
    ]


def assert_same_run_metrics(tmp_path, override: str, second: str) -> None:
    """A two-run multirun over ``override`` gives the same metrics (1e-4) in both runs."""
    sweep = tmp_path / "sweep"
    check(run_cli("train", "-m", "model=tiny_llama", override, *QUICK, f"hydra.sweep.dir={sweep}"))
    runs = sorted(path for path in sweep.iterdir() if (path / "metrics.json").exists())
    assert len(runs) == 2 and second in runs[1].name
    first, other = (json.loads((run / "metrics.json").read_text()) for run in runs)
    for key in ("train/loss", "val/loss", "val/rewards/margins", "val/logps/chosen", "val/logps/rejected"):
        assert abs(other[key] - first[key]) <= 1e-4 * max(1.0, abs(first[key])), (key, first[key], other[key])
    assert first["val/rewards/margins"] != 0  # three steps moved the policy: the comparison is not trivial


def test_packed_training_matches_padded_training(tmp_path):
    # the same run with padded and with packed batches (training steps, reference and validation passes)
    assert_same_run_metrics(tmp_path, "pack_length=null,128", "pack_length=128")


def test_compiled_training_matches_eager_training(tmp_path):
    # compile=true: the decoder runs through torch.compile (inductor) for the training and validation steps
    assert_same_run_metrics(tmp_path, "compile=false,true", "compile=True")


def test_chunked_vocabulary_training_matches_plain_training(tmp_path):
    # head_chunk_tokens (256 by default): the vocabulary step in chunks, logits recomputed in the backward pass
    assert_same_run_metrics(tmp_path, "head_chunk_tokens=null,16", "head_chunk_tokens=16")


def test_single_run_outputs_resume_and_reference_cache(tmp_path):
    run = tmp_path / "run"
    cache = cache_with_tokenizer(tmp_path / "cache")
    common = ["model=tiny_qwen3", *QUICK, f"paths.cache_dir={cache}"]
    # the plain run in a new interpreter, as a user starts it; the resume in this one
    result = train(*common, f"hydra.run.dir={run}", "logger=tensorboard", "callbacks.checkpoint.keep_training_state=true")
    check(result)
    for name in ("config.yaml", "data_report.json", "metrics.json", "policy/config.json", "policy/tokenizer.json"):
        assert (run / name).exists(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert "outputs:" in result.stderr + result.stdout  # the closing summary says where things are
    first = json.loads((run / "metrics.json").read_text())
    assert first["run"]["reference_from_cache"] == {"train": False, "val": False}
    # the saved policy loads with plain transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(run / "policy")
    AutoTokenizer.from_pretrained(run / "policy")
    # resume from the last checkpoint for a second epoch (the finished run kept its training state for it);
    # reference log-probs now come from the cache
    resumed = tmp_path / "resumed"
    check(run_cli("train", *common, f"hydra.run.dir={resumed}", f"ckpt_path={run}/checkpoints/last.ckpt", "trainer.max_epochs=2"))
    second = json.loads((resumed / "metrics.json").read_text())
    assert second["run"]["global_steps"] == 2 * first["run"]["global_steps"]
    assert second["run"]["reference_from_cache"] == {"train": True, "val": True}


def test_previous_run_as_policy_and_reference(tmp_path):
    sft = tmp_path / "sft"
    check(run_cli("train", "model=tiny_llama", "loss=sft", *QUICK, f"hydra.run.dir={sft}"))
    dpo = tmp_path / "dpo"
    check(run_cli("train", "model=tiny_llama", f"model.path={sft}", *QUICK, f"hydra.run.dir={dpo}"))
    metrics = json.loads((dpo / "metrics.json").read_text())
    assert metrics["run"]["global_steps"] == 3


def test_malformed_data_file_is_named(tmp_path):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": \n')
    result = run_cli("train", "model=tiny_llama", "data=local", f"data.source.train_path={bad}", f"hydra.run.dir={tmp_path / 'r'}")
    assert result.returncode != 0
    assert f"{bad}:2: malformed JSON" in result.stderr


def test_strict_mode_reports_dropped_pairs(tmp_path):
    data = tmp_path / "pairs.jsonl"
    rows = [{"pair_id": f"p{i}", "prompt": f"q{i}", "chosen": "a", "rejected": "b"} for i in range(6)]
    rows.append({"pair_id": "same", "prompt": "q", "chosen": "a", "rejected": "a"})
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    common = ["model=tiny_llama", "data=local", f"data.source.train_path={data}", f"data.source.val_path={data}"]
    lenient = tmp_path / "lenient"
    check(run_cli("train", *common, f"hydra.run.dir={lenient}", "logger=csv"))
    report = json.loads((lenient / "data_report.json").read_text())
    assert report["train"]["dropped"]["identical"] == 1 and report["train"]["dropped_pair_ids"]["identical"] == ["same"]
    strict = run_cli("train", *common, "data.strict=true", f"hydra.run.dir={tmp_path / 'strict'}")
    assert strict.returncode != 0 and "identical: ['same']" in strict.stderr
