"""The LightningModule with every loss on every tiny architecture: the loss goes down, the policy moves."""

import json
import math
from functools import partial

import pytest
import torch

from prefalign.data.datamodule import PreferenceDataModule
from prefalign.data.sources import LocalSource
from prefalign.logprobs import LogpSettings
from prefalign.losses import DPOLoss, DrDPOLoss, IPOLoss, KTOLoss, RDPOLoss, SFTLoss, SLiCLoss, SimPOLoss
from prefalign.module import (
    KeepReferencePrecision,
    PreferenceModule,
    precision_options,
    warmup_schedule,
)
from prefalign.reference import compute_pair_logps
from tests.conftest import ARCHITECTURES, tiny_model

LOSSES = {
    "dpo": DPOLoss,
    "rdpo": RDPOLoss,
    "drdpo": DrDPOLoss,
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
    # 15 steps: SFT, the slowest to fall, is about 30 % down by then; the preference losses fall faster
    for _ in range(15):
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
    packed, _ = PreferenceModule(model, loss, optimizer=None, logp_settings=LogpSettings(pack_length=96))(batch)
    torch.testing.assert_close(packed.losses, padded.losses, rtol=1e-6, atol=1e-8)


def test_non_finite_loss_names_the_pairs(tokenizer, pair_file):
    model = tiny_model("llama")
    loss = DPOLoss()
    batch = fixed_batch(tokenizer, pair_file, model, loss)
    batch["reference"] = {**batch["reference"], "chosen_logps": batch["reference"]["chosen_logps"].clone()}
    batch["reference"]["chosen_logps"][2] = float("nan")
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


def test_half_precision_keeps_the_reference_log_probs_in_float32():
    plugin = KeepReferencePrecision("bf16-true")
    batch = {
        "reference": {"chosen_logps": torch.tensor([-130.87, -32.2587])},
        "other_values": torch.tensor([-130.87]),
        "chosen_input_ids": torch.tensor([[5, 6]]),
        "pair_ids": ["a", "b"],
    }
    converted = plugin.convert_input(batch)
    assert converted["reference"]["chosen_logps"].dtype == torch.float32
    assert converted["reference"]["chosen_logps"].tolist() == batch["reference"]["chosen_logps"].tolist()
    # what Lightning does to any other floating tensor: -130.87 has no closer bfloat16 than -131.0
    assert converted["other_values"].dtype == torch.bfloat16 and converted["other_values"].item() == -131.0
    assert converted["chosen_input_ids"].dtype == torch.long and converted["pair_ids"] == ["a", "b"]
    options = precision_options({"precision": "bf16-true", "devices": 1})
    assert options["precision"] is None and isinstance(options["plugins"][0], KeepReferencePrecision)
    assert options["devices"] == 1
    assert precision_options({"precision": "32-true"}) == {"precision": "32-true"}
    assert precision_options({"precision": "bf16-mixed"}) == {"precision": "bf16-mixed"}


def test_first_bfloat16_dpo_step_has_loss_log_2(tokenizer, pair_file):
    """Policy = reference at the first step, so every DPO loss is log 2, in bfloat16 too: the cached float32
    reference log-probs must reach the loss unrounded (Lightning's bf16-true would cast them to bfloat16)."""
    import lightning as L

    model = tiny_model("llama", dtype="bfloat16")
    loss = DPOLoss()
    batch = fixed_batch(tokenizer, pair_file, model, loss)
    module = PreferenceModule(model, loss, optimizer=partial(torch.optim.SGD, lr=0.0))
    losses, seen = [], []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))
            seen.append(batch["reference"]["chosen_logps"])

    trainer = L.Trainer(
        **precision_options({"precision": "bf16-true"}), accelerator="cpu", max_steps=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, callbacks=[Record()],
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader([batch], batch_size=None))
    # the step saw the float32 values themselves (rounded to bfloat16, they moved the loss by 7.8e-4 here)
    assert seen[0].dtype == torch.float32 and torch.equal(seen[0], batch["reference"]["chosen_logps"])
    # what remains is bfloat16 arithmetic in the two passes (4.8e-5 when measured)
    assert abs(losses[0] - math.log(2)) < 2e-4
