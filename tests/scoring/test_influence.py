"""Exact influence: the batched JVP equals per-pair autograd gradients dotted with the validation gradient."""

import dataclasses
import json

import pytest
import torch

from prefalign.data.datamodule import PreferenceDataModule
from prefalign.data.sources import LocalSource
from prefalign.logprobs import LogpSettings
from prefalign.losses import DPOLoss, IPOLoss, SimPOLoss, SLiCLoss
from prefalign.models import TinyModel
from prefalign.reference import compute_pair_logps
from prefalign.scoring import jvp_head
from prefalign.scoring.base import ScoringContext
from prefalign.scoring.influence import InfluenceScorer, PairLosses, jvp_influence, per_pair_influence, select_parameters
from tests.conftest import ARCHITECTURES


@pytest.fixture(scope="module")
def pair_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("influence")
    rows = [
        {"pair_id": f"p{i}", "prompt": f"What is {a} + {b}?", "chosen": f"It is {a + b}.", "rejected": f"Maybe {a * b + 1}, I think."}
        for i, (a, b) in enumerate([(1, 2), (3, 4), (2, 7), (5, 1), (6, 6), (8, 3), (4, 4), (9, 2)])
    ]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:6]))
    (folder / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[6:]))
    return folder


def make_context(tokenizer, folder, architecture, loss, tmp_path):
    source = TinyModel(name="tiny", architecture=architecture, dtype="float64")
    model = source.load_model()
    datamodule = PreferenceDataModule(
        LocalSource(str(folder / "train.jsonl"), str(folder / "val.jsonl")), tokenizer, eval_batch_size=3
    )
    datamodule.setup()
    for split in ("train", "val"):
        datamodule.datasets[split].reference = compute_pair_logps(model, datamodule.eval_loader(split))
    # move the policy away from the reference so that the margins (and the DPO weights) are not trivial
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    return ScoringContext(model, "test", loss, datamodule, source, tmp_path, tmp_path)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("loss", [DPOLoss(beta=0.5), SLiCLoss(beta=0.5), IPOLoss(beta=0.5)], ids=["dpo", "slic", "ipo"])
def test_jvp_influence_matches_per_pair_autograd(tokenizer, pair_files, tmp_path, architecture, loss, monkeypatch):
    context = make_context(tokenizer, pair_files, architecture, loss, tmp_path)
    scorer = InfluenceScorer()
    scorer.prepare(context)  # v = the real validation gradient
    batch = next(iter(context.datamodule.eval_loader("train")))
    calls = []
    apply = jvp_head._HeadLogps.apply
    monkeypatch.setattr(jvp_head._HeadLogps, "apply", lambda *args: calls.append(1) or apply(*args))
    fast = scorer.score_batch(context, batch, {})
    assert calls, "the JVP's vocabulary step did not run through jvp_head"
    jvp_calls = len(calls)
    reference = per_pair_influence(scorer._losses, batch, scorer._direction)
    assert reference.abs().max() > 0
    assert (fast - reference).abs().max() <= 1e-6 * reference.abs().max(), (fast, reference)
    # and the primal output of the JVP is the training loss itself
    plain_losses = scorer._losses(batch)
    assert len(calls) == jvp_calls, "a pass outside the JVP took the JVP's vocabulary step"
    losses, _ = jvp_influence(scorer._losses, batch, scorer._direction)
    torch.testing.assert_close(losses, plain_losses)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_packed_batches_give_the_same_influence(tokenizer, pair_files, tmp_path, architecture):
    # the JVP runs through the 4-D block mask of packed rows and through its own attention (jvp_attention),
    # for padded and packed batches alike
    context = make_context(tokenizer, pair_files, architecture, DPOLoss(beta=0.5), tmp_path)
    # the run's rows, and its vocabulary step in chunks (the validation gradient's backward goes through them)
    run_packed = dataclasses.replace(context, logp_settings=LogpSettings(pack_length=64, head_chunk_tokens=32))
    batch = next(iter(context.datamodule.eval_loader("train")))
    scores = []
    # padded; the scorer's own rows (several pairs a row); the run's rows (about one pair a row)
    for pack_length, ctx, expected in ((None, run_packed, None), (128, context, 128), ("run", run_packed, 64)):
        scorer = InfluenceScorer(pack_length=pack_length)
        scorer.prepare(ctx)
        # the scorer's own row length, the run's other settings
        assert scorer._losses.logp_settings == dataclasses.replace(ctx.logp_settings, pack_length=expected)
        scores.append(scorer.score_batch(ctx, batch, {}))
    assert scores[0].abs().max() > 0
    for packed in scores[1:]:
        torch.testing.assert_close(packed, scores[0], rtol=1e-6, atol=1e-6 * float(scores[0].abs().max()))


def test_influence_is_the_inner_product_with_the_validation_gradient(tokenizer, pair_files, tmp_path):
    """Check the definition end to end: IF(d) = <(1/|D_val|) sum grad l(val_i), grad l(d)>."""
    context = make_context(tokenizer, pair_files, "llama", DPOLoss(beta=0.5), tmp_path)
    losses = PairLosses(context.policy, context.loss)
    parameters = dict(losses.named_parameters())
    val_batch = next(iter(context.datamodule.loader(context.datamodule.datasets["val"], 8, shuffle=False)))
    val_grads = torch.autograd.grad(losses(val_batch).mean(), list(parameters.values()), allow_unused=True)
    train_batch = next(iter(context.datamodule.eval_loader("train")))
    train_grads = torch.autograd.grad(losses(train_batch)[0], list(parameters.values()), allow_unused=True)
    expected = sum((a * b).sum() for a, b in zip(val_grads, train_grads) if a is not None and b is not None)
    scorer = InfluenceScorer()
    scorer.prepare(context)
    assert scorer.score_batch(context, train_batch, {})[0].item() == pytest.approx(expected.item(), rel=1e-6)


def test_reference_free_loss_and_parameter_subsets(tokenizer, pair_files, tmp_path):
    context = make_context(tokenizer, pair_files, "qwen3", SimPOLoss(), tmp_path)
    scorer = InfluenceScorer(parameters=[r"layers\.1\.", r"norm"])
    scorer.prepare(context)
    assert all(".layers.1." in name or "norm" in name for name in scorer._direction)
    batch = next(iter(context.datamodule.eval_loader("train")))
    fast = scorer.score_batch(context, batch, {})
    reference = per_pair_influence(scorer._losses, batch, scorer._direction)
    assert (fast - reference).abs().max() <= 1e-6 * reference.abs().max()


def test_option_errors_name_the_key():
    with pytest.raises(ValueError, match="score.influence.pack_length"):
        InfluenceScorer(pack_length=0)
    with pytest.raises(ValueError, match="score.influence.method"):
        InfluenceScorer(method="hessian")


def test_parameter_selection_errors():
    model = TinyModel(name="t", architecture="llama").load_model()
    with pytest.raises(ValueError, match="matches no parameter"):
        select_parameters(model, ["nothing_like_this"])
    assert len(select_parameters(model, "all")) == len(list(model.parameters()))
