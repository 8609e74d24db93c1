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

Modules: ``spec`` parses SOURCE strings, ``adapters`` reads each format (through ``csv_stream``), ``columns``
normalises Arrow columns to the canonical schema, ``sink`` writes the parts and the manifest.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipelines.core.atomic import atomic_dir
from pipelines.core.config import SyntheticParams
from pipelines.data.ingest.adapters import ADAPTERS, SEQUENCE_EPOCH, TAOBAO_WINDOW, ingest_synthetic, require_inputs
from pipelines.data.ingest.sink import Job, inputs_md5
from pipelines.data.ingest.spec import SourceSpec, parse_source
from pipelines.data.schema import Manifest

__all__ = ["SEQUENCE_EPOCH", "TAOBAO_WINDOW", "SourceSpec", "ingest", "parse_source"]

log = logging.getLogger(__name__)


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
        return ingest_synthetic(spec, source, Path(out_dir), progress, synthetic or SyntheticParams())
    require_inputs(spec)
    log.debug("ingest.start source=%s out_dir=%s chunk_rows=%d", source, out_dir, chunk_rows)
    with atomic_dir(out_dir) as tmp:
        manifest = ADAPTERS[spec.kind](spec, Job(tmp, chunk_rows, progress))
        manifest.source = source
        manifest.extra["inputs_md5"] = inputs_md5(spec)
        manifest.write(tmp)
    log.debug("ingest.done source=%s rows=%d users=%d items=%d", source, manifest.rows, manifest.users, manifest.items)
    return manifest
