"""The output side of an ingest: event parts of a fixed row count, exact distinct counts, the manifest, the md5
of every input, and the progress bar."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.core.errors import DataError
from pipelines.data.ingest.spec import SourceSpec
from pipelines.data.schema import Manifest, events_dir

log = logging.getLogger(__name__)

# Distinct-id buffers are re-deduplicated when they grow past twice their last size plus this many ids.
_COMPACT_SLACK = 1_000_000


@dataclass(frozen=True)
class Job:
    """Where and how an adapter writes: the temporary data set directory and the chunking/progress settings."""

    dataset: Path
    chunk_rows: int
    progress: bool

    def sink(self) -> EventSink:
        return EventSink(self.dataset, self.chunk_rows)


class _Distinct:
    """Exact distinct count of ids, held as Arrow arrays (compact for millions of ids), not Python objects."""

    def __init__(self) -> None:
        self._parts: list[pa.Array] = []
        self._size = 0
        self._compacted = 0

    def add(self, values: pa.ChunkedArray) -> None:
        unique = pc.unique(values)
        self._parts.append(unique)
        self._size += len(unique)
        if self._size > 2 * self._compacted + _COMPACT_SLACK:
            self._compact()

    def _compact(self) -> None:
        merged = pc.unique(pa.chunked_array(self._parts, pa.string()))
        self._parts, self._size, self._compacted = [merged], len(merged), len(merged)

    def values(self) -> pa.Array:
        self._compact()
        return self._parts[0]


class EventSink:
    """Writes events as parts of exactly ``chunk_rows`` rows (the last may be shorter) and counts them."""

    def __init__(self, dataset: Path, chunk_rows: int) -> None:
        self._dir = events_dir(dataset)
        self._dir.mkdir()
        self._chunk_rows = chunk_rows
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self.parts = 0
        self.rows = 0
        self.users = _Distinct()
        self.items = _Distinct()

    def add(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        self.users.add(table["user_id"])
        self.items.add(table["item_id"])
        self._pending.append(table)
        self._pending_rows += table.num_rows
        while self._pending_rows >= self._chunk_rows:
            self._flush(self._chunk_rows)

    def close(self, path: Path) -> None:
        """Write the last part; a source without a single event is an error, not an empty data set."""
        if self._pending_rows:
            self._flush(self._pending_rows)
        if self.rows == 0:
            raise DataError(path, "no events")

    def manifest(
        self, *, window: tuple[str, str] | None = None, catalog_items: int = 0, extra: dict[str, object] | None = None
    ) -> Manifest:
        """The manifest of the written events; ``source`` is filled in by ``ingest``."""
        start, end = window or (None, None)
        return Manifest(
            source="",
            rows=self.rows,
            users=len(self.users.values()),
            items=len(self.items.values()),
            catalog_items=catalog_items,
            window_start=start,
            window_end=end,
            extra=extra or {},
        )

    def _flush(self, rows: int) -> None:
        table = pa.concat_tables(self._pending)
        part = self._dir / f"part-{self.parts:05d}.parquet"
        pq.write_table(table.slice(0, rows), part)
        log.debug("ingest.part path=%s rows=%d", part.name, rows)
        rest = table.slice(rows)
        self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
        self.parts += 1


def inputs_md5(spec: SourceSpec) -> dict[str, str]:
    """md5 of every input file (as DVC computes it), so each run records the exact data version it read."""
    paths = [Path(spec.path)] + ([Path(spec.options["attributes"])] if "attributes" in spec.options else [])
    files = [f for p in paths for f in (sorted(p.rglob("*")) if p.is_dir() else [p]) if f.is_file()]
    digests = {}
    for f in files:
        digest = hashlib.md5()
        with f.open("rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 20), b""):
                digest.update(block)
        digests[str(f)] = digest.hexdigest()
    return digests


@contextmanager
def progress_bar(enabled: bool, label: str, total: int, unit: str) -> Iterator[Callable[[int, int], None]]:
    """Yield ``update(done, rows)``: a rich bar of input consumed (bytes or rows) and rows converted."""
    if not enabled:
        yield lambda done, rows: None
        return
    from rich.console import Console  # lazy: keep CLI start-up light
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    amount = DownloadColumn() if unit == "bytes" else MofNCompleteColumn()
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        amount,
        TextColumn("{task.fields[rows]:,} rows"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=Console(stderr=True)) as bar:  # stdout stays free for command output
        task = bar.add_task(f"ingest {label}", total=total, rows=0)
        yield lambda done, rows: bar.update(task, completed=done, rows=rows)
