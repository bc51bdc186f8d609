"""In-run influence from the training backward pass (ghost inner products) equals the JVP influence scorer's."""

import dataclasses

import pytest
import torch

from prefalign.data.datamodule import PreferenceDataModule
from prefalign.data.sources import LocalSource
from prefalign.inrun.ghost import GhostInfluence, select_parameters
from prefalign.logprobs import LogpSettings
from prefalign.losses import DPOLoss, IPOLoss, KTOLoss, SimPOLoss, SLiCLoss
from prefalign.module import PreferenceModule
from prefalign.reference import compute_pair_logps
from prefalign.scoring.influence import InfluenceScorer
from tests.conftest import ARCHITECTURES
from tests.scoring.test_influence import make_context, pair_files  # noqa: F401  (a fixture)

SETTINGS = {
    "padded": LogpSettings(),
    "padded-unshared": LogpSettings(share_prompt=False),
    "packed": LogpSettings(pack_length=64),
    "packed-chunked": LogpSettings(pack_length=64, head_chunk_tokens=5),
    "packed-unshared": LogpSettings(share_prompt=False, pack_length=48, head_chunk_tokens=7),
}


def ghost_step(context, settings, parameters="trainable", weights=None, accumulate=1, direction=None):
    """One training step's forward and backward with the ghost products collected: in-run IF of the batch."""
    model = context.policy
    chosen = select_parameters(model, parameters)
    ghost = GhostInfluence(model, chosen)
    ghost.attach()
    ghost.set_direction({name: direction["module.policy." + name] for name in chosen})
    module = PreferenceModule(model, context.loss, optimizer=None, logp_settings=dataclasses.replace(settings, tracer=ghost))
    batch = next(iter(context.datamodule.eval_loader("train")))

    def backward(losses):
        ((losses if weights is None else losses * weights).mean() / accumulate).backward()

    influence = ghost.pass_influence(lambda: module(batch)[0].losses, backward, len(batch["pair_ids"]), torch.device("cpu"))
    model.zero_grad(set_to_none=True)
    ghost.detach()
    return influence, batch


def scorer_influence(context, parameters="trainable"):
    scorer = InfluenceScorer(parameters=parameters)
    scorer.prepare(context)
    batch = next(iter(context.datamodule.eval_loader("train")))
    return scorer.score_batch(context, batch, {}), scorer._direction


def assert_relative(actual, expected, tolerance=1e-6):
    assert expected.abs().max() > 0
    error = ((actual - expected).abs() / expected.abs().clamp_min(1e-12 * float(expected.abs().max()))).max()
    assert error < tolerance, (actual, expected, error)


# every layout on llama, every architecture on the run's default layout, every pairwise loss on one of each
CASES = [
    *(("llama", layout, "dpo") for layout in SETTINGS),
    ("gpt_neox", "packed-chunked", "dpo"),
    ("qwen3", "packed-chunked", "dpo"),
    ("qwen3", "padded", "slic"),
    ("gpt_neox", "packed", "ipo"),
    ("llama", "padded-unshared", "ipo"),
]
LOSSES = {"dpo": DPOLoss(beta=0.5), "slic": SLiCLoss(beta=0.5), "ipo": IPOLoss(beta=0.5)}


@pytest.mark.parametrize(("architecture", "layout", "loss_name"), CASES)
def test_in_run_influence_equals_the_jvp_scorer(tokenizer, pair_files, tmp_path, architecture, layout, loss_name):
    loss = LOSSES[loss_name]
    context = make_context(tokenizer, pair_files, architecture, loss, tmp_path)
    expected, direction = scorer_influence(context)
    actual, _ = ghost_step(context, SETTINGS[layout], direction=direction)
    assert_relative(actual, expected)


@pytest.mark.parametrize("loss", [SimPOLoss(), KTOLoss(beta=0.5)], ids=["simpo", "kto"])
def test_reference_free_and_mismatched_losses(tokenizer, pair_files, tmp_path, loss):
    context = make_context(tokenizer, pair_files, "llama", loss, tmp_path)
    if loss.requires_mismatched:  # KTO's batches carry mismatched completions (their log-probs detached)
        datamodule = PreferenceDataModule(
            LocalSource(str(pair_files / "train.jsonl"), str(pair_files / "val.jsonl")), tokenizer, eval_batch_size=3, mismatched=True
        )
        datamodule.setup()
        for split in ("train", "val"):
            datamodule.datasets[split].reference = compute_pair_logps(
                context.policy, datamodule.eval_loader(split), mismatched=True
            )
        context = dataclasses.replace(context, datamodule=datamodule)
    expected, direction = scorer_influence(context)
    actual, _ = ghost_step(context, SETTINGS["packed-chunked"], direction=direction)
    assert_relative(actual, expected)


def test_weights_and_accumulation_are_divided_out(tokenizer, pair_files, tmp_path):
    """The step's mean, data weights and gradient accumulation scale each pair's gradient; IF is per pair, unscaled.
    A pair of weight 0 gets no gradient in the step, so it has no in-run IF (NaN), not a wrong 0."""
    context = make_context(tokenizer, pair_files, "qwen3", DPOLoss(beta=0.5), tmp_path)
    expected, direction = scorer_influence(context)
    weights = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)
    actual, _ = ghost_step(context, SETTINGS["packed"], weights=weights, accumulate=2, direction=direction)
    assert_relative(actual, expected)
    zero = torch.tensor([1.0, 0.0, 3.0], dtype=torch.float64)
    actual, _ = ghost_step(context, SETTINGS["padded"], weights=zero, direction=direction)
    assert torch.isnan(actual[1]) and not torch.isnan(actual[[0, 2]]).any()
    assert_relative(actual[[0, 2]], expected[[0, 2]])


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_norms_alone_go_through_the_generic_module_jvp(tokenizer, pair_files, tmp_path, architecture):
    """Parameters of norms (RMSNorm, LayerNorm, Qwen3's per-head q/k norms) take the per-module JVP path."""
    context = make_context(tokenizer, pair_files, architecture, DPOLoss(beta=0.5), tmp_path)
    expected, direction = scorer_influence(context, parameters=["norm"])
    actual, _ = ghost_step(context, SETTINGS["packed"], parameters=["norm"], direction=direction)
    assert_relative(actual, expected)


def test_hooks_do_nothing_outside_a_collected_step(tokenizer, pair_files, tmp_path):
    context = make_context(tokenizer, pair_files, "llama", DPOLoss(beta=0.5), tmp_path)
    model = context.policy
    ghost = GhostInfluence(model, select_parameters(model))
    ghost.attach()
    settings = LogpSettings(pack_length=64, tracer=ghost)
    batch = next(iter(context.datamodule.eval_loader("train")))
    traced = PreferenceModule(model, context.loss, optimizer=None, logp_settings=settings)(batch)[0].losses
    plain = PreferenceModule(model, context.loss, optimizer=None, logp_settings=LogpSettings(pack_length=64))(batch)[0].losses
    torch.testing.assert_close(traced, plain, rtol=0, atol=0)  # the tracer changes no number
    traced.sum().backward()  # not collecting: no hook adds anything, nothing fails
    assert not ghost.active
    with pytest.raises(RuntimeError, match="no direction"):
        with ghost.collecting(3, torch.device("cpu")):
            pass
    ghost.detach()
    assert not any(module._forward_hooks for module in model.modules())
