"""Reading and writing canonical data sets as pandas frames (stages that fit in memory use these)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.errors import DataError
from pipelines.data.schema import EVENTS_SCHEMA, ITEMS_SCHEMA, events_dir, items_path


def read_events(dataset_dir: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    """All events of a data set, in the canonical schema."""
    path = events_dir(dataset_dir)
    if not path.is_dir():
        raise DataError(dataset_dir, "not a shoprec data set (no events/ directory); run `shoprec ingest` first")
    table = pq.read_table(path, columns=columns, schema=EVENTS_SCHEMA)
    return table.to_pandas()


def read_items(dataset_dir: str | Path) -> pd.DataFrame | None:
    """The catalogue, or None when the data set has none."""
    path = items_path(dataset_dir)
    return pq.read_table(path).to_pandas() if path.exists() else None


def write_events(frame: pd.DataFrame, path: str | Path) -> None:
    """Write ``frame`` as one Parquet file with exactly the canonical events schema."""
    cols = [f.name for f in EVENTS_SCHEMA]
    out = frame.reindex(columns=cols)
    table = pa.Table.from_pandas(out, schema=EVENTS_SCHEMA, preserve_index=False)
    pq.write_table(table, path)


def write_items(frame: pd.DataFrame, path: str | Path) -> None:
    table = pa.Table.from_pandas(frame.reindex(columns=[f.name for f in ITEMS_SCHEMA]),
                                 schema=ITEMS_SCHEMA, preserve_index=False)
    pq.write_table(table, path)
