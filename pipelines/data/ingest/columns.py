"""Arrow normalisation: one chunk of source rows through a column mapping into an ``EVENTS_SCHEMA`` table.

Every check is vectorised; the first bad value raises ``DataError`` naming its file, line (or row) and column.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipelines.core.errors import DataError
from pipelines.data.ingest.csv_stream import Chunk
from pipelines.data.schema import EVENTS_SCHEMA, REQUIRED_EVENT_COLUMNS

TS_TYPE = pa.timestamp("us", tz="UTC")
OPTIONAL_COLUMNS = ("category_id", "session_id")
MAPPING_KEYS = (*REQUIRED_EVENT_COLUMNS, *OPTIONAL_COLUMNS)

_US_PER_UNIT = {"s": 1_000_000, "ms": 1_000}
_MAX_US = 2**63 - 1


@dataclass(frozen=True)
class Mapping:
    """Which source column feeds each canonical column, and how event types and timestamps are written."""

    columns: dict[str, str]  # canonical name -> source column
    events: dict[str, str]  # source event value -> canonical event type
    ts_unit: str

    def resolve(self, available: list[str], path: Path) -> Mapping:
        """Check that mapped columns exist; pick up unmapped optional columns present under their own name."""
        missing = [col for col in self.columns.values() if col not in available]
        if missing:
            raise DataError(path, f"no such column; the file has: {', '.join(available)}", column=missing[0])
        found = {name: name for name in OPTIONAL_COLUMNS if name not in self.columns and name in available}
        return Mapping(self.columns | found, self.events, self.ts_unit)

    def source_columns(self) -> list[str]:
        return list(dict.fromkeys(self.columns.values()))


def to_events(chunk: Chunk, mapping: Mapping) -> pa.Table:
    """One chunk of source rows as an EVENTS_SCHEMA table; the first bad value raises DataError."""
    columns = mapping.columns
    arrays = [
        _required_text(chunk, columns["user_id"]),
        _required_text(chunk, columns["item_id"]),
        _event_types(chunk, columns["event_type"], mapping.events),
        _timestamps(chunk, columns["ts"], mapping.ts_unit),
        _optional_text(chunk, columns.get("category_id")),
        _optional_text(chunk, columns.get("session_id")),
    ]
    return pa.Table.from_arrays(arrays, schema=EVENTS_SCHEMA)


def _first(mask: pa.Array) -> int:
    """Index of the first true value of ``mask``; callers only ask when there is one."""
    return pc.index(mask, True).as_py()


def _text(chunk: Chunk, name: str) -> pa.Array:
    """Column ``name`` as strings; raw bytes are checked for UTF-8 and the first bad row is named."""
    column = chunk.batch.column(name)
    try:
        return column.cast(pa.string())
    except pa.ArrowInvalid:
        values = column.to_pylist()
        bad = next(i for i, value in enumerate(values) if value is not None and not _is_utf8(value))
        raise chunk.error(bad, name, "invalid UTF-8 bytes") from None
    except pa.ArrowNotImplementedError:
        raise DataError(chunk.path, f"cannot read type {column.type} as text", column=name) from None


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _required_text(chunk: Chunk, name: str) -> pa.Array:
    values = _text(chunk, name)
    empty = pc.fill_null(pc.equal(pc.utf8_length(values), 0), True)
    if pc.any(empty).as_py():
        raise chunk.error(_first(empty), name, "empty value")
    return values


def _optional_text(chunk: Chunk, name: str | None) -> pa.Array:
    """An optional column, with empty strings as nulls; all nulls when the source has no such column."""
    if name is None:
        return pa.nulls(chunk.batch.num_rows, pa.string())
    values = _text(chunk, name)
    return pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)


def _event_types(chunk: Chunk, name: str, events: dict[str, str]) -> pa.Array:
    values = _required_text(chunk, name)
    index = pc.index_in(values, value_set=pa.array(list(events), pa.string()))
    if index.null_count:
        bad = _first(pc.is_null(index))
        expected = ", ".join(events)
        raise chunk.error(bad, name, f"unknown event type '{values[bad].as_py()}' (expected one of: {expected})")
    return pc.take(pa.array(list(events.values()), pa.string()), index)


def _timestamps(chunk: Chunk, name: str, unit: str) -> pa.Array:
    """Timestamps from Arrow timestamps (naive = UTC), integers (Unix ``unit``) or text (``unit`` or ISO)."""
    column = chunk.batch.column(name)
    if column.null_count:
        raise chunk.error(_first(pc.is_null(column)), name, "empty value")
    if pa.types.is_timestamp(column.type):
        return _as_utc_us(column)
    if pa.types.is_integer(column.type):
        if unit == "iso":
            raise DataError(chunk.path, f"integer timestamps need ts_unit=s or ms, not {unit}", column=name)
        return _from_epoch(chunk, name, column.cast(pa.int64()), unit)
    values = _required_text(chunk, name)
    if unit == "iso":
        return _parse_iso(chunk, name, values)
    return _from_epoch(chunk, name, _parse_int(chunk, name, values, unit), unit)


def _as_utc_us(column: pa.Array) -> pa.Array:
    """Any Arrow timestamp as microseconds in UTC; nanoseconds are truncated, naive values taken as UTC."""
    utc = column.cast(pa.timestamp(column.type.unit, tz="UTC"))
    return utc.cast(TS_TYPE, safe=column.type.unit != "ns")


def _parse_int(chunk: Chunk, name: str, values: pa.Array, unit: str) -> pa.Array:
    try:
        return values.cast(pa.int64())
    except pa.ArrowInvalid:
        bad = _first(pc.invert(pc.match_substring_regex(values, r"^-?[0-9]{1,18}$")))
        raise chunk.error(bad, name, f"non-numeric timestamp '{values[bad].as_py()}' (expected Unix {unit})") from None


def _from_epoch(chunk: Chunk, name: str, values: pa.Array, unit: str) -> pa.Array:
    limit = _MAX_US // _US_PER_UNIT[unit]
    out_of_range = pc.or_(pc.greater(values, limit), pc.less(values, -limit))
    if pc.any(out_of_range).as_py():
        bad = _first(out_of_range)
        raise chunk.error(bad, name, f"timestamp {values[bad].as_py()} out of range for Unix {unit}")
    return pc.multiply(values, _US_PER_UNIT[unit]).cast(TS_TYPE)


def _parse_iso(chunk: Chunk, name: str, values: pa.Array) -> pa.Array:
    """ISO 8601 text, with or without offset (naive = UTC); pandas accepts mixed offsets, Arrow does not."""
    import pandas as pd  # lazy: only ISO text needs it

    parsed = pd.to_datetime(values.to_pandas(), utc=True, format="ISO8601", errors="coerce")
    result = _as_utc_us(pa.Array.from_pandas(parsed))
    if result.null_count:
        bad = _first(pc.is_null(result))
        raise chunk.error(bad, name, f"not an ISO 8601 timestamp: '{values[bad].as_py()}'")
    return result
