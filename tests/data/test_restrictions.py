"""The restrictions on the pairs (selection, weights, order, load-time flips): one frozen object, read from the data
config in one place, and what the stages that derive a run from another run's config keep of them."""

from __future__ import annotations

import dataclasses

import pytest

from prefalign.data.restrictions import CHOICES, NO_RESTRICTIONS, PairRestrictions
from tests.entry import compose_config

SET = PairRestrictions(
    selection="run/select/selection.json", weights="scores.parquet:w", order_by="scores.parquet:margin",
    order="descending", flip_fraction=0.1, val_flip_fraction=0.2, flip_seed=3,
)


def test_the_shipped_data_configs_restrict_nothing():
    for data in ("builtin", "local", "ultrafeedback", "hh_rlhf", "tldr"):
        cfg = compose_config("train", f"data={data}")
        assert PairRestrictions.from_config(cfg.data) == NO_RESTRICTIONS == PairRestrictions(), data
    assert PairRestrictions.from_config({}) == NO_RESTRICTIONS  # an older run's config, without these options


def test_read_from_the_data_options_and_written_back_as_the_same():
    options = ["data.selection=run/select/selection.json", "data.weights=scores.parquet:w",
               "data.order_by=scores.parquet:margin", "data.order=descending", "data.flip_fraction=0.1",
               "data.val_flip_fraction=0.2", "data.flip_seed=3"]
    cfg = compose_config("train", *options)
    assert PairRestrictions.from_config(cfg.data) == SET
    changes = SET.config_changes()
    assert changes == dict(option.split("=") for option in options) | {
        "data.flip_fraction": 0.1, "data.val_flip_fraction": 0.2, "data.flip_seed": 3
    }
    assert PairRestrictions.from_config({key.removeprefix("data."): value for key, value in changes.items()}) == SET
    with pytest.raises(dataclasses.FrozenInstanceError):
        SET.weights = None


def test_choices_are_dropped_and_the_noise_kept():
    assert SET.choices == {name: getattr(SET, name) for name in CHOICES} and NO_RESTRICTIONS.choices == {}
    plain = SET.without_choices()
    assert plain.choices == {}
    assert (plain.order, plain.flip_fraction, plain.val_flip_fraction, plain.flip_seed) == ("descending", 0.1, 0.2, 3)
    assert (plain.flips("train"), plain.flips("val")) == (0.1, 0.2)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"flip_fraction": 1.0}, r"data\.flip_fraction must be a fraction in \[0, 1\), got 1\.0"),
        ({"val_flip_fraction": -0.1}, r"data\.val_flip_fraction must be a fraction"),
        ({"order": "easy"}, r"data\.order='easy': expected ascending or descending"),
        ({"flip_seed": None}, r"data\.flip_seed must be a whole number, got None"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        PairRestrictions.from_config(options)


def test_the_warmup_trains_on_every_pair_with_the_noise_and_held_out_metrics_on_none(tmp_path):
    from prefalign.stages.pipeline import warmup_config

    cfg = compose_config(
        "train", "model=tiny_llama", "select=random", "data.weights=scores.parquet:w", "data.order_by=scores.parquet:m",
        "data.flip_fraction=0.1", "data.max_train_pairs=16", f"paths.output_dir={tmp_path}", f"paths.cache_dir={tmp_path}",
    )
    warm, _ = warmup_config(cfg)
    assert PairRestrictions.from_config(warm.data) == PairRestrictions(flip_fraction=0.1)
    # everything else of the data config is the run's own
    kept = {key: value for key, value in cfg.data.items() if key not in PairRestrictions.__dataclass_fields__}
    assert {key: warm.data[key] for key in kept} == kept
