"""The shared log-prob function: completion tokens only, prefix sharing equals the plain computation."""

import dataclasses
import math

import pytest
import torch
from torch.testing import assert_close

from prefalign import logprobs
from prefalign.data.collate import collate_pairs
from prefalign.logprobs import LogpSettings, completion_logps, packed_completion_logps, pair_logps
from tests.conftest import ARCHITECTURES, tiny_model


def make_batch(seed: int = 0, mismatched: bool = False):
    generator = torch.Generator().manual_seed(seed)
    items = []
    for index, (p, c, r) in enumerate([(5, 3, 4), (2, 6, 1), (7, 2, 2)]):
        draw = lambda n: torch.randint(3, 1000, (n,), generator=generator).tolist()
        items.append(dict(pair_id=str(index), index=index, prompt_ids=draw(p), chosen_ids=draw(c), rejected_ids=draw(r)))
    if mismatched:
        for index, item in enumerate(items):
            item["kl_chosen_ids"] = items[index - 1]["chosen_ids"]
            item["kl_rejected_ids"] = items[index - 1]["rejected_ids"]
    return items, collate_pairs(items, pad_id=2)


def plain_logp(model, prompt, completion):
    """Score one unpadded sequence by hand: sum over t of log softmax(logits[|x| - 1 + t])[y_t]."""
    logits = model(torch.tensor([prompt + completion])).logits[0].double().log_softmax(-1)
    return sum(logits[len(prompt) - 1 + t, token] for t, token in enumerate(completion))


@pytest.fixture(scope="module")
def unpadded():
    """``unpadded(architecture)``: the float64 tiny model and every sequence of :func:`make_batch`'s batch scored
    on its own (:func:`plain_logp`), computed once for the four modes of an architecture."""
    computed = {}

    def get(architecture: str):
        if architecture not in computed:
            model = tiny_model(architecture, dtype="float64")
            items, _ = make_batch(mismatched=True)
            with torch.no_grad():
                expected = {name: torch.stack([plain_logp(model, it["prompt_ids"], it[f"{name}_ids"]) for it in items])
                            for name in ("chosen", "rejected", "kl_chosen", "kl_rejected")}
            computed[architecture] = model, expected
        return computed[architecture]

    return get


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("mode", ["shared_prompt", "concatenated", "packed", "packed_shared_prompt"])
def test_pair_logps_match_unpadded_sequences(architecture, mode, unpadded):
    model, expected = unpadded(architecture)
    _, batch = make_batch(mismatched=True)
    # pack_length 12 puts several sequences in one packed row and gives the longest one a row of its own; with a
    # shared prompt a segment is the prompt + 4 completions less their last tokens (chosen, rejected, KTO's two
    # mismatched): 12, 12 and 14 tokens, so 24 packs two segments into the first row (the second pair's rejected
    # completion, a single token, runs no input at all)
    pack_length = {"packed": 12, "packed_shared_prompt": 24}.get(mode)
    share = mode in ("shared_prompt", "packed_shared_prompt")
    out = pair_logps(model, batch, LogpSettings(share_prompt=share, pack_length=pack_length), mismatched=True)
    for name in ("chosen", "rejected", "kl_chosen", "kl_rejected"):
        assert_close(out[f"{name}_logps"], expected[name], rtol=1e-10, atol=1e-10)
    # lengths count completion tokens only, never the prompt or padding
    assert out["chosen_lengths"].tolist() == [3.0, 6.0, 2.0]
    assert out["rejected_lengths"].tolist() == [4.0, 1.0, 2.0]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_prefix_sharing_and_packing_give_the_same_gradient(architecture):
    model = tiny_model(architecture, dtype="float64")
    _, batch = make_batch(seed=1)
    grads = []
    # padded with a shared prompt, padded concatenated, packed with a shared prompt (two pairs in a row), packed
    for share_prompt, pack_length in ((True, None), (False, None), (True, 16), (False, 12)):
        model.zero_grad()
        out = pair_logps(model, batch, LogpSettings(share_prompt=share_prompt, pack_length=pack_length))
        (out["chosen_logps"] - 0.5 * out["rejected_logps"]).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    # HF's RMSNorm (Llama, Qwen3) computes in float32 even for a float64 model, so a different summation order
    # in the backward pass shows up at float32 precision there; GPT-NeoX's LayerNorm agrees to ~1e-14
    tolerance = 1e-12 if architecture == "gpt_neox" else 1e-6
    for other in grads[1:]:
        assert_close(other, grads[0], rtol=tolerance, atol=tolerance)


