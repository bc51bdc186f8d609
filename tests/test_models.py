"""The randomly initialised models: shapes as configured, including a real model's size for the GPU benchmarks."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from transformers import AutoModelForCausalLM

from prefalign.logprobs import LogpSettings, pair_logps
from prefalign.models import TinyModel
from tests.test_configs import compose_with
from tests.test_logprobs import make_batch


def test_random_qwen3_0_6b_has_the_shape_of_qwen3_0_6b(tmp_path, tokenizer):
    """Qwen/Qwen3-0.6B's config.json: 28 layers, width 1024, 16 x 128 query heads, 8 key-value heads, MLP 3072,
    tied embeddings of 151,936 rows: 596,049,920 parameters (0.44B without the embedding)."""
    source = instantiate(compose_with("train", ["model=random_qwen3_0_6b"], tmp_path).model)
    config = source.config(len(tokenizer), tokenizer.pad_token_id)
    with torch.device("meta"):  # the shape only; no weights are allocated
        model = AutoModelForCausalLM.from_config(config)
    assert sum(p.numel() for p in model.parameters()) == 596_049_920
    attention = model.model.layers[0].self_attn
    assert (attention.q_proj.out_features, attention.k_proj.out_features) == (16 * 128, 8 * 128)
    assert model.get_output_embeddings().weight.shape == (151_936, 1024)
    assert source.dtype == "bfloat16"


def test_head_width_and_vocabulary_size_can_be_set(tokenizer):
    plain = TinyModel(name="t", architecture="qwen3")
    wide = TinyModel(name="t", architecture="qwen3", head_dim=32, vocab_size=len(tokenizer) + 64)
    model = wide.load_model()
    assert model.model.layers[0].self_attn.q_proj.out_features == 4 * 32  # not 64 // 4 = 16 wide
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer) + 64
    _, batch = make_batch()
    logps = pair_logps(model, batch, LogpSettings(pack_length=64))
    assert logps["chosen_logps"].shape == (3,) and torch.isfinite(logps["chosen_logps"]).all()
    # the default shape keeps its fingerprint (cached warm-ups stay valid); a new shape gets a new one
    assert plain.fingerprint() == TinyModel(name="t", architecture="qwen3").fingerprint() != wide.fingerprint()


def test_impossible_shapes_are_named(tokenizer):
    with pytest.raises(ValueError, match=r"model.vocab_size=100 is smaller than the tokenizer's"):
        TinyModel(name="t", architecture="llama", vocab_size=100).load_model()
    with pytest.raises(ValueError, match=r"model.head_dim is for llama and qwen3"):
        TinyModel(name="t", architecture="gpt_neox", head_dim=32)
