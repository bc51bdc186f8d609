"""Sharded training (``trainer=fsdp``: FSDP2 through Lightning's ``ModelParallelStrategy``) run on this CPU with two
gloo processes: the same validation metrics as one process at the same global batch, a sharded checkpoint that a
killed run resumes from to the same metrics, and a gathered policy that is exactly the trained weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from prefalign.models import TinyModel
from prefalign.trainer import FSDP2Strategy, decoder_layers
from tests.entry import run_cli
from tests.test_cli import ARCHITECTURE, ROOT, cache_with_tokenizer, check, train

# 48 pairs, a global batch of 4: 12 steps; two processes take 2 pairs each
RUN = ["model=tiny_llama", "data.max_train_pairs=48", "data.max_val_pairs=8", "optimizer.lr=1e-3", "logger=csv"]
SHARDED = ["trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=2"]
FAULT = "+callbacks.fault._target_=tests.faults."
VAL = ("val/loss", "val/rewards/accuracies", "val/rewards/margins", "val/rewards/chosen", "val/logps/chosen", "val/logps/rejected")


def metrics_of(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """One process at batch 4, and two FSDP2 processes at batch 2 each, uninterrupted."""
    cache = cache_with_tokenizer(tmp_path_factory.mktemp("cache"))
    one, two = tmp_path_factory.mktemp("one"), tmp_path_factory.mktemp("two")
    check(run_cli("train", *RUN, "data.batch_size=4", f"paths.cache_dir={cache}", f"hydra.run.dir={one}"))
    check(train(*RUN, *SHARDED, f"paths.cache_dir={cache}", f"hydra.run.dir={two}"))
    return {"cache": cache, "one": one, "two": two}


def test_fsdp2_on_two_cpu_processes_matches_one_process_with_the_same_global_batch(runs):
    first, second = metrics_of(runs["one"]), metrics_of(runs["two"])
    assert second["run"]["strategy"] == "FSDP2Strategy" and second["run"]["world_size"] == 2
    assert second["run"]["global_batch_size"] == first["run"]["global_batch_size"] == 4
    assert second["run"]["global_steps"] == first["run"]["global_steps"] == 12
    # each process's peak memory, rank by rank
    assert len(second["run"]["memory"]) == 2 and len(first["run"]["memory"]) == 1
    assert all(entry["host_peak_rss_mb"] > 100 for entry in second["run"]["memory"] + first["run"]["memory"])
    for key in VAL:
        assert abs(first[key] - second[key]) <= 1e-4, (key, first[key], second[key])
    assert abs(first["val/rewards/margins"]) > 1e-3  # the twelve steps moved the policy: the comparison is not trivial
    # the checkpoint is sharded: one file per rank, written through torch.distributed.checkpoint
    checkpoint = runs["two"] / "checkpoints" / "last.ckpt"
    assert checkpoint.is_dir() and sorted(p.name for p in checkpoint.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]


def test_the_gathered_policy_loads_with_from_pretrained_and_is_the_trained_weights(runs, tmp_path):
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    from transformers import AutoModelForCausalLM

    # the trained weights as the ranks wrote them, shard by shard, joined into one file
    dcp_to_torch_save(runs["two"] / "checkpoints" / "last.ckpt", tmp_path / "joined.pt")
    trained = torch.load(tmp_path / "joined.pt", map_location="cpu", weights_only=True)["state_dict"]
    trained = {key.removeprefix("policy."): value for key, value in trained.items() if key.startswith("policy.")}
    loaded = AutoModelForCausalLM.from_pretrained(runs["two"] / "policy").state_dict()
    assert set(loaded) <= set(trained) | {"lm_head.weight"}  # the tied head is saved once, as the embeddings
    for key, value in loaded.items():
        source = trained.get(key, trained.get("model.embed_tokens.weight"))
        assert torch.equal(value, source), key
    # and it is the one-process run's policy up to the order of floating-point sums
    single = AutoModelForCausalLM.from_pretrained(runs["one"] / "policy").state_dict()
    initial = TinyModel(name="tiny_llama", architecture="llama").load_model().state_dict()
    for key, value in loaded.items():
        moved = (single[key] - initial[key]).abs().max()
        assert (value - single[key]).abs().max() <= 1e-3 * max(float(moved), 1e-6), key


def test_a_killed_sharded_run_resumes_from_its_sharded_checkpoint_to_the_same_metrics(runs, tmp_path):
    run = tmp_path / "run"
    common = [*RUN, *SHARDED, f"paths.cache_dir={runs['cache']}", f"hydra.run.dir={run}", "callbacks.checkpoint.every_n_train_steps=5"]
    killed = train(*common, f"{FAULT}SignalAtStep", "+callbacks.fault.step=7", "+callbacks.fault.signum=SIGKILL")
    assert killed.returncode != 0 and not (run / "metrics.json").exists()
    meta = torch.load(run / "checkpoints" / "last.ckpt" / "meta.pt", map_location="cpu", weights_only=True)
    assert meta["global_step"] == 5  # the step checkpoint; nothing was written at the kill
    check(train(*common, "ckpt_path=last"))
    expected, resumed = metrics_of(runs["two"]), metrics_of(run)
    assert resumed["run"]["global_steps"] == expected["run"]["global_steps"]
    for key in (*VAL, "train/loss"):
        assert abs(expected[key] - resumed[key]) <= 1e-6, (key, expected[key], resumed[key])


def test_in_run_influence_is_refused_under_sharded_training_with_the_reason():
    from types import SimpleNamespace

    from prefalign.inrun.callback import InRunInfluence

    callback = InRunInfluence.__new__(InRunInfluence)
    with pytest.raises(ValueError, match="does not run under sharded training.*trainer=ddp"):
        callback.setup(SimpleNamespace(strategy=FSDP2Strategy()), None, "fit")


@pytest.mark.parametrize("name", sorted(ARCHITECTURE))
def test_each_decoder_layer_is_a_sharding_unit(name):
    model = TinyModel(name=name, architecture=ARCHITECTURE[name]).load_model()
    layers = decoder_layers(model)
    expected = list(model.get_decoder().layers)
    assert len(layers) == len(expected) and all(a is b for a, b in zip(layers, expected))
    with pytest.raises(ValueError, match="no decoder layers to shard"):
        decoder_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_the_fsdp_config_composes_into_the_fsdp2_strategy():
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["trainer=fsdp"])
    strategy = instantiate(cfg.trainer.strategy)
    assert isinstance(strategy, FSDP2Strategy)
    assert strategy.activation_checkpointing and strategy.reshard_after_forward
    assert strategy._save_distributed_checkpoint and strategy._tensor_parallel_size == 1
    assert cfg.trainer.use_distributed_sampler is False