def test_single_token_completions():
    model = tiny_model("llama", dtype="float64")
    prompt_ids = torch.tensor([[5, 6, 7]])
    mask = torch.ones_like(prompt_ids)
    completion = torch.tensor([[9]])
    logps, lengths = completion_logps(model, prompt_ids, mask, completion, torch.ones_like(completion))
    assert_close(logps[0], plain_logp(model, [5, 6, 7], [9]))
    assert lengths.tolist() == [1.0]


def test_packing_names_an_empty_prompt():
    model = tiny_model("llama", dtype="float64")
    prompt_ids, prompt_mask = torch.tensor([[5, 6], [2, 2]]), torch.tensor([[1, 1], [0, 0]])
    completion_ids, completion_mask = torch.tensor([[9, 8], [7, 6]]), torch.ones(2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="prompt row 1 of the batch is empty"):
        packed_completion_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask, None, LogpSettings(pack_length=64))


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("frozen_head", [False, True])
def test_chunked_head_matches_the_generic_path_in_values_and_gradients(with_bias, frozen_head):
    generator = torch.Generator().manual_seed(0)
    tokens, width, vocab = 7, 5, 11
    hidden = torch.randn(tokens, width, generator=generator, dtype=torch.float64, requires_grad=True)
    head = torch.nn.Linear(width, vocab, bias=with_bias).double()
    head.requires_grad_(not frozen_head)  # LoRA: the head is frozen, only the hidden states need a gradient
    targets = torch.randint(0, vocab, (tokens,), generator=generator)
    upstream = torch.randn(tokens, generator=generator, dtype=torch.float64)
    inputs = [hidden] + ([] if frozen_head else list(head.parameters()))

    expected = logprobs.token_logps(head(hidden), targets)
    expected_grads = torch.autograd.grad((expected * upstream).sum(), inputs)
    value = logprobs.chunked_head_logps(hidden, head, targets, chunk_tokens=3)  # chunks of 3, 3 and 1 tokens
    grads = torch.autograd.grad((value * upstream).sum(), inputs)
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    for grad, reference in zip(grads, expected_grads):
        torch.testing.assert_close(grad, reference, rtol=1e-12, atol=1e-12)
    assert grads[0].abs().max() > 0.01


def test_chunked_head_hand_worked_two_word_vocabulary():
    """h = 1, W = (1, 0), target 0: z = (1, 0), p = (e, 1)/(1+e), logp = 1 - log(1+e);
    dlogp/dW = (onehot - p) h = (1, -1)/(1+e), dlogp/dh = W[0] - p W = 1/(1+e)."""
    hidden = torch.tensor([[1.0]], dtype=torch.float64, requires_grad=True)
    head = torch.nn.Linear(1, 2, bias=False).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0], [0.0]]))
    value = logprobs.chunked_head_logps(hidden, head, torch.tensor([0]), chunk_tokens=1)
    value.sum().backward()
    e = math.e
    assert value.item() == pytest.approx(1 - math.log(1 + e), rel=1e-12)
    assert head.weight.grad[:, 0].tolist() == pytest.approx([1 / (1 + e), -1 / (1 + e)], rel=1e-12)
    assert hidden.grad.item() == pytest.approx(1 / (1 + e), rel=1e-12)


