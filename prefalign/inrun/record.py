"""The in-run influence record: one row per pair per visit, written as Parquet shards that survive a kill.

Layout (in the training run's folder)::

    inrun/
      records/rank-00/steps-00000000-00000041.parquet   one shard per flush (each checkpoint, and the run's end)
      records/rank-01/...                               one folder per process of a DDP run
      records/online-rank-00.json                       with inrun.online: what the rule dropped, per epoch
      refreshes.json                                    every validation gradient v: its number, step, epoch,
                                                        pairs, norm and seconds
      scores.parquet                                    the per-pair summaries, an ordinary scores file

Columns of a shard (:data:`COLUMNS`): ``step`` (the optimiser step whose weights ``theta_t`` the pair was
evaluated at, before that step's update), ``epoch``, ``pair_id``, ``influence`` (``<v, grad ell(theta_t; d)>``),
``loss`` and ``margin`` (the pair's training loss and reward margin in that step), ``lr`` (the learning rate of the
step's update), ``refresh`` (which ``v``: a number in ``refreshes.json``) and ``weight`` (the factor the online
rule, ``inrun.online``, gave the pair in that step: 1 without one; 0 for a dropped pair).

Shards are flushed when a checkpoint is saved, so a run resumed from its ``last.ckpt`` finds exactly the records
of the steps before it; records of later steps (a shard flushed by a save that the checkpoint did not survive)
are dropped by :func:`truncate` and trained again, so the record of a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from prefalign.atomic import atomic_write
from prefalign.data.scores_file import PROVENANCE_KEY

log = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("epoch", pa.int64()),
        ("pair_id", pa.string()),
        ("influence", pa.float64()),
        ("loss", pa.float64()),
        ("margin", pa.float64()),
        ("lr", pa.float64()),
        ("refresh", pa.int64()),
        ("weight", pa.float64()),
    ]
)
COLUMNS = tuple(SCHEMA.names)

# the per-pair summaries (columns of inrun/scores.parquet) and their display names
SUMMARIES = {
    "inrun_if_last": "In-run IF, last visit",
    "inrun_if_mean": "In-run IF, mean over visits",
    "inrun_tracin": "In-run TracIn (learning-rate-weighted sum)",
    "inrun_if_first": "In-run IF, first visit",
}


class RecordError(ValueError):
    """An in-run record file that cannot be trusted (named, with what is wrong)."""


def records_dir(folder: str | os.PathLike) -> Path:
    """``<folder>/records``, where the ranks' shards are (``folder`` is a run's ``inrun/``)."""
    return Path(folder) / "records"


class RecordWriter:
    """This process's shards of the record: rows buffered in memory, written atomically by :meth:`flush`.

    Args:
        folder: the run's ``inrun/`` folder.
        rank: this process's rank (its own sub-folder; the ranks never write the same file).
    """

    def __init__(self, folder: str | os.PathLike, rank: int = 0) -> None:
        self.folder = records_dir(folder) / f"rank-{rank:02d}"
        self.rows: dict[str, list[Any]] = {name: [] for name in COLUMNS}

    def add(self, **columns: Any) -> None:
        """Rows for one batch: every column of :data:`COLUMNS`, each a sequence of one value per pair (or a scalar
        repeated for all of them)."""
        size = len(columns["pair_id"])
        rows = {}
        for name in COLUMNS:
            value = columns[name]
            rows[name] = list(value) if isinstance(value, (list, tuple, np.ndarray)) else [value] * size
            if len(rows[name]) != size:
                raise ValueError(f"in-run record: column {name} has {len(rows[name])} values for {size} pairs")
        for name, values in rows.items():  # all or nothing
            self.rows[name].extend(values)

    def __len__(self) -> int:
        return len(self.rows["pair_id"])

    def flush(self) -> Path | None:
        """Write the buffered rows as one shard named by its first and last step (``None``: nothing buffered)."""
        if not len(self):
            return None
        table = pa.table({name: self.rows[name] for name in COLUMNS}, schema=SCHEMA)
        steps = self.rows["step"]
        path = self.folder / f"steps-{min(steps):08d}-{max(steps):08d}.parquet"
        if path.exists():  # a second flush within the same steps (an exception right after a checkpoint)
            table = pa.concat_tables([read_shard(path), table])
        atomic_write(path, lambda tmp: pq.write_table(table, tmp))
        self.rows = {name: [] for name in COLUMNS}
        return path

    def clear(self) -> None:
        """Remove this rank's shards (a fresh run into a folder that held another run's record)."""
        if self.folder.exists():
            log.info("in-run influence: a fresh run; removing the earlier record in %s", self.folder)
            shutil.rmtree(self.folder)
        self.rows = {name: [] for name in COLUMNS}

    def truncate(self, step: int) -> int:
        """Keep only the records of steps before ``step`` (a resume from a checkpoint at ``step``); returns how many
        rows were dropped."""
        dropped = 0
        for path in sorted(self.folder.glob("steps-*.parquet")):
            table = read_shard(path)
            keep = pc.less(table.column("step"), step)
            kept = table.filter(keep)
            if kept.num_rows == table.num_rows:
                continue
            dropped += table.num_rows - kept.num_rows
            path.unlink()
            if kept.num_rows:
                steps = kept.column("step").to_pylist()
                target = path.with_name(f"steps-{min(steps):08d}-{max(steps):08d}.parquet")
                atomic_write(target, lambda tmp, kept=kept: pq.write_table(kept, tmp))
        if dropped:
            log.info("in-run influence: resumed at step %d; %d records of later steps dropped (trained again)", step, dropped)
        self.rows = {name: [] for name in COLUMNS}
        return dropped


def read_shard(path: Path) -> pa.Table:
    """One shard, checked: Parquet, with exactly the record's columns and types.

    Raises:
        RecordError: the file is truncated or garbled, or its columns are not the record's (named).
    """
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as error:
        raise RecordError(f"in-run record shard {path} cannot be read as Parquet (truncated or garbled?): {error}") from error
    if table.schema.names != list(COLUMNS):
        raise RecordError(f"in-run record shard {path} has columns {table.schema.names}, expected {list(COLUMNS)}")
    try:
        return table.cast(SCHEMA)
    except (pa.ArrowException, ValueError) as error:
        raise RecordError(f"in-run record shard {path}: a column has the wrong type ({error})") from error


def read_records(folder: str | os.PathLike) -> pd.DataFrame:
    """Every rank's records of a run (``folder``: the run, or its ``inrun/``), ordered by step and pair.

    Raises:
        FileNotFoundError: no record there.
        RecordError: a shard cannot be trusted, or two shards hold the same pair at the same step (named).
    """
    folder = Path(folder)
    if (folder / "inrun").is_dir():
        folder = folder / "inrun"
    shards = sorted(records_dir(folder).glob("rank-*/steps-*.parquet"))
    if not shards:
        raise FileNotFoundError(f"no in-run influence record in {folder} (train with inrun=influence)")
    frame = pa.concat_tables([read_shard(path) for path in shards]).to_pandas()
    twice = frame.duplicated(["step", "pair_id"], keep=False)
    if twice.any():
        example = frame[twice].iloc[0]
        raise RecordError(
            f"in-run record in {folder}: pair {example.pair_id} is recorded twice at step {example.step} "
            f"({int(twice.sum())} such rows): the shards mix runs; delete {records_dir(folder)} and train again"
        )
    return frame.sort_values(["step", "pair_id"], kind="stable").reset_index(drop=True)


def summarise(records: pd.DataFrame) -> pd.DataFrame:
    """Per-pair summaries of a record (:data:`SUMMARIES`), one row per pair, in first-visit order.

    * ``inrun_if_last``: the IF at the pair's last visit (the weights closest to the end);
    * ``inrun_if_mean``: the mean IF over its visits;
    * ``inrun_tracin``: ``sum_t lr_t IF_t`` over its visits: TracIn (Pruthi et al., NeurIPS 2020, Eq. 3, the
      checkpoints being the steps that trained the pair, with the validation loss as the test loss);
    * ``inrun_if_first``: the IF at its first visit.

    Visits without a value (a pair of data weight 0 has no gradient) are left out; a pair with none has NaN.
    """
    frame = records[records["influence"].notna()].copy()
    frame["weighted"] = frame["lr"] * frame["influence"]
    grouped = frame.sort_values("step", kind="stable").groupby("pair_id", sort=False)
    summary = pd.DataFrame(
        {
            "inrun_if_last": grouped["influence"].last(),
            "inrun_if_mean": grouped["influence"].mean(),
            "inrun_tracin": grouped["weighted"].sum(),
            "inrun_if_first": grouped["influence"].first(),
        }
    )
    order = records.drop_duplicates("pair_id")["pair_id"]
    return summary.reindex(order).rename_axis("pair_id").reset_index()


def write_scores(summary: pd.DataFrame, path: str | os.PathLike, provenance: dict[str, Any]) -> Path:
    """The summaries as an ordinary scores file (``pair_id`` + one float column each, the provenance in its
    metadata, as :mod:`prefalign.data.scores_file` reads it), written atomically."""
    table = pa.Table.from_pandas(summary[["pair_id", *SUMMARIES]], preserve_index=False)
    record = {
        **provenance,
        "scorers": {name: {"class": "InRunInfluence", "label": label} for name, label in SUMMARIES.items()},
    }
    table = table.replace_schema_metadata({PROVENANCE_KEY: json.dumps(record, default=str).encode()})
    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))
