"""Convert a raw source into a canonical data set directory (see ``pipelines.data.schema``).

A SOURCE is ``kind:PATH[,key=value...]``:

- ``taobao:PATH``         Tianchi UserBehavior CSV (no header; user,item,category,behavior,unix seconds)
- ``retailrocket:PATH``   RetailRocket events.csv (header; unix milliseconds)
- ``seqfile:PATH[,attributes=PATH]``  one user per line, items in time order (Amazon Beauty format)
- ``csv:PATH[,user_id=COL,...,ts_unit=s|ms|iso,header=true|false,sep=C,map=src:dst;...]``  generic CSV
- ``parquet:PATH[,user_id=COL,...,ts_unit=s|ms|iso,map=...]``  generic Parquet file or directory
- ``synthetic[:key=value,...]``  the embedded generator (``pipelines.data.generate``)

CSV and sequence inputs may be gzip or zip compressed. Every input is streamed in chunks, so memory stays
bounded however large the file is; bad input raises ``DataError`` naming the file and line, and leaves no output.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from pydantic import ValidationError

from pipelines.core.atomic import atomic_dir
from pipelines.core.config import SyntheticParams
from pipelines.core.errors import DataError
from pipelines.data.csv_stream import Chunk, Input, first_row, iter_csv, open_input, require_file
from pipelines.data.schema import (
    EVENT_TYPES,
    EVENTS_SCHEMA,
    ITEMS_SCHEMA,
    REQUIRED_EVENT_COLUMNS,
    Manifest,
    events_dir,
    items_path,
)

log = logging.getLogger(__name__)

# Tianchi dataset 649 documents its period as 2017-11-25 .. 2017-12-03 China time (UTC+8): these are the UTC
# instants of the start of Nov 25 and the end of Dec 3 there. Validation reports events outside this window.
TAOBAO_WINDOW: tuple[str, str] = ("2017-11-24T16:00:00+00:00", "2017-12-03T16:00:00+00:00")
TAOBAO_COLUMNS: list[str] = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]

# Sequence files have no time: event k of a user's line is stamped this instant plus k seconds.
SEQUENCE_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

_TS_TYPE = pa.timestamp("us", tz="UTC")
_US_PER_UNIT = {"s": 1_000_000, "ms": 1_000}
_MAX_US = 2**63 - 1
_OPTIONAL_COLUMNS = ("category_id", "session_id")
_MAPPING_KEYS = (*REQUIRED_EVENT_COLUMNS, *_OPTIONAL_COLUMNS)
_OPTIONS: dict[str, frozenset[str]] = {
    "taobao": frozenset(),
    "retailrocket": frozenset(),
    "seqfile": frozenset({"attributes"}),
    "csv": frozenset({*_MAPPING_KEYS, "ts_unit", "header", "sep", "map"}),
    "parquet": frozenset({*_MAPPING_KEYS, "ts_unit", "map"}),
    "synthetic": frozenset(SyntheticParams.model_fields),
}
# Split options only at commas that start a ``key=``, so that ``sep=,`` stays one option.
_OPTION_SPLIT = re.compile(r",(?=[A-Za-z_]+=)")
_SEPARATORS = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|", "space": " "}

# CSV block size per chunk: about this many bytes per row, within bounds that keep reads efficient.
_BYTES_PER_ROW = 64
_MIN_BLOCK_BYTES = 1 << 20
_MAX_BLOCK_BYTES = 64 << 20
# Distinct-id buffers are re-deduplicated when they grow past twice their last size plus this many ids.
_COMPACT_SLACK = 1_000_000


@dataclass
class SourceSpec:
    """A parsed SOURCE string; ``path`` is empty only for ``synthetic``."""

    kind: str
    path: str
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Mapping:
    """Which source column feeds each canonical column, and how event types and timestamps are written."""

    columns: dict[str, str]  # canonical name -> source column
    events: dict[str, str]  # source event value -> canonical event type
    ts_unit: str

    def resolve(self, available: list[str], path: Path) -> _Mapping:
        """Check that mapped columns exist; pick up unmapped optional columns present under their own name."""
        missing = [col for col in self.columns.values() if col not in available]
        if missing:
            raise DataError(path, f"no such column; the file has: {', '.join(available)}", column=missing[0])
        found = {name: name for name in _OPTIONAL_COLUMNS if name not in self.columns and name in available}
        return _Mapping(self.columns | found, self.events, self.ts_unit)

    def source_columns(self) -> list[str]:
        return list(dict.fromkeys(self.columns.values()))


_TAOBAO = _Mapping(
    {
        "user_id": "user_id",
        "item_id": "item_id",
        "event_type": "behavior_type",
        "ts": "timestamp",
        "category_id": "category_id",
    },
    {"pv": "view", "cart": "cart", "fav": "fav", "buy": "purchase"},
    "s",
)
_RETAILROCKET = _Mapping(
    {"user_id": "visitorid", "item_id": "itemid", "event_type": "event", "ts": "timestamp"},
    {"view": "view", "addtocart": "cart", "transaction": "purchase"},
    "ms",
)


# ---------------------------------------------------------------------------------------------- source specs


def parse_source(spec: str) -> SourceSpec:
    """Parse and check ``kind:PATH[,key=value...]`` up front, so a typo fails before any work is done."""
    kind, _, rest = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in _OPTIONS:
        raise DataError(spec, f"unknown source kind '{kind}' (expected one of: {', '.join(_OPTIONS)})")
    parts = _OPTION_SPLIT.split(rest) if rest else []
    path = ""
    if kind != "synthetic":
        path = parts.pop(0).strip() if parts else ""
        if not path:
            raise DataError(spec, f"missing path (expected {kind}:PATH)")
    options: dict[str, str] = {}
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq:
            raise DataError(spec, f"bad option '{part}' (expected key=value)")
        if key not in _OPTIONS[kind]:
            allowed = ", ".join(sorted(_OPTIONS[kind])) or "none"
            raise DataError(spec, f"unknown option '{key}' for {kind} (allowed: {allowed})")
        options[key] = value
    source = SourceSpec(kind, path, options)
    if kind in ("csv", "parquet"):
        _column_mapping(spec, options)
        _csv_format(spec, options)
    return source


def _csv_format(spec: str, options: dict[str, str]) -> tuple[bool, str]:
    """The ``header`` and ``sep`` options of a generic CSV source."""
    header = options.get("header", "true").lower()
    if header not in ("true", "false"):
        raise DataError(spec, f"option 'header': expected true or false, got '{header}'")
    sep = _SEPARATORS.get(options.get("sep", ","), options.get("sep", ","))
    if len(sep) != 1:
        raise DataError(spec, f"option 'sep': expected one character (or tab, pipe ...), got '{sep}'")
    return header == "true", sep


def _column_mapping(spec: str, options: dict[str, str]) -> _Mapping:
    """Column mapping of a generic source; without a header, columns are named by number, 1 first."""
    if options.get("header", "true").lower() == "false":
        columns = {name: str(number) for number, name in enumerate(REQUIRED_EVENT_COLUMNS, 1)}
    else:
        columns = {name: name for name in REQUIRED_EVENT_COLUMNS}
    columns |= {key: options[key] for key in _MAPPING_KEYS if key in options}
    ts_unit = options.get("ts_unit", "iso")
    if ts_unit not in ("s", "ms", "iso"):
        raise DataError(spec, f"option 'ts_unit': expected s, ms or iso, got '{ts_unit}'")
    events = {name: name for name in EVENT_TYPES} | _event_map(spec, options.get("map", ""))
    return _Mapping(columns, events, ts_unit)


def _event_map(spec: str, text: str) -> dict[str, str]:
    """Parse ``map=pv:view;buy:purchase`` into {source value: canonical event type}."""
    mapping: dict[str, str] = {}
    for pair in filter(None, text.split(";")):
        source_value, colon, target = pair.partition(":")
        if not colon or target not in EVENT_TYPES:
            raise DataError(spec, f"option 'map': bad pair '{pair}' (expected VALUE:{'|'.join(EVENT_TYPES)})")
        mapping[source_value] = target
    return mapping


# ---------------------------------------------------------------------------------------------- entry point


def ingest(
    source: str,
    out_dir: str | Path,
    *,
    chunk_rows: int = 500_000,
    progress: bool = False,
    synthetic: SyntheticParams | None = None,
) -> Manifest:
    """Convert ``source`` into the data set ``out_dir``, atomically: on any error ``out_dir`` is untouched.

    ``chunk_rows`` bounds the rows held in memory and written per ``events/part-NNNNN.parquet``.
    ``synthetic`` is the base for ``synthetic`` sources (e.g. ``params.yaml``'s section); options override it.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    spec = parse_source(source)
    if spec.kind == "synthetic":
        return _ingest_synthetic(spec, source, Path(out_dir), progress, synthetic or SyntheticParams())
    _require_inputs(spec)
    log.debug("ingest.start source=%s out_dir=%s chunk_rows=%d", source, out_dir, chunk_rows)
    with atomic_dir(out_dir) as tmp:
        manifest = _ADAPTERS[spec.kind](spec, _Job(tmp, chunk_rows, progress))
        manifest.source = source
        manifest.extra["inputs_md5"] = _inputs_md5(spec)
        manifest.write(tmp)
    log.debug("ingest.done source=%s rows=%d users=%d items=%d", source, manifest.rows, manifest.users, manifest.items)
    return manifest


def _inputs_md5(spec: SourceSpec) -> dict[str, str]:
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


def _require_inputs(spec: SourceSpec) -> None:
    """Check input files before ``atomic_dir`` creates anything."""
    path = Path(spec.path)
    if spec.kind == "parquet":
        if not path.exists():
            raise DataError(path, "no such file or directory")
    else:
        require_file(path)
    if "attributes" in spec.options:
        require_file(Path(spec.options["attributes"]))


def _ingest_synthetic(spec: SourceSpec, source: str, out_dir: Path, progress: bool, base: SyntheticParams) -> Manifest:
    from pipelines.data.generate import generate  # lazy: only synthetic sources need the generator

    try:
        params = SyntheticParams.model_validate(base.model_dump() | spec.options)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise DataError(source, f"option '{error['loc'][0]}': {error['msg']}") from None
    with atomic_dir(out_dir) as tmp:
        manifest = generate(tmp, params, progress=progress)
        manifest.source = source
        manifest.write(tmp)
    return manifest


# ---------------------------------------------------------------------------------------------- adapters


@dataclass(frozen=True)
class _Job:
    """Where and how an adapter writes: the temporary data set directory and the chunking/progress settings."""

    dataset: Path
    chunk_rows: int
    progress: bool

    def sink(self) -> _EventSink:
        return _EventSink(self.dataset, self.chunk_rows)


@dataclass(frozen=True)
class _CsvLayout:
    names: list[str]  # every column of the file, in order
    header: bool
    sep: str = ","


def _ingest_taobao(spec: SourceSpec, job: _Job) -> Manifest:
    layout = _CsvLayout(TAOBAO_COLUMNS, header=False)
    return _read_csv(Path(spec.path), layout, _TAOBAO, job).manifest(window=TAOBAO_WINDOW)


def _ingest_retailrocket(spec: SourceSpec, job: _Job) -> Manifest:
    path = Path(spec.path)
    layout = _CsvLayout(first_row(path, ","), header=True)
    return _read_csv(path, layout, _RETAILROCKET, job).manifest()


def _ingest_csv(spec: SourceSpec, job: _Job) -> Manifest:
    path = Path(spec.path)
    header, sep = _csv_format(spec.path, spec.options)
    fields = first_row(path, sep)
    names = fields if header else [str(number) for number in range(1, len(fields) + 1)]
    mapping = _column_mapping(spec.path, spec.options)
    return _read_csv(path, _CsvLayout(names, header, sep), mapping, job).manifest()


def _read_csv(path: Path, layout: _CsvLayout, mapping: _Mapping, job: _Job) -> _EventSink:
    """Stream a CSV file through ``mapping`` into event parts."""
    mapping = mapping.resolve(layout.names, path)
    block_size = min(max(job.chunk_rows * _BYTES_PER_ROW, _MIN_BLOCK_BYTES), _MAX_BLOCK_BYTES)
    sink = job.sink()
    with open_input(path) as src, _progress(job.progress, path.name, src.size, "bytes") as update:
        chunks = iter_csv(
            src,
            names=layout.names,
            include=mapping.source_columns(),
            sep=layout.sep,
            header=layout.header,
            block_size=block_size,
        )
        for chunk in chunks:
            sink.add(_to_events(chunk, mapping))
            update(src.bytes_read(), sink.rows)
    sink.close(path)
    return sink


def _ingest_parquet(spec: SourceSpec, job: _Job) -> Manifest:
    path = Path(spec.path)
    try:
        source = ds.dataset(path, format="parquet")
        total = source.count_rows()
    except (pa.ArrowException, OSError) as exc:
        raise DataError(path, f"not a readable Parquet file or directory: {str(exc).splitlines()[0]}") from None
    mapping = _column_mapping(spec.path, spec.options).resolve(source.schema.names, path)
    sink = job.sink()
    with _progress(job.progress, path.name, total, "rows") as update:
        for fragment in source.get_fragments():
            for chunk in _parquet_chunks(fragment, mapping.source_columns(), job.chunk_rows):
                sink.add(_to_events(chunk, mapping))
                update(sink.rows, sink.rows)
    sink.close(path)
    return sink.manifest()


def _parquet_chunks(fragment: ds.Fragment, columns: list[str], chunk_rows: int) -> Iterator[Chunk]:
    """Batches of one Parquet file, numbered by row within that file."""
    first = 1
    try:
        for batch in fragment.to_batches(columns=columns, batch_size=chunk_rows):
            yield Chunk(batch, Path(fragment.path), first, unit="row")
            first += batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        raise DataError(fragment.path, f"cannot read Parquet: {str(exc).splitlines()[0]}") from None


def _ingest_seqfile(spec: SourceSpec, job: _Job) -> Manifest:
    """Sequence file: every event is a purchase, and timestamps are synthetic.

    Event k (from 0) of a user's line is stamped ``SEQUENCE_EPOCH`` + k seconds: only the order within a user
    is meaningful, never the time itself or comparisons across users. Hence no window and
    ``extra.synthetic_time``.
    """
    path = Path(spec.path)
    sink = job.sink()
    with open_input(path) as src, _progress(job.progress, path.name, src.size, "bytes") as update:
        for table in _sequence_tables(src, job.chunk_rows):
            sink.add(table)
            update(src.bytes_read(), sink.rows)
    sink.close(path)
    catalog_items = 0
    if "attributes" in spec.options:
        catalog = _catalog(Path(spec.options["attributes"]), sink.items.values())
        pq.write_table(catalog, items_path(job.dataset))
        catalog_items = catalog.num_rows
    return sink.manifest(catalog_items=catalog_items, extra={"synthetic_time": True})


def _sequence_tables(src: Input, chunk_rows: int) -> Iterator[pa.Table]:
    """Events of ``user item item ...`` lines, in tables of about ``chunk_rows`` rows."""
    users: list[str] = []
    items: list[str] = []
    order: list[int] = []
    for number, raw in enumerate(src.stream, 1):
        try:
            fields = raw.decode("utf-8").split()
        except UnicodeDecodeError:
            raise DataError(src.path, "invalid UTF-8 bytes", line=number) from None
        if not fields:
            continue
        if len(fields) == 1:
            raise DataError(src.path, f"user '{fields[0]}' has no items", line=number)
        users.extend(itertools.repeat(fields[0], len(fields) - 1))
        items.extend(fields[1:])
        order.extend(range(len(fields) - 1))
        if len(items) >= chunk_rows:
            yield _sequence_table(users, items, order)
            users, items, order = [], [], []
    if items:
        yield _sequence_table(users, items, order)


def _sequence_table(users: list[str], items: list[str], order: list[int]) -> pa.Table:
    epoch_us = int(SEQUENCE_EPOCH.timestamp()) * 1_000_000
    ts = pc.add(pc.multiply(pa.array(order, pa.int64()), 1_000_000), epoch_us).cast(_TS_TYPE)
    n = len(items)
    arrays = [
        pa.array(users, pa.string()),
        pa.array(items, pa.string()),
        pa.repeat("purchase", n),
        ts,
        pa.nulls(n, pa.string()),
        pa.nulls(n, pa.string()),
    ]
    return pa.Table.from_arrays(arrays, schema=EVENTS_SCHEMA)


def _catalog(path: Path, event_items: pa.Array) -> pa.Table:
    """Items of the attributes file, then event items it lacks (with unknown attributes)."""
    attributes = _read_attributes(path)
    known = pa.array(list(attributes), pa.string())
    extra = pc.filter(event_items, pc.invert(pc.is_in(event_items, value_set=known)))
    ids = pa.concat_arrays([known, extra.cast(pa.string())])
    lists = pa.concat_arrays(
        [
            pa.array(list(attributes.values()), pa.list_(pa.string())),
            pa.nulls(len(extra), pa.list_(pa.string())),
        ]
    )
    n = len(ids)
    arrays = [
        ids,
        pa.nulls(n, pa.string()),
        lists,
        pa.nulls(n, pa.string()),
        pa.nulls(n, pa.string()),
        pa.nulls(n, pa.float64()),
    ]
    return pa.Table.from_arrays(arrays, schema=ITEMS_SCHEMA)


def _read_attributes(path: Path) -> dict[str, list[str]]:
    """``{"item_id": [attribute ids]}`` with ids as strings; such files are small, so read whole."""
    with open_input(path) as src:
        raw = src.stream.read()
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(path, "invalid UTF-8 bytes", line=raw[: exc.start].count(b"\n") + 1) from None
    except json.JSONDecodeError as exc:
        raise DataError(path, f"invalid JSON: {exc.msg}", line=exc.lineno) from None
    if not isinstance(data, dict):
        raise DataError(path, "expected a JSON object {item_id: [attribute ids]}")
    for item, values in data.items():
        if not isinstance(values, list):
            raise DataError(path, f"item '{item}': attributes must be a list, got {type(values).__name__}")
    return {item: [str(value) for value in values] for item, values in data.items()}


_ADAPTERS: dict[str, Callable[[SourceSpec, _Job], Manifest]] = {
    "taobao": _ingest_taobao,
    "retailrocket": _ingest_retailrocket,
    "seqfile": _ingest_seqfile,
    "csv": _ingest_csv,
    "parquet": _ingest_parquet,
}


# ---------------------------------------------------------------------------------------------- conversion


def _to_events(chunk: Chunk, mapping: _Mapping) -> pa.Table:
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
    return utc.cast(_TS_TYPE, safe=column.type.unit != "ns")


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
    return pc.multiply(values, _US_PER_UNIT[unit]).cast(_TS_TYPE)


def _parse_iso(chunk: Chunk, name: str, values: pa.Array) -> pa.Array:
    """ISO 8601 text, with or without offset (naive = UTC); pandas accepts mixed offsets, Arrow does not."""
    import pandas as pd  # lazy: only ISO text needs it

    parsed = pd.to_datetime(values.to_pandas(), utc=True, format="ISO8601", errors="coerce")
    result = _as_utc_us(pa.Array.from_pandas(parsed))
    if result.null_count:
        bad = _first(pc.is_null(result))
        raise chunk.error(bad, name, f"not an ISO 8601 timestamp: '{values[bad].as_py()}'")
    return result


# ---------------------------------------------------------------------------------------------- output


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


class _EventSink:
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


@contextmanager
def _progress(enabled: bool, label: str, total: int, unit: str) -> Iterator[Callable[[int, int], None]]:
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
