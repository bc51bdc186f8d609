"""The online TIF rule of ``inrun.online``: by hand, then in training runs in both modes."""

import json

import numpy as np
import pytest
import torch

from prefalign.inrun.callback import OnlineBand
from prefalign.inrun.record import read_records
from tests.entry import run_cli
from tests.inrun.test_training import SMALL
from tests.test_cli import cache_with_tokenizer, check


def test_the_band_by_hand():
    band = OnlineBand(mode="previous_visit", low=10, high=90, window=10, min_values=5)
    assert band.factors(np.array([100.0, -100.0])).tolist() == [1.0, 1.0]  # no estimate yet: everything is kept
    band.observe([f"p{i}" for i in range(10)], np.arange(10.0))  # 0 .. 9: percentiles 10 and 90 are 0.9 and 8.1
    assert band.factors(np.array([0.5, 1.0, 8.0, 8.5, np.nan])).tolist() == [0.0, 1.0, 1.0, 0.0, 1.0]
    band.observe(["q"], np.array([np.nan]))  # a value that was not measured changes nothing
    assert len(band.values) == 10 and "q" not in band.last
    band.observe(["p0"], np.array([20.0]))  # the window keeps the latest 10 values: 1 .. 9, 20
    assert band.last["p0"] == 20.0 and min(band.values) == 1.0
    softer = OnlineBand(action="downweight", downweight=0.25, window=10, min_values=5)
    softer.observe([f"p{i}" for i in range(10)], np.arange(10.0))
    assert softer.factors(np.array([0.0, 5.0])).tolist() == [0.25, 1.0]


def test_the_weights_keep_the_batch_mean_and_what_was_dropped_is_counted():
    band = OnlineBand()
    batch = {"prompt_input_ids": torch.zeros(4, 2, dtype=torch.long)}
    band.apply(batch, np.array([1.0, 0.0, 1.0, 1.0]), epoch=0)
    torch.testing.assert_close(batch["weights"], torch.tensor([4 / 3, 0.0, 4 / 3, 4 / 3]))
    batch["weights"] = torch.tensor([2.0, 1.0, 1.0, 0.0])  # data weights: the rule multiplies them
    band.apply(batch, np.array([0.5, 1.0, 1.0, 1.0]), epoch=1)
    expected = torch.tensor([1.0, 1.0, 1.0, 0.0]) * 4.0 / 3.0
    torch.testing.assert_close(batch["weights"], expected)
    unchanged = {"prompt_input_ids": torch.zeros(2, 2, dtype=torch.long)}
    band.apply(unchanged, np.array([0.0, 0.0]), epoch=1)  # nothing left to rescale to: trained as it is
    assert "weights" not in unchanged
    assert band.report()["per_epoch"] == {"0": {"pairs": 4, "outside": 1}, "1": {"pairs": 6, "outside": 3}}
    state = band.state_dict()
    again = OnlineBand()
    again.load_state_dict(state)
    assert again.state_dict() == state


def test_settings_are_checked_by_name():
    for settings, key in (({"mode": "now"}, "mode"), ({"action": "skip"}, "action"), ({"low": 95}, "low < high")):
        with pytest.raises(ValueError, match=key):
            OnlineBand(**settings)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return cache_with_tokenizer(tmp_path_factory.mktemp("cache"))


ONLINE = [*SMALL, "trainer.max_epochs=3", "inrun=online_tif", "inrun.online.min_values=8", "inrun.online.low=20",
          "inrun.online.high=80"]


def test_previous_visit_drops_from_the_second_epoch_by_the_last_visits_if(cache, tmp_path):
    run = tmp_path / "run"
    check(run_cli("train", *ONLINE, f"paths.cache_dir={cache}", f"hydra.run.dir={run}"))
    records = read_records(run)
    first, later = records[records.epoch == 0], records[records.epoch > 0]
    assert (first.weight == 1).all() and first.influence.notna().all()  # no previous visit: every pair trained
    dropped = later[later.weight == 0]
    assert len(dropped) > 0 and (later.weight > 0).any()
    assert dropped.influence.isna().all()  # no gradient, no IF
    report = json.loads((run / "inrun" / "records" / "online-rank-00.json").read_text())
    assert report["per_epoch"]["0"]["outside"] == 0
    assert sum(epoch["outside"] for epoch in report["per_epoch"].values()) == len(dropped)
    # the pair's last measured IF was outside the band of the values before its visit
    pair = dropped.iloc[0]
    before = records[(records.pair_id == pair.pair_id) & (records.step < pair.step) & records.influence.notna()]
    assert len(before) >= 1


def test_same_step_scores_before_the_update_and_records_every_pair(cache, tmp_path):
    plain, online = tmp_path / "plain", tmp_path / "online"
    check(run_cli("train", *SMALL, "trainer.max_epochs=3", "inrun=influence", f"paths.cache_dir={cache}", f"hydra.run.dir={plain}"))
    check(run_cli("train", *ONLINE, "inrun.online.mode=same_step", f"paths.cache_dir={cache}", f"hydra.run.dir={online}"))
    records, reference = read_records(online), read_records(plain)
    assert records.influence.notna().all()  # the scoring pass measures the dropped pairs too
    dropped = records[records.weight == 0]
    assert len(dropped) > 0 and dropped.epoch.min() >= 0
    # until the rule first drops a pair, the two runs train alike and measure the same IF at the same weights
    first_drop = int(dropped.step.min())
    same = records[records.step <= first_drop].reset_index(drop=True)
    expected = reference[reference.step <= first_drop].reset_index(drop=True)
    np.testing.assert_allclose(same.influence, expected.influence, rtol=1e-9)
    assert list(same.pair_id) == list(expected.pair_id)
