"""The in-run record's shards: written atomically, truncated on resume, checked when read, summarised by hand."""


import pandas as pd
import pytest

from prefalign.inrun.record import RecordError, RecordWriter, read_records, summarise


def visit(writer, step, pairs, influence, lr=0.1, epoch=0, refresh=0):
    writer.add(step=step, epoch=epoch, pair_id=pairs, influence=influence, loss=[0.7] * len(pairs),
               margin=[0.0] * len(pairs), lr=lr, refresh=refresh, weight=1.0)


def test_summaries_by_hand(tmp_path):
    writer = RecordWriter(tmp_path)
    visit(writer, 0, ["a", "b"], [1.0, -2.0], lr=0.5)
    visit(writer, 1, ["c", "a"], [4.0, 3.0], lr=0.25, epoch=1)
    visit(writer, 2, ["b"], [float("nan")], lr=0.25, epoch=1)  # a pair of weight 0 in that step: no value
    writer.flush()
    summary = summarise(read_records(tmp_path)).set_index("pair_id")
    assert list(summary.index) == ["a", "b", "c"]  # first-visit order
    assert summary.loc["a"].to_dict() == {
        "inrun_if_last": 3.0, "inrun_if_mean": 2.0, "inrun_tracin": 0.5 * 1.0 + 0.25 * 3.0, "inrun_if_first": 1.0
    }
    assert summary.loc["b", "inrun_if_last"] == -2.0 and summary.loc["b", "inrun_tracin"] == -1.0
    assert summary.loc["c", "inrun_if_mean"] == 4.0


def test_truncate_drops_the_steps_a_resume_trains_again(tmp_path):
    writer = RecordWriter(tmp_path)
    for step in range(3):
        visit(writer, step, [f"p{step}"], [float(step)])
    writer.flush()  # steps 0-2 in one shard
    visit(writer, 3, ["p3"], [3.0])
    writer.flush()
    assert writer.truncate(2) == 2
    assert sorted(read_records(tmp_path).step) == [0, 1]
    assert [path.name for path in sorted(writer.folder.iterdir())] == ["steps-00000000-00000001.parquet"]


def test_a_fresh_run_clears_an_old_record_and_a_mixed_one_is_refused(tmp_path):
    writer = RecordWriter(tmp_path)
    visit(writer, 0, ["a"], [1.0])
    writer.flush()
    other = RecordWriter(tmp_path, rank=1)  # another process recording the same pair at the same step
    visit(other, 0, ["a"], [2.0])
    other.flush()
    with pytest.raises(RecordError, match="pair a is recorded twice at step 0"):
        read_records(tmp_path)
    other.clear()
    assert len(read_records(tmp_path)) == 1


def test_a_damaged_shard_is_named(tmp_path):
    writer = RecordWriter(tmp_path)
    visit(writer, 0, ["a"], [1.0])
    path = writer.flush()
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(RecordError, match=f"{path}.*cannot be read as Parquet"):
        read_records(tmp_path)
    pd.DataFrame({"step": [0], "pair_id": ["a"]}).to_parquet(path)
    with pytest.raises(RecordError, match="has columns"):
        read_records(tmp_path)
    with pytest.raises(FileNotFoundError, match="inrun=influence"):
        read_records(tmp_path / "nothing")


def test_rows_must_match_their_pairs(tmp_path):
    writer = RecordWriter(tmp_path)
    with pytest.raises(ValueError, match="column influence has 1 values for 2 pairs"):
        visit(writer, 0, ["a", "b"], [1.0])
    assert len(writer) == 0  # nothing of the bad batch was kept
