"""Nothing non-finite is written as a result: a run whose weights or metrics go NaN stops with an error naming the
step and the pairs, writes no policy and no metrics.json, and keeps its last finite checkpoint; per-pair weights
that the training dtype cannot hold, or that are all zero in it, are refused when read; JSON is strict."""

from __future__ import annotations

import json
import math
from functools import partial
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from prefalign.atomic import write_json
from prefalign.data.records import DataError
from prefalign.losses import DPOLoss
from prefalign.module import PreferenceModule
from prefalign.trainer import final_metrics
from tests.conftest import tiny_model
from tests.data.test_curriculum import datamodule, source  # noqa: F401  (source is a fixture)
from tests.entry import run_cli
from tests.test_module import fixed_batch, pair_file  # noqa: F401  (pair_file is a fixture)


def strict_loads(text: str) -> object:
    """``json.loads`` that refuses ``NaN`` and ``Infinity``, as strict JSON readers do."""

    def refuse(constant: str) -> None:
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


def test_write_json_writes_null_for_non_finite_numbers(tmp_path):
    values = {"nan": math.nan, "inf": [math.inf, -math.inf], "numpy": np.float32(1.5), "count": np.int64(3), "ok": 0.25}
    path = write_json(values, tmp_path / "metrics.json")
    assert strict_loads(path.read_text()) == {"nan": None, "inf": [None, None], "numpy": 1.5, "count": 3.0, "ok": 0.25}
    with pytest.raises(TypeError, match="set is not JSON serializable"):
        write_json({"bad": {1, 2}}, tmp_path / "other.json")
    assert not (tmp_path / "other.json").exists()


def test_a_run_whose_weights_overflow_exits_non_zero_and_writes_no_result(tmp_path):
    # the first step at lr 1e30 leaves the weights huge but finite (saved, every step); the second makes them NaN
    run = tmp_path / "run"
    result = run_cli(
        "train", "model=tiny_llama", "debug=fast", "logger=csv", "optimizer.lr=1e30", "scheduler.warmup_ratio=0",
        "trainer.max_steps=2", "callbacks.checkpoint.every_n_train_steps=1", f"hydra.run.dir={run}",
    )
    assert result.returncode != 0
    assert "FloatingPointError: non-finite weights at global step 1" in result.stderr, result.stderr[-3000:]
    assert "pair ids ['builtin-train-" in result.stderr
    assert not (run / "policy").exists() and not (run / "metrics.json").exists()
    # the on-exception checkpoint is not of the non-finite weights: the last one is the finite step 1
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 1
    assert all(torch.isfinite(value).all() for value in checkpoint["state_dict"].values() if value.is_floating_point())


def test_non_finite_validation_metrics_stop_the_run_naming_the_pairs(tokenizer, pair_file):  # noqa: F811
    module = PreferenceModule(tiny_model("llama"), DPOLoss(), optimizer=None)
    module.log = lambda *args, **kwargs: None
    module._trainer = SimpleNamespace(sanity_checking=False, global_step=7)
    batch = fixed_batch(tokenizer, pair_file, module.policy, module.loss_fn)
    batch["reference"] = {**batch["reference"], "chosen_logps": batch["reference"]["chosen_logps"].clone()}
    batch["reference"]["chosen_logps"][3] = float("nan")
    with torch.no_grad():
        module.validation_step(batch, 0)
    with pytest.raises(FloatingPointError, match=rf"at global step 7: .*'val/loss': nan.*\['{batch['pair_ids'][3]}'\]"):
        module.on_validation_epoch_end()


def test_final_metrics_refuse_non_finite_values():
    trainer = SimpleNamespace(callback_metrics={"train/loss": torch.tensor(0.5), "val/loss": torch.tensor(math.nan)}, global_step=2)
    with pytest.raises(FloatingPointError, match=r"global step 2: \{'val/loss': nan\}"):
        final_metrics(trainer)


def test_a_non_finite_weight_in_a_batch_blames_its_own_pair(tokenizer, pair_file):  # noqa: F811
    module = PreferenceModule(tiny_model("llama"), DPOLoss(), optimizer=partial(torch.optim.AdamW, lr=1e-3))
    batch = fixed_batch(tokenizer, pair_file, module.policy, module.loss_fn)
    out, _ = module(batch)
    weights = torch.ones(len(batch["pair_ids"]))
    weights[4] = float("inf")  # 1e300 as float32
    with pytest.raises(FloatingPointError) as error:
        module._check_finite(out, batch, weights)
    message = str(error.value)
    assert f"weight (in float32) of pair ids ['{batch['pair_ids'][4]}']" in message
    assert "loss of pair ids" not in message  # the losses were finite: no other pair is blamed


def weights_file(tmp_path, values) -> str:
    path = tmp_path / "scores.parquet"
    pd.DataFrame({"pair_id": [f"p{i}" for i in range(6)], "w": values}).to_parquet(path)
    return f"{path}:w"


def test_a_weight_float32_cannot_hold_is_refused_naming_its_pair_and_column(source, tmp_path):  # noqa: F811
    spec = weights_file(tmp_path, [1.0, 1.0, 1.0, 1e300, 1.0, 1.0])
    with pytest.raises(DataError, match=r"column 'w' of .*scores.parquet is negative or not finite for 1 pairs "
                                        r"\(as float32\): pair ids \['p3'\], values \[1e\+300\]"):
        datamodule(source, weights=spec)


def test_weights_that_are_all_zero_in_the_training_dtype_are_refused(source, tmp_path):  # noqa: F811
    with pytest.raises(DataError, match=r"column 'w' of .* is zero in float32 for every training pair"):
        datamodule(source, weights=weights_file(tmp_path, [1e-320] * 6))
    # 1e-10 is a float32 but 0 in float16: a 16-true run refuses it when training starts
    dm = datamodule(source, weights=weights_file(tmp_path, [1e-10] * 6))
    dm.check_weights(torch.float32)
    with pytest.raises(DataError, match=r"is zero in float16 for every training pair"):
        dm.check_weights(torch.float16)