def test_settings_are_validated_by_their_config_keys():
    for key, bad in [("head_chunk_tokens", value) for value in (0, -1, 2.5, True, "64")] + [
        ("pack_length", 0), ("pack_length", "256"), ("share_prompt", None), ("share_prompt", "yes")
    ]:
        with pytest.raises(ValueError, match=key):
            LogpSettings(**{key: bad})
    with pytest.raises(dataclasses.FrozenInstanceError):
        LogpSettings().pack_length = 64  # one object per run, shared by its passes: nobody changes it
    assert LogpSettings.from_config({"pack_length": 256, "head_chunk_tokens": 128}) == LogpSettings(True, 256, 128)
    assert LogpSettings.from_config({}) == LogpSettings()  # an older run's config: the defaults
    with pytest.raises(ValueError, match="needs settings.pack_length"):
        packed_completion_logps(tiny_model("llama"), *[torch.ones(1, 2, dtype=torch.long)] * 4, None, LogpSettings())


def test_head_chunks_and_a_replaced_vocabulary_step_are_used_by_packed_passes(monkeypatch):
    calls = []
    apply = logprobs._ChunkedHeadLogps.apply
    monkeypatch.setattr(logprobs._ChunkedHeadLogps, "apply", lambda *args: calls.append(args[4]) or apply(*args))
    model = tiny_model("llama", dtype="float64")
    generator = torch.Generator().manual_seed(4)
    prompts = torch.randint(5, 100, (2, 4), generator=generator)
    completions = torch.randint(5, 100, (2, 6), generator=generator)
    ones = torch.ones_like

    def packed(settings):
        return packed_completion_logps(model, prompts, ones(prompts), completions, ones(completions), None, settings)[0]

    expected = packed(LogpSettings(pack_length=32))
    assert calls == []
    chunked = packed(LogpSettings(pack_length=32, head_chunk_tokens=4))
    assert calls == [4]
    torch.testing.assert_close(chunked, expected, rtol=1e-12, atol=1e-12)
    # a replaced step (the JVP influence's) takes precedence over the chunks
    replaced = []

    def step(hidden, head, targets):
        replaced.append(len(targets))
        return logprobs.token_logps(head(hidden), targets)

    value = packed(LogpSettings(pack_length=32, head_chunk_tokens=4, head_logps=step))
    assert calls == [4] and replaced == [12]  # 2 completions of 6 tokens
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)


def test_two_runs_in_one_process_keep_their_own_head_chunks(tmp_path, monkeypatch):
    """Each run's passes follow its own ``head_chunk_tokens``, whichever run was set up last: nothing is left
    behind in the process by setting up a run."""
    from prefalign.run_setup import setup_run
    from prefalign.trainer import run_module
    from tests.entry import compose_config

    def setup(name: str, chunks: str) -> tuple:
        cfg = compose_config(
            "train", "model=tiny_llama", "loss=simpo", "data.max_train_pairs=4", "data.max_val_pairs=2",
            "pack_length=64", f"head_chunk_tokens={chunks}", f"paths.output_dir={tmp_path / name}",
        )
        return cfg, setup_run(cfg, write_files=False)  # writes nothing

    (chunked_cfg, chunked), (plain_cfg, plain) = setup("chunked", "4"), setup("plain", "null")
    assert chunked.logp_settings == LogpSettings(pack_length=64, head_chunk_tokens=4)
    assert plain.logp_settings == LogpSettings(pack_length=64)
    calls = []
    apply = logprobs._ChunkedHeadLogps.apply
    monkeypatch.setattr(logprobs._ChunkedHeadLogps, "apply", lambda *args: calls.append(args[4]) or apply(*args))
    model = tiny_model("llama")
    losses = {}
    # the first run's passes after the second run was set up, then the second run's
    for name, cfg, run in (("chunked", chunked_cfg, chunked), ("plain", plain_cfg, plain)):
        module = run_module(cfg, model, run.loss, run.logp_settings)
        batch = run.datamodule.collate([run.datamodule.datasets["train"][i] for i in range(2)])
        before = len(calls)
        losses[name] = module(batch)[0].losses
        assert calls[before:] == ([4] if name == "chunked" else []), name
    torch.testing.assert_close(losses["chunked"], losses["plain"], rtol=1e-5, atol=1e-6)  # same numbers, rounding aside
