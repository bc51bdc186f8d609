"""Where a run puts its model for the passes outside ``trainer.fit`` (reference log-probs, scoring)."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from prefalign.trainer import run_device
from tests.test_configs import compose_with


def trainer(**options):
    return OmegaConf.create({"accelerator": "auto", "devices": 1, **options})


@pytest.fixture
def no_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def cuda_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_cpu_and_auto_without_an_accelerator_are_the_cpu(no_accelerator):
    assert run_device(trainer(accelerator="cpu")) == torch.device("cpu")
    assert run_device(trainer()) == torch.device("cpu")


def test_auto_and_gpu_follow_lightning_onto_cuda(cuda_present):
    assert run_device(trainer()) == torch.device("cuda", 0)
    assert run_device(trainer(accelerator="gpu")) == torch.device("cuda", 0)
    assert run_device(trainer(accelerator="cuda", devices=[1])) == torch.device("cuda", 1)
    # the CPU stays the CPU when asked for, GPU or not
    assert run_device(trainer(accelerator="cpu")) == torch.device("cpu")


def test_a_missing_or_unknown_accelerator_is_named(no_accelerator):
    with pytest.raises(ValueError, match=r"trainer.accelerator=gpu: no CUDA device"):
        run_device(trainer(accelerator="gpu"))
    with pytest.raises(ValueError, match=r"trainer.accelerator='tpu'"):
        run_device(trainer(accelerator="tpu"))


def test_the_gpu_trainer_config_puts_the_run_on_cuda(cuda_present, tmp_path):
    cfg = compose_with("train", ["trainer=gpu"], tmp_path)
    assert (cfg.trainer.accelerator, cfg.trainer.precision) == ("gpu", "bf16-true")
    assert run_device(cfg.trainer) == torch.device("cuda", 0)
    assert run_device(compose_with("train", [], tmp_path).trainer) == torch.device("cuda", 0)  # accelerator=auto
