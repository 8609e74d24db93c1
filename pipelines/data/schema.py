"""The canonical data model every adapter writes and every stage reads.

A *data set* is a directory::

    DIR/events/part-00000.parquet ...   events, EVENTS_SCHEMA
    DIR/items.parquet                   optional catalogue, ITEMS_SCHEMA
    DIR/manifest.json                   source, row counts, documented time window
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipelines.core.atomic import read_json, write_json

EVENT_TYPES: tuple[str, ...] = ("view", "cart", "fav", "purchase")
# The split's folds, in time order: ``train`` is the history for validation, train + valid the history for test.
FOLDS: tuple[str, ...] = ("train", "valid", "test")

EVENTS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("ts", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("category_id", pa.string()),
        pa.field("session_id", pa.string()),
    ]
)

ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("category_id", pa.string()),
        pa.field("attributes", pa.list_(pa.string())),
        pa.field("title", pa.string()),
        pa.field("brand", pa.string()),
        pa.field("price", pa.float64()),
    ]
)

REQUIRED_EVENT_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "event_type", "ts")


@dataclass
class Manifest:
    """What a data set is and where it came from; written last, so its presence marks a complete data set."""

    source: str
    rows: int
    users: int = 0
    items: int = 0
    catalog_items: int = 0
    # ISO timestamps of the period the source documents; validation checks events fall inside it.
    window_start: str | None = None
    window_end: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, dataset_dir: str | Path) -> None:
        write_json(Path(dataset_dir) / "manifest.json", asdict(self))

    @classmethod
    def read(cls, dataset_dir: str | Path) -> Manifest:
        return cls(**read_json(Path(dataset_dir) / "manifest.json"))


def events_dir(dataset_dir: str | Path) -> Path:
    return Path(dataset_dir) / "events"


def items_path(dataset_dir: str | Path) -> Path:
    return Path(dataset_dir) / "items.parquet"
