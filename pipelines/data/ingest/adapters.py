"""One reader per source format: each streams its input through ``columns.to_events`` into an ``EventSink``."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
from pipelines.data.ingest.columns import TS_TYPE, Mapping, to_events
from pipelines.data.ingest.csv_stream import Chunk, Input, first_row, iter_csv, open_input, require_file
from pipelines.data.ingest.sink import EventSink, Job, progress_bar
from pipelines.data.ingest.spec import SourceSpec, column_mapping, csv_format
from pipelines.data.schema import EVENTS_SCHEMA, ITEMS_SCHEMA, Manifest, items_path

# Tianchi dataset 649 documents its period as 2017-11-25 .. 2017-12-03 China time (UTC+8): these are the UTC
# instants of the start of Nov 25 and the end of Dec 3 there. Validation reports events outside this window.
TAOBAO_WINDOW: tuple[str, str] = ("2017-11-24T16:00:00+00:00", "2017-12-03T16:00:00+00:00")
TAOBAO_COLUMNS: list[str] = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]

# Sequence files have no time: event k of a user's line is stamped this instant plus k seconds.
SEQUENCE_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)

# CSV block size per chunk: about this many bytes per row, within bounds that keep reads efficient.
_BYTES_PER_ROW = 64
_MIN_BLOCK_BYTES = 1 << 20
_MAX_BLOCK_BYTES = 64 << 20

_TAOBAO = Mapping(
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
_RETAILROCKET = Mapping(
    {"user_id": "visitorid", "item_id": "itemid", "event_type": "event", "ts": "timestamp"},
    {"view": "view", "addtocart": "cart", "transaction": "purchase"},
    "ms",
)


def require_inputs(spec: SourceSpec) -> None:
    """Check input files before ``atomic_dir`` creates anything."""
    path = Path(spec.path)
    if spec.kind == "parquet":
        if not path.exists():
            raise DataError(path, "no such file or directory")
    else:
        require_file(path)
    if "attributes" in spec.options:
        require_file(Path(spec.options["attributes"]))


def ingest_synthetic(spec: SourceSpec, source: str, out_dir: Path, progress: bool, base: SyntheticParams) -> Manifest:
    """The embedded generator, with ``spec``'s options over ``base``; it writes its own atomic output."""
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


# ---------------------------------------------------------------------------------------------- CSV


@dataclass(frozen=True)
class _CsvLayout:
    names: list[str]  # every column of the file, in order
    header: bool
    sep: str = ","


def _ingest_taobao(spec: SourceSpec, job: Job) -> Manifest:
    layout = _CsvLayout(TAOBAO_COLUMNS, header=False)
    return _read_csv(Path(spec.path), layout, _TAOBAO, job).manifest(window=TAOBAO_WINDOW)


def _ingest_retailrocket(spec: SourceSpec, job: Job) -> Manifest:
    path = Path(spec.path)
    layout = _CsvLayout(first_row(path, ","), header=True)
    return _read_csv(path, layout, _RETAILROCKET, job).manifest()


def _ingest_csv(spec: SourceSpec, job: Job) -> Manifest:
    path = Path(spec.path)
    header, sep = csv_format(spec.path, spec.options)
    fields = first_row(path, sep)
    names = fields if header else [str(number) for number in range(1, len(fields) + 1)]
    mapping = column_mapping(spec.path, spec.options)
    return _read_csv(path, _CsvLayout(names, header, sep), mapping, job).manifest()


def _read_csv(path: Path, layout: _CsvLayout, mapping: Mapping, job: Job) -> EventSink:
    """Stream a CSV file through ``mapping`` into event parts."""
    mapping = mapping.resolve(layout.names, path)
    block_size = min(max(job.chunk_rows * _BYTES_PER_ROW, _MIN_BLOCK_BYTES), _MAX_BLOCK_BYTES)
    sink = job.sink()
    with open_input(path) as src, progress_bar(job.progress, path.name, src.size, "bytes") as update:
        chunks = iter_csv(
            src,
            names=layout.names,
            include=mapping.source_columns(),
            sep=layout.sep,
            header=layout.header,
            block_size=block_size,
        )
        for chunk in chunks:
            sink.add(to_events(chunk, mapping))
            update(src.bytes_read(), sink.rows)
    sink.close(path)
    return sink


# ---------------------------------------------------------------------------------------------- Parquet


def _ingest_parquet(spec: SourceSpec, job: Job) -> Manifest:
    path = Path(spec.path)
    try:
        source = ds.dataset(path, format="parquet")
        total = source.count_rows()
    except (pa.ArrowException, OSError) as exc:
        raise DataError(path, f"not a readable Parquet file or directory: {str(exc).splitlines()[0]}") from None
    mapping = column_mapping(spec.path, spec.options).resolve(source.schema.names, path)
    sink = job.sink()
    with progress_bar(job.progress, path.name, total, "rows") as update:
        for fragment in source.get_fragments():
            for chunk in _parquet_chunks(fragment, mapping.source_columns(), job.chunk_rows):
                sink.add(to_events(chunk, mapping))
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


# ---------------------------------------------------------------------------------------------- sequence files


def _ingest_seqfile(spec: SourceSpec, job: Job) -> Manifest:
    """Sequence file: every event is a purchase, and timestamps are synthetic.

    Event k (from 0) of a user's line is stamped ``SEQUENCE_EPOCH`` + k seconds: only the order within a user
    is meaningful, never the time itself or comparisons across users. Hence no window and
    ``extra.synthetic_time``.
    """
    path = Path(spec.path)
    sink = job.sink()
    with open_input(path) as src, progress_bar(job.progress, path.name, src.size, "bytes") as update:
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
    ts = pc.add(pc.multiply(pa.array(order, pa.int64()), 1_000_000), epoch_us).cast(TS_TYPE)
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


ADAPTERS: dict[str, Callable[[SourceSpec, Job], Manifest]] = {
    "taobao": _ingest_taobao,
    "retailrocket": _ingest_retailrocket,
    "seqfile": _ingest_seqfile,
    "csv": _ingest_csv,
    "parquet": _ingest_parquet,
}
