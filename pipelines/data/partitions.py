"""Users split into hash buckets: the unit of per-user work when a log is larger than memory.

Every per-user step (validation's per-user counts and duplicates, the split, candidates, features, evaluation,
batch lists) needs all of a user's events and nothing of other users. So a data set is cut into ``n`` parts by a
stable hash of the user id; each part holds whole users and is processed on its own, in one process after another
or as tasks on a Dask cluster. The hash is 64-bit FNV-1a over the id's UTF-8 bytes: a published function, so the
same id lands in the same bucket on every machine, Python version and library release.

``shuffle_by_user`` streams the source parts once (one part in memory at a time) and appends each part's rows to
the bucket files, so rows keep their source order within a bucket (sequence files rely on it for equal timestamps).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROWS_PER_PARTITION = 2_000_000  # ~0.5-1 GB of pandas per part for the per-user steps; small logs stay one part
_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


def partition_count(rows: int, rows_per_partition: int | None = None) -> int:
    """How many user buckets a data set of ``rows`` events is cut into (at least one); ``ROWS_PER_PARTITION``
    rows each unless told otherwise."""
    return max(1, math.ceil(rows / (rows_per_partition or ROWS_PER_PARTITION)))


def stable_hash(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """uint64 FNV-1a of each string's UTF-8 bytes, vectorised over byte positions (ids are short)."""
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    ids = pc.cast(ids, pa.large_string())
    offsets = np.frombuffer(ids.buffers()[1], dtype=np.int64)[ids.offset: ids.offset + len(ids) + 1]
    data = np.frombuffer(ids.buffers()[2], dtype=np.uint8) if ids.buffers()[2] is not None else np.zeros(0, np.uint8)
    lengths = np.diff(offsets)
    h = np.full(len(ids), _FNV_OFFSET, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(int(lengths.max(initial=0))):
            live = lengths > j
            h[live] = (h[live] ^ data[offsets[:-1][live] + j].astype(np.uint64)) * _FNV_PRIME
    return h


def bucket_of(ids: pa.Array | pa.ChunkedArray, n: int) -> np.ndarray:
    """int32 bucket in ``[0, n)`` of each user id."""
    return (stable_hash(ids) % np.uint64(n)).astype(np.int32)


def part_name(bucket: int) -> str:
    return f"part-{bucket:05d}.parquet"


def shuffle_by_user(parts: list[Path], out_dir: Path, n: int, column: str = "user_id") -> list[Path]:
    """Rewrite the tables in ``parts`` as ``n`` files of whole users (``part-00000.parquet`` ...) in ``out_dir``.

    One source part is held at a time; each bucket file gets one row group per source part that has its users.
    Buckets without rows get no file, so the returned paths are those written, in bucket order.
    """
    writers: dict[int, pq.ParquetWriter] = {}
    try:
        for table in _tables(parts):
            buckets = bucket_of(table[column], n)
            order = np.argsort(buckets, kind="stable")  # rows of a bucket keep their source order
            bounds = np.searchsorted(buckets[order], np.arange(n + 1))
            for b in np.flatnonzero(np.diff(bounds)):
                rows = table.take(pa.array(order[bounds[b]: bounds[b + 1]]))
                if b not in writers:
                    writers[b] = pq.ParquetWriter(out_dir / part_name(int(b)), table.schema)
                writers[b].write_table(rows)
    finally:
        for writer in writers.values():
            writer.close()
    return [out_dir / part_name(b) for b in sorted(writers)]


def _tables(parts: list[Path]) -> Iterator[pa.Table]:
    for path in parts:
        yield pq.read_table(path)
