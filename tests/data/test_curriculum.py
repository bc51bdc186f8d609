"""The easy-to-hard curriculum (``data.order_by``, ``data.order``): training batches in the order of a scores
column, the same every epoch, resumable mid-epoch, split over ranks, after a selection and with weights; and
the errors of a bad scores column. Six character-tokenised pairs, no model."""

from __future__ import annotations

import json
import logging
import math
import re

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from prefalign import distributed
from prefalign.data.datamodule import PreferenceDataModule, datamodule_from_config
from prefalign.data.records import DataError, pairs_fingerprint
from prefalign.data.restrictions import PairRestrictions
from prefalign.data.sampling import OrderedBatchSampler
from prefalign.data.scores_file import PROVENANCE_KEY
from prefalign.data.sources import LocalSource
from tests.data.test_bad_input import row, write_jsonl
from tests.data.test_tokenization import CharTokenizer

IDS = [f"p{i}" for i in range(6)]
MARGINS = [0.3, -1.0, 2.0, 0.3, 5.0, 0.0]  # p0 and p3 tie
# batches of 2 by hand: ascending -1 (p1), 0 (p5), 0.3 (p0), 0.3 (p3), 2 (p2), 5 (p4); the tie in file order both ways
ASCENDING = [["p1", "p5"], ["p0", "p3"], ["p2", "p4"]]
DESCENDING = [["p4", "p2"], ["p0", "p3"], ["p5", "p1"]]


@pytest.fixture
def source(tmp_path) -> LocalSource:
    path = write_jsonl(tmp_path / "pairs.jsonl", [row(i) for i in range(6)])
    return LocalSource(str(path), str(path))


@pytest.fixture
def scores(tmp_path):
    path = tmp_path / "scores.parquet"
    pd.DataFrame({"pair_id": IDS, "margin": MARGINS, "weight": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]}).to_parquet(path)
    return path


def datamodule(source: LocalSource, batch_size: int = 2, **options) -> PreferenceDataModule:
    """The data module of a data config with ``options`` (``order_by=...``, as on the command line)."""
    node = {"_target_": "prefalign.data.datamodule.PreferenceDataModule", "_partial_": True, "max_length": 30,
            "max_prompt_length": 20, "batch_size": batch_size, **options}
    dm = datamodule_from_config(node, source=source, tokenizer=CharTokenizer(template_writes_bos=False))
    dm.setup()
    return dm


def pair_ids(loader) -> list[list[str]]:
    return [batch["pair_ids"] for batch in loader]


@pytest.mark.parametrize(("order", "expected"), [("ascending", ASCENDING), ("descending", DESCENDING)])
def test_batches_follow_the_score_every_epoch(source, scores, order, expected, caplog):
    with caplog.at_level(logging.INFO, logger="prefalign.data.datamodule"):
        dm = datamodule(source, order_by=f"{scores}:margin", order=order)
    assert "no shuffle; data.group_by_length=true groups validation and scoring batches only" in caplog.text
    loader = dm.train_dataloader()
    assert pair_ids(loader) == expected
    loader.batch_sampler.set_epoch(1)
    assert pair_ids(loader) == expected


def test_a_resumed_epoch_continues_with_the_remaining_batches(source, scores):
    dm = datamodule(source, order_by=f"{scores}:margin")
    loader = dm.train_dataloader()
    next(iter(loader))
    state = loader.state_dict()
    assert state["position"] == 1
    fresh = dm.train_dataloader()
    fresh.load_state_dict(state)
    assert pair_ids(fresh) == ASCENDING[1:]
    assert pair_ids(fresh) == ASCENDING  # the next epoch is whole


def test_every_global_batch_is_split_into_the_rank_parts(source, scores, monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    parts = []
    for rank in range(2):
        monkeypatch.setattr(distributed, "rank", lambda: rank)
        parts.append(pair_ids(datamodule(source, batch_size=1, order_by=f"{scores}:margin").train_dataloader()))
    assert parts == [[["p1"], ["p0"], ["p2"]], [["p5"], ["p3"], ["p4"]]]
    # global batches of 4 out of 6: the last one gives each rank one item
    ranks = [OrderedBatchSampler([1, 5, 0, 3, 2, 4], 2, rank=rank, world_size=2) for rank in range(2)]
    assert [list(sampler) for sampler in ranks] == [[[1, 5], [2]], [[0, 3], [4]]]


def test_only_the_kept_pairs_of_a_selection_are_ordered_and_weighted(source, scores, tmp_path, caplog):
    # the log line is formatted only when INFO is captured, which is how a selection file without "total" once failed
    caplog.set_level(logging.INFO, logger="prefalign.data.datamodule")
    selection = tmp_path / "selection.json"
    kept = ["p0", "p2", "p3", "p4"]
    record = {"kept": kept, "rule": "topk", "data_fingerprint": pairs_fingerprint(source.load("train"))}
    selection.write_text(json.dumps(record))
    dm = datamodule(source, selection=str(selection), weights=f"{scores}:weight", order_by=f"{scores}:margin")
    batches = list(dm.train_dataloader())
    assert [batch["pair_ids"] for batch in batches] == [["p0", "p3"], ["p2", "p4"]]
    assert [batch["weights"].tolist() for batch in batches] == [[1.0, 4.0], [3.0, 5.0]]
    assert f"train: 4 of 6 pairs kept by topk ({selection})" in caplog.messages


def test_a_bad_scores_column_is_named(source, scores, tmp_path):
    with pytest.raises(DataError, match=re.escape(f"data.order_by: {scores} has no column 'nothing'")):
        datamodule(source, order_by=f"{scores}:nothing")
    partial = tmp_path / "partial.parquet"
    pd.DataFrame({"pair_id": IDS[:5], "margin": MARGINS[:5]}).to_parquet(partial)
    message = f"data.order_by: {partial} has no 'margin' for 1 training pairs, e.g. ['p5']"
    with pytest.raises(DataError, match=re.escape(message)):
        datamodule(source, order_by=f"{partial}:margin")
    nan = tmp_path / "nan.parquet"
    pd.DataFrame({"pair_id": IDS, "margin": [*MARGINS[:5], math.nan]}).to_parquet(nan)
    message = f"data.order_by: column 'margin' of {nan} is not a finite number for 1 pairs, e.g. ['p5']"
    with pytest.raises(DataError, match=re.escape(message)):
        datamodule(source, order_by=f"{nan}:margin")
    other = tmp_path / "other.parquet"
    provenance = {PROVENANCE_KEY: json.dumps({"data_fingerprint": "0" * 16}).encode()}
    pq.write_table(pa.table({"pair_id": IDS, "margin": MARGINS}).replace_schema_metadata(provenance), other)
    with pytest.raises(DataError, match=re.escape(f"data.order_by: {other} scores other data")):
        datamodule(source, order_by=f"{other}:margin")


def test_an_unknown_order_is_a_value_error_naming_the_key(source):
    with pytest.raises(ValueError, match=r"data\.order='easy': expected ascending or descending"):
        PairRestrictions(order="easy")
    with pytest.raises(ValueError, match=r"data\.order='easy': expected ascending or descending"):
        datamodule(source, order="easy")  # from a config, before any pair is read
