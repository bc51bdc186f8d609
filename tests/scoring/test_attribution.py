"""The attribution libraries' scorers: kronfluence's EK-FAC and LESS-style projected gradients, against exact IF."""

import dataclasses
import re

import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from prefalign.losses import DPOLoss
from prefalign.scoring.attribution import CountSketch, EKFACScorer, ProjectionScorer, linear_modules, linear_parameters, projected_gradients
from prefalign.scoring.base import ScoreRunner
from prefalign.scoring.influence import InfluenceScorer
from tests.scoring.test_influence import make_context, pair_files  # noqa: F401 (a fixture)


def exact_linear_influence(context):
    """Exact IF over the decoder's nn.Linear weights, the parameters both scorers track."""
    patterns = [f"^{re.escape(name)}$" for name in linear_parameters(context.policy)]
    scorer = InfluenceScorer(parameters=patterns)
    scorer.prepare(context)
    batch = next(iter(context.datamodule.eval_loader("train")))
    return batch, scorer.score_batch(context, batch, {})


@pytest.mark.parametrize("architecture", ["llama", "qwen3"])
def test_linear_parameters_are_the_decoder_projections(architecture):
    from tests.conftest import tiny_model

    model = tiny_model(architecture)
    names = linear_parameters(model)
    layers = model.config.num_hidden_layers
    # q, k, v, o and the three MLP projections of every layer; not the output projection, embeddings or norms
    assert len(names) == 7 * layers
    assert all(name.endswith("_proj.weight") for name in names)
    assert "lm_head" not in " ".join(linear_modules(model))


def test_count_sketch_keeps_inner_products():
    generator = torch.Generator().manual_seed(1)
    shapes = {"a": torch.Size([300, 400]), "b": torch.Size([50_000])}
    x = {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}
    y = {name: value + 0.5 * torch.randn(value.shape, generator=generator) for name, value in x.items()}
    exact = sum((x[name] * y[name]).sum() for name in shapes).item()
    sketch = CountSketch(shapes, dim=8192, seed=0)
    projected = torch.dot(sketch(x), sketch(y)).item()
    # the estimate's standard deviation is sqrt((|x|^2 |y|^2 + <x, y>^2) / d), about 1.7% of <x, y> here
    assert abs(projected - exact) / exact < 0.08
    # a fixed projection: the same vector always maps to the same sketch
    torch.testing.assert_close(sketch(x), CountSketch(shapes, dim=8192, seed=0)(x))


def test_count_sketch_by_hand():
    sketch = CountSketch({"w": torch.Size([3])}, dim=2)
    # draws in [0, 2d): 0 -> bucket 0, +; 3 -> bucket 1, -; 1 -> bucket 1, +
    sketch.buckets = {"w": torch.tensor([0, 3, 1], dtype=torch.int32)}
    projected = sketch({"w": torch.tensor([2.0, 5.0, 7.0])})
    torch.testing.assert_close(projected, torch.tensor([2.0, 7.0 - 5.0], dtype=torch.float64))


def test_projection_estimates_exact_influence(tokenizer, pair_files, tmp_path):  # noqa: F811
    context = make_context(tokenizer, pair_files, "llama", DPOLoss(beta=0.5), tmp_path)
    batch, exact = exact_linear_influence(context)
    scorer = ProjectionScorer(dim=1 << 20, pack_length=None)
    scorer.prepare(context)
    assert scorer._validation.shape == (2, 1 << 20)
    estimate = scorer.score_batch(context, batch, {})
    # a million buckets for the tiny model's few thousand coordinates: almost no collisions
    torch.testing.assert_close(estimate, exact, rtol=0.02, atol=0.02 * float(exact.abs().max()))
    small = ProjectionScorer(dim=8, pack_length=None)
    small.prepare(context)
    assert not torch.allclose(small.score_batch(context, batch, {}), exact, rtol=0.02, atol=0.02 * float(exact.abs().max()))
    # LESS's measure: the mean cosine similarity with the validation pairs' projected gradients
    cosine = ProjectionScorer(dim=1 << 12, measure="cosine", pack_length=None)
    cosine.prepare(context)
    values = cosine.score_batch(context, batch, {})
    pair_gradient = F.normalize(projected_gradients(cosine._losses, batch, cosine._names, cosine._sketch)[:1], dim=1)
    expected = (pair_gradient @ F.normalize(cosine._validation, dim=1).T).mean()
    assert values[0].item() == pytest.approx(expected.item(), rel=1e-9)
    assert values.abs().max() <= 1


def test_ekfac_identity_is_exact_influence_and_damping_scales_it(tokenizer, pair_files, tmp_path):  # noqa: F811
    pytest.importorskip("kronfluence")
    context = make_context(tokenizer, pair_files, "llama", DPOLoss(beta=0.5), tmp_path)
    batch, exact = exact_linear_influence(context)
    identity = EKFACScorer(strategy="identity", batch_size=4)
    identity.prepare(context)
    values = identity.score_batch(context, batch, {})
    assert exact.abs().max() > 0
    # kronfluence computes its per-pair gradients in float32
    torch.testing.assert_close(values, exact, rtol=1e-4, atol=1e-4 * float(exact.abs().max()))
    # EK-FAC with a damping far above every eigenvalue: (G + lambda)^-1 -> 1 / lambda
    damped = EKFACScorer(strategy="ekfac", damping=1e6, batch_size=4)
    damped.prepare(context)
    torch.testing.assert_close(damped.score_batch(context, batch, {}) * 1e6, exact, rtol=1e-3, atol=1e-3 * float(exact.abs().max()))
    assert not list((tmp_path).glob("kronfluence-*")), "kronfluence's scratch folder is left behind"


def test_both_scorers_in_one_scoring_run(tokenizer, pair_files, tmp_path):  # noqa: F811
    pytest.importorskip("kronfluence")
    context = make_context(tokenizer, pair_files, "qwen3", DPOLoss(beta=0.5), tmp_path)
    ekfac, projection = EKFACScorer(batch_size=4), ProjectionScorer(dim=64)
    path = ScoreRunner([ekfac, projection], shard_size=4).run(context)
    table = pq.read_table(path).to_pandas()
    assert list(table.columns) == ["pair_id", "ekfac", "projection"]
    assert table["pair_id"].tolist() == [f"p{i}" for i in range(6)]
    assert table[["ekfac", "projection"]].notna().all().all() and (table["ekfac"] != 0).all()
    # the heuristic damping preconditions: the scores are not a multiple of exact IF over the same layers
    patterns = [f"^{re.escape(name)}$" for name in linear_parameters(context.policy)]
    exact = ScoreRunner([InfluenceScorer(parameters=patterns)], shard_size=4).run(
        dataclasses.replace(context, work_dir=tmp_path / "exact"))
    ratio = table["ekfac"] / pq.read_table(exact).to_pandas()["influence"]
    assert ratio.max() - ratio.min() > 1e-3 * ratio.abs().max()


def test_option_errors_name_the_key():
    with pytest.raises(ValueError, match="score.ekfac.strategy"):
        EKFACScorer(strategy="ekafc")
    with pytest.raises(ValueError, match="score.ekfac.damping"):
        EKFACScorer(damping=0)
    with pytest.raises(ValueError, match="score.projection.measure"):
        ProjectionScorer(measure="cos")
    with pytest.raises(ValueError, match="score.projection.dim"):
        ProjectionScorer(dim=0)
