"""The scores file, ``scores.parquet``: ``pair_id`` plus one column per score, its provenance in the metadata.

Written by the scoring stage (:class:`prefalign.scoring.base.ScoreRunner`); read by the selection stage and by
``data.weights`` (:func:`prefalign.data.datamodule.read_weights`), so the reader sits here, below both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

# the schema-metadata key of the provenance record
PROVENANCE_KEY = b"prefalign"


def scores_path(path: str | os.PathLike) -> Path:
    """The scores file a path names: the file itself, or in a folder its ``scores.parquet`` (a ``score.py`` run)
    or its ``score/scores.parquet`` (a selection-pipeline run). The path may not exist."""
    path = Path(path).expanduser()
    if path.is_dir():
        return path / "scores.parquet" if (path / "scores.parquet").exists() else path / "score" / "scores.parquet"
    return path


def read_scores_table(path: str | os.PathLike) -> tuple[pa.Table, dict[str, Any]]:
    """A scores file as an Arrow table and its provenance.

    Raises:
        FileNotFoundError: no scores file there.
        ValueError: the file is not Parquet (truncated, garbled) or its provenance is not JSON; the file is named.
    """
    file = scores_path(path)
    if not file.exists():
        raise FileNotFoundError(f"scores file {file} does not exist")
    try:
        table = pq.read_table(file)
    except (OSError, pa.ArrowException) as error:
        raise ValueError(f"scores file {file} cannot be read as Parquet (truncated or garbled?): {error}") from error
    try:
        provenance = json.loads((table.schema.metadata or {}).get(PROVENANCE_KEY, b"{}"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"scores file {file}: its provenance record is not JSON ({error})") from error
    return table, provenance


def read_scores(path: str | os.PathLike) -> tuple[pd.DataFrame, dict[str, Any]]:
    """A scores file as a DataFrame (``pair_id`` + score columns) and its provenance."""
    table, provenance = read_scores_table(path)
    return table.to_pandas(), provenance
