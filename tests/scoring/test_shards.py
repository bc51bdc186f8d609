"""Score shards: an interrupted run resumes with any shard size, computing only the pairs no shard holds."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from prefalign.atomic import file_record, write_checksums
from prefalign.data.datamodule import PreferenceDataModule
from prefalign.data.sources import LocalSource
from prefalign.losses import DPOLoss
from prefalign.scoring.base import ScoreRunner, ScoringContext, read_scores
from prefalign.scoring.margins import RandomScorer

PAIRS = 10


class CountingScorer(RandomScorer):
    """The random score (a function of the pair id only), counting the pairs it scores; with ``stop_at`` it
    raises on the first batch that reaches that data index, as a run killed there would stop."""

    name = "count"

    def __init__(self, stop_at: int | None = None) -> None:
        super().__init__(seed=3)
        self.stop_at = stop_at
        self.scored: list[str] = []

    def score_batch(self, context, batch, shared):
        if self.stop_at is not None and int(batch["index"].max()) >= self.stop_at:
            raise KeyboardInterrupt
        self.scored.extend(batch["pair_ids"])
        return super().score_batch(context, batch, shared)


@pytest.fixture(scope="module")
def datamodule(tokenizer, tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    rows = [
        # lengths vary, so that the batches inside a shard are reordered by length
        {"pair_id": f"p{i}", "prompt": f"Count to {i}." + " Please." * (i % 3), "chosen": " ".join(map(str, range(i + 1))),
         "rejected": "No." * (1 + i % 4)}
        for i in range(PAIRS + 2)
    ]
    (folder / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows[:PAIRS]))
    (folder / "val.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows[PAIRS:]))
    module = PreferenceDataModule(LocalSource(str(folder / "train.jsonl"), str(folder / "val.jsonl")), tokenizer, eval_batch_size=2)
    module.setup()
    return module


def score(datamodule, work_dir, shard_size: int, scorer: CountingScorer) -> pd.DataFrame:
    context = ScoringContext(torch.nn.Linear(1, 1), "policy", DPOLoss(), datamodule, None, work_dir, work_dir)
    scores, _ = read_scores(ScoreRunner([scorer], shard_size=shard_size).run(context))
    return scores


def test_a_run_resumed_with_another_shard_size_reuses_the_finished_pairs(datamodule, tmp_path, caplog):
    pair_ids = [item.pair_id for item in datamodule.datasets["train"].items]
    assert len(pair_ids) == PAIRS
    uninterrupted = score(datamodule, tmp_path / "whole", 3, CountingScorer())

    # shards of 3 pairs; killed in the third shard, after pairs 0-5 were written
    work_dir = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        score(datamodule, work_dir, 3, CountingScorer(stop_at=6))
    assert len(list((work_dir / "shards").glob("shard-*.parquet"))) == 2
    assert not (work_dir / "scores.parquet").exists()

    resumed_scorer = CountingScorer()
    with caplog.at_level("INFO", logger="prefalign.scoring.base"):
        resumed = score(datamodule, work_dir, 4, resumed_scorer)
    assert sorted(resumed_scorer.scored) == sorted(pair_ids[6:])  # only the missing pairs, each once
    assert "resuming, 2 of 3 shards already done (6 of 10 pairs)" in caplog.text
    pd.testing.assert_frame_equal(resumed, uninterrupted)

    # the folder, shards of 3 and of 4 pairs mixed, still serves the original size (and any other)
    for shard_size in (3, 5):
        (work_dir / "scores.parquet").unlink()
        again = CountingScorer()
        pd.testing.assert_frame_equal(score(datamodule, work_dir, shard_size, again), uninterrupted)
        assert again.scored == []


def test_a_shard_of_other_data_is_named_moved_aside_and_scored_again(datamodule, tmp_path, caplog):
    work_dir = tmp_path / "run"
    whole = score(datamodule, work_dir, 4, CountingScorer())
    (work_dir / "scores.parquet").unlink()
    shard = sorted((work_dir / "shards").glob("shard-*.parquet"))[0]
    table = pd.read_parquet(shard)
    pairs = table["pair_id"].tolist()
    table.loc[0, "pair_id"] = "not-in-the-data"
    table.to_parquet(shard)
    write_checksums(file_record(shard), [shard])  # with a checksum record that matches: only the pairs are wrong
    scorer = CountingScorer()
    pd.testing.assert_frame_equal(score(datamodule, work_dir, 4, scorer), whole)
    assert sorted(scorer.scored) == sorted(pairs)  # that shard's pairs only
    assert f"{shard}: this score shard holds pairs that are not in the data" in caplog.text
    assert len(list((work_dir / "corrupt" / "scores").iterdir())) == 1
