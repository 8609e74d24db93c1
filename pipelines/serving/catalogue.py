"""Products added or changed after training: validated, logged durably, replayed into every model the API loads.

``POST /v1/catalogue/items`` appends each accepted batch to ``<root>/data/incoming/catalogue/part-*.parquet``
(the same durable write as the event log) before it answers, then serves a copy of the model that knows the
items (``ServingModel.with_catalogue``). A restarted or reloaded API replays the whole log, newest state per item
last, and several API processes on one root pick up each other's batches on their refresh poll. The rows carry the
canonical catalogue columns (``ITEMS_SCHEMA``) plus ``in_stock`` and ``updated_at``, so the next training can read
them as its catalogue.
"""

from __future__ import annotations

import math
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from pipelines.data.schema import ITEMS_SCHEMA
from pipelines.serving.events import Id, printable_id, write_batch

MAX_ATTRIBUTES = 50
MAX_TITLE_CHARS = 500
CATALOGUE_SCHEMA = ITEMS_SCHEMA.append(pa.field("in_stock", pa.bool_(), nullable=False)).append(
    pa.field("updated_at", pa.timestamp("us", tz="UTC"), nullable=False))

Title = Annotated[str, Field(min_length=1, max_length=MAX_TITLE_CHARS), AfterValidator(printable_id)]


def _finite(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


class CatalogueItem(BaseModel):
    """One product as the shop describes it; an ``item_id`` sent again replaces what was sent before."""

    model_config = ConfigDict(extra="forbid", strict=True)

    item_id: Id
    category_id: Id
    attributes: list[Id] = Field(default_factory=list, max_length=MAX_ATTRIBUTES)
    title: Title | None = None
    brand: Id | None = None
    price: Annotated[float | None, Field(ge=0), AfterValidator(_finite)] = None
    in_stock: bool = Field(True, description="false: never recommended until sent again in stock")


class CatalogueLog:
    """The durable log of catalogue batches under ``<directory>/catalogue/``."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory) / "catalogue"
        self._lock = threading.Lock()

    def append(self, items: list[CatalogueItem]) -> str:
        """Write ``items`` durably (write + fsync, milliseconds); returns the batch file's name."""
        now = datetime.now(UTC)
        rows = [item.model_dump() | {"updated_at": now} for item in items]
        table = pa.Table.from_pylist(rows, schema=CATALOGUE_SCHEMA)
        with self._lock:
            return write_batch(self.directory, table)

    def batches(self) -> list[str]:
        """The batch files written so far, oldest first (a change means other processes added items)."""
        if not self.directory.is_dir():
            return []
        return sorted(p.name for p in self.directory.glob("part-*.parquet"))

    def read(self, names: list[str] | None = None) -> list[dict[str, Any]]:
        """The newest row of every item in the batches ``names`` (default: all), in the order they were last sent."""
        latest: dict[str, dict[str, Any]] = {}
        for name in self.batches() if names is None else names:
            for row in pq.read_table(self.directory / name, schema=CATALOGUE_SCHEMA).to_pylist():
                latest.pop(row["item_id"], None)
                latest[row["item_id"]] = row
        return list(latest.values())
