"""Training on several devices: DDP on the CPU with gloo against a one-process run with the same global batch;
the global batches split across ranks; the gathered policy of a sharded run saved in Hugging Face format on every
tiny model; a multirun that Lightning's process launching would break is refused (FSDP's runs: test_fsdp.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from prefalign.data.sampling import RandomBatchSampler
from prefalign.models import TinyModel
from tests.entry import run_cli
from tests.test_cli import ARCHITECTURE, ROOT, cache_with_tokenizer, check, train

SMALL = ["model=tiny_llama", "data.max_train_pairs=48", "data.max_val_pairs=8", "optimizer.lr=1e-3", "logger=csv"]


def test_ddp_on_two_cpu_processes_matches_one_process_with_the_same_global_batch(tmp_path):
    cache = cache_with_tokenizer(tmp_path / "cache")
    one, two = tmp_path / "one", tmp_path / "two"
    check(run_cli("train", *SMALL, "data.batch_size=8", f"paths.cache_dir={cache}", f"hydra.run.dir={one}"))
    # two processes: a new interpreter whose Lightning launcher starts the second
    ddp = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "data.batch_size=4"]
    result = train(*SMALL, *ddp, f"paths.cache_dir={cache}", f"hydra.run.dir={two}")
    check(result)
    first, second = (json.loads((run / "metrics.json").read_text()) for run in (one, two))
    assert second["run"]["strategy"] == "DDPStrategy" and second["run"]["world_size"] == 2
    assert second["run"]["global_batch_size"] == first["run"]["global_batch_size"] == 8
    assert second["run"]["global_steps"] == first["run"]["global_steps"] == 6
    for key in ("val/loss", "val/rewards/accuracies", "val/rewards/margins", "val/logps/chosen", "val/logps/rejected"):
        assert abs(first[key] - second[key]) <= 1e-4, (key, first[key], second[key])
    assert first["val/rewards/margins"] != 0  # the six steps moved the policy: the comparison is not trivial
    # the other process logs warnings only; rank 0 says how the global batch is made
    assert "global batch 8 = 4 per device x 2 device(s) x 1 accumulated" in result.stderr + result.stdout
    assert (two / "policy" / "model.safetensors").exists()

    # the same under torchrun, which starts both processes up front (the passes outside fit split across them)
    three = tmp_path / "three"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py"]
    launched = subprocess.run(
        [*command, *SMALL, *ddp, f"paths.cache_dir={cache}", f"hydra.run.dir={three}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert launched.returncode == 0, launched.stderr[-3000:]
    third = json.loads((three / "metrics.json").read_text())
    assert third["run"]["world_size"] == 2 and third["run"]["global_steps"] == 6
    for key in ("val/loss", "val/rewards/margins", "val/logps/chosen"):
        assert abs(first[key] - third[key]) <= 1e-4, (key, first[key], third[key])


def test_every_rank_takes_its_part_of_the_one_process_global_batches():
    single = RandomBatchSampler(21, 6, seed=3)
    ranks = [RandomBatchSampler(21, 3, seed=3, rank=rank, world_size=2) for rank in range(2)]
    assert len(single) == len(ranks[0]) == len(ranks[1]) == 4
    for batch, first, second in zip(single, *ranks):
        assert first + second == batch  # the last global batch (3 pairs) splits 2 + 1
    tiny = [RandomBatchSampler(3, 1, seed=0, rank=rank, world_size=4) for rank in range(4)]
    parts = [next(iter(sampler)) for sampler in tiny]
    assert parts[:3] == [[i] for i in next(iter(RandomBatchSampler(3, 4, seed=0)))] and parts[3] == parts[0][:1]


@pytest.mark.parametrize("name", sorted(ARCHITECTURE))
def test_the_gathered_fsdp_policy_is_saved_in_hugging_face_format(tmp_path, tokenizer, name):
    """What ``GatherFullPolicy`` does with the full state dict a sharded run gathers on rank 0 (named as the
    training module: ``policy.<name>``), down to ``AutoModelForCausalLM.from_pretrained``, on every tiny
    architecture (the sharded runs themselves, on tiny Llama: ``tests/test_fsdp.py``)."""
    from transformers import AutoModelForCausalLM

    from prefalign.losses import DPOLoss
    from prefalign.models import save_policy
    from prefalign.module import PreferenceModule
    from prefalign.trainer import policy_weights

    module = PreferenceModule(TinyModel(name=name, architecture=ARCHITECTURE[name]).load_model(), DPOLoss(), None)
    # the trained weights live only in the gathered state (the module on rank 0 holds its shard)
    state = {key: value + 0.25 if value.is_floating_point() else value for key, value in module.state_dict().items()}
    weights = policy_weights(state)
    assert set(weights) == set(module.policy.state_dict())
    save_policy(module.policy, tokenizer, tmp_path / "policy", state_dict=weights)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert not torch.equal(loaded.get_input_embeddings().weight, module.policy.get_input_embeddings().weight)


def test_a_multirun_that_lightning_would_relaunch_is_refused(tmp_path):
    result = run_cli("train", "-m", *SMALL, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "seed=1,2",
                     f"hydra.sweep.dir={tmp_path}", f"paths.cache_dir={tmp_path / 'cache'}")
    assert result.returncode != 0 and "hydra/launcher=slurm" in result.stderr
    assert not (tmp_path / "cache").exists()  # refused before anything was computed


def test_the_sampler_refuses_a_rank_outside_the_world():
    with pytest.raises(ValueError, match="rank 2 is not one of world size 2"):
        RandomBatchSampler(4, 2, rank=2, world_size=2)
    torch.manual_seed(0)  # nothing global is touched by the samplers: the next line does not depend on them
    assert list(RandomBatchSampler(4, 2, seed=1)) == list(RandomBatchSampler(4, 2, seed=1))
