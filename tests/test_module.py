"""The LightningModule with every loss on every tiny architecture: the loss goes down, the policy moves."""

import json
import math
from functools import partial

import pytest
import torch

from prefalign.data.datamodule import PreferenceDataModule
from prefalign.data.sources import LocalSource
from prefalign.losses import DPOLoss, IPOLoss, KTOLoss, SFTLoss, SimPOLoss, SLiCLoss
from prefalign.module import PreferenceModule, warmup_schedule
from prefalign.reference import compute_pair_logps
from tests.conftest import ARCHITECTURES, tiny_model

LOSSES = {
    "dpo": DPOLoss,
    "slic": SLiCLoss,
    "ipo": IPOLoss,
    "simpo": SimPOLoss,
    "kto": KTOLoss,
    "sft": SFTLoss,
}


@pytest.fixture(scope="module")
def pair_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    rows = [
        {"prompt": f"What is {a} + {b}?", "chosen": f"The answer is {a + b}.", "rejected": f"I think it is {a * b + 3}."}
        for a, b in [(1, 2), (3, 4), (2, 7), (5, 1), (6, 6), (8, 3)]
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def fixed_batch(tokenizer, pair_file, model, loss):
    dm = PreferenceDataModule(
        LocalSource(str(pair_file), str(pair_file)), tokenizer, batch_size=6, mismatched=loss.requires_mismatched
    )
    dm.setup()
    dataset = dm.datasets["train"]
    dataset.reference = compute_pair_logps(model, dm.eval_loader("train"), mismatched=loss.requires_mismatched)
    return next(iter(dm.eval_loader("train")))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_loss_decreases_on_a_fixed_batch(tokenizer, pair_file, architecture, loss_name):
    torch.manual_seed(0)
    model = tiny_model(architecture)
    loss = LOSSES[loss_name]()
    batch = fixed_batch(tokenizer, pair_file, model, loss)
    initial = [p.detach().clone() for p in model.parameters()]
    module = PreferenceModule(model, loss, optimizer=partial(torch.optim.AdamW, lr=2e-3))
    optimizer = module.configure_optimizers()
    losses = []
    for _ in range(30):
        out, _ = module(batch)
        value = out.losses.mean()
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        losses.append(value.item())
    assert losses[-1] < 0.8 * losses[0], (loss_name, losses[0], losses[-1])
    moved = max((p.detach() - q).abs().max().item() for p, q in zip(model.parameters(), initial))
    assert moved > 1e-3
    if loss.requires_reference and loss_name != "kto":
        # the chosen response's implicit reward overtakes the rejected one's on the batch it was trained on
        assert (out.chosen_rewards > out.rejected_rewards).float().mean() > 0.5


@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_packed_batches_give_the_same_losses(tokenizer, pair_file, loss_name):
    model = tiny_model("llama", dtype="float64")
    loss = LOSSES[loss_name]()
    batch = fixed_batch(tokenizer, pair_file, model, loss)
    padded, _ = PreferenceModule(model, loss, optimizer=None)(batch)
    # 96 tokens a row: several pairs (with KTO's mismatched completions too) share a packed row
    packed, _ = PreferenceModule(model, loss, optimizer=None, pack_length=96)(batch)
    torch.testing.assert_close(packed.losses, padded.losses, rtol=1e-6, atol=1e-8)


def test_non_finite_loss_names_the_pairs(tokenizer, pair_file):
    model = tiny_model("llama")
    loss = DPOLoss()
    batch = fixed_batch(tokenizer, pair_file, model, loss)
    batch["reference_chosen_logps"] = batch["reference_chosen_logps"].clone()
    batch["reference_chosen_logps"][2] = float("nan")
    module = PreferenceModule(model, loss, optimizer=partial(torch.optim.AdamW, lr=1e-3))
    out, _ = module(batch)
    with pytest.raises(FloatingPointError, match=rf"pair ids \['{batch['pair_ids'][2]}'\]"):
        module._check_finite(out, batch)


def test_warmup_schedule_shapes():
    parameter = torch.nn.Parameter(torch.zeros(1))
    lrs = {}
    for decay in ("cosine", "linear", "constant"):
        optimizer = torch.optim.SGD([parameter], lr=1.0)
        scheduler = warmup_schedule(optimizer, total_steps=10, warmup_ratio=0.2, decay=decay)
        values = []
        for _ in range(10):
            values.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        lrs[decay] = values
    # warm-up over ceil(0.2 * 10) = 2 steps: 1/2, 2/2
    assert lrs["constant"] == [0.5, 1.0] + [1.0] * 8
    # then decay over the remaining 8 steps, factor 1 - k/8 at the k-th (as transformers' linear schedule)
    assert lrs["linear"] == pytest.approx([0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])
    assert lrs["cosine"][2:5] == pytest.approx([0.5 * (1 + math.cos(k * math.pi / 8)) for k in (0, 1, 2)])
