"""The IF-group trajectories read off a record: groups and the predicted validation-loss change by hand."""

import pandas as pd
import pytest

from prefalign.inrun.record import RecordWriter, read_records, summarise
from prefalign.inrun.trajectories import assign_groups, group_trajectories, main


@pytest.fixture
def record(tmp_path):
    writer = RecordWriter(tmp_path / "inrun")
    # six pairs, two per step, IF at the first visit -3 .. 2: small {a, b}, medium {c, d}, large {e, f}
    first = {"a": -3.0, "b": -2.0, "c": -1.0, "d": 0.0, "e": 1.0, "f": 2.0}
    for step, pairs in enumerate([("a", "f"), ("b", "e"), ("c", "d")]):
        writer.add(step=step, epoch=0, pair_id=list(pairs), influence=[first[p] for p in pairs], loss=[0.5, 0.7],
                   margin=[0.1, -0.1], lr=0.1, refresh=0, weight=1.0)
    writer.add(step=3, epoch=1, pair_id=["a", "f"], influence=[-1.0, 4.0], loss=[0.4, 0.6], margin=[0.2, 0.0],
               lr=0.05, refresh=0, weight=1.0)
    writer.flush()
    return tmp_path


def test_groups_and_the_predicted_change_by_hand(record):
    records = read_records(record)
    groups = assign_groups(summarise(records))
    assert groups.to_dict() == {"a": "small", "b": "small", "c": "medium", "d": "medium", "e": "large", "f": "large"}
    table = group_trajectories(records, groups).set_index(["group", "step"])
    # step 0: a (small) and f (large), two pairs, lr 0.1: -0.1 / 2 x IF
    assert table.loc[("small", 0), "predicted_val_change"] == pytest.approx(-0.05 * -3.0)
    assert table.loc[("large", 0), "predicted_val_change"] == pytest.approx(-0.05 * 2.0)
    # cumulated: large = f at step 0, e at step 1, f again at step 3 (lr 0.05)
    assert table.loc[("large", 3), "predicted_val_change"] == pytest.approx(-0.05 * 2.0 - 0.05 * 1.0 - 0.025 * 4.0)
    assert table.loc[("medium", 2), "pairs"] == 2 and table.loc[("medium", 2), "loss"] == pytest.approx(0.6)


def test_the_command_writes_the_table_and_the_figure(record, capsys):
    main([str(record), "--smooth", "1"])
    assert (record / "inrun" / "if_groups.png").stat().st_size > 1000
    table = pd.read_csv(record / "inrun" / "if_groups.csv")
    assert set(table.group) == {"small", "medium", "large"}
    assert "figure:" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--by"):
        assign_groups(summarise(read_records(record)), by="influence")
