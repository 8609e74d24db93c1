"""Bounded-memory reading of large, possibly compressed CSV files, with every input problem as a DataError.

The readers yield :class:`Chunk` objects: an Arrow batch plus enough position information to turn a row index
into the file's line number, so that conversion code can report ``FILE:LINE: column 'x': problem``.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import logging
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from pipelines.core.errors import DataError

log = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)
_ZIP_ERRORS = (EOFError, zipfile.BadZipFile, zlib.error)


@dataclass
class Input:
    """An opened input: ``stream`` yields the decompressed bytes, ``raw`` the file on disk (for progress)."""

    path: Path
    stream: IO[bytes]
    raw: IO[bytes]
    size: int

    def bytes_read(self) -> int:
        return self.raw.tell()


@dataclass
class Chunk:
    """A batch of records and where it came from, so row ``i`` can be named in an error message."""

    batch: pa.RecordBatch
    path: Path
    first: int  # line (CSV) or row (Parquet) number of the batch's first record, counting from 1
    unit: str = "line"
    kept: pa.Array | None = None  # original row indices when blank lines were dropped from the batch

    def position(self, index: int) -> int:
        return self.first + (index if self.kept is None else self.kept[index].as_py())

    def error(self, index: int, column: str, problem: str) -> DataError:
        if self.unit == "line":
            return DataError(self.path, problem, line=self.position(index), column=column)
        return DataError(self.path, f"{self.unit} {self.position(index)}: {problem}", column=column)


def require_file(path: Path) -> None:
    """Fail early, before any output is created, on a missing, non-regular or empty input file."""
    if not path.exists():
        raise DataError(path, "no such file")
    if not path.is_file():
        raise DataError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise DataError(path, "empty file")


def _compression(path: Path, raw: IO[bytes]) -> str | None:
    """Detect gzip/zip by extension, else by magic bytes, so renamed files still open."""
    suffix = path.suffix.lower()
    if suffix in (".gz", ".gzip"):
        return "gzip"
    if suffix == ".zip":
        return "zip"
    magic = raw.read(4)
    raw.seek(0)
    if magic.startswith(_GZIP_MAGIC):
        return "gzip"
    return "zip" if magic == _ZIP_MAGIC else None


def _zip_member(path: Path, raw: IO[bytes]) -> IO[bytes]:
    archive = zipfile.ZipFile(raw)
    members = [m for m in archive.infolist() if not m.is_dir()]
    if len(members) != 1:
        raise DataError(path, f"zip archive must hold exactly one file, found {len(members)}")
    return archive.open(members[0])


@contextmanager
def open_input(path: Path) -> Iterator[Input]:
    """Open ``path`` for streaming, decompressing gzip/zip; decompression errors become DataError."""
    require_file(path)
    try:
        raw = path.open("rb")
    except OSError as exc:
        raise DataError(path, f"cannot open: {exc.strerror}") from None
    with raw:
        kind = _compression(path, raw)
        errors = _GZIP_ERRORS if kind == "gzip" else _ZIP_ERRORS if kind == "zip" else ()
        try:
            if kind == "gzip":
                stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb")
            elif kind == "zip":
                stream = _zip_member(path, raw)
            else:
                stream = raw
            yield Input(path, stream, raw, path.stat().st_size)
        except errors:
            problem = "truncated or corrupt gzip stream" if kind == "gzip" else "truncated or corrupt zip archive"
            raise DataError(path, problem) from None


def first_row(path: Path, sep: str) -> list[str]:
    """The fields of line 1 (the header, or a sample row of a headerless file), decoded as UTF-8."""
    with open_input(path) as src:
        line = src.stream.readline()
    try:
        text = line.decode("utf-8-sig").rstrip("\r\n")
    except UnicodeDecodeError:
        raise DataError(path, "invalid UTF-8 bytes", line=1) from None
    if not text.strip():
        raise DataError(path, "line 1 is blank; expected a header or a data row", line=1)
    return next(csv.reader([text], delimiter=sep))


def _find_bad_line(path: Path, start: int, expected: int, sep: str) -> tuple[int, int] | None:
    """Re-scan from line ``start`` for the first row whose field count is wrong (Arrow does not report it)."""
    with open_input(path) as src:
        for number, raw_line in enumerate(itertools.islice(src.stream, start - 1, None), start):
            text = raw_line.decode("utf-8", errors="replace").rstrip("\r\n")
            fields = len(next(csv.reader([text], delimiter=sep))) if text else expected
            if fields != expected:
                return number, fields
    return None


def _parse_error(path: Path, exc: pa.ArrowInvalid, next_line: int, names: list[str], sep: str) -> DataError:
    if "Empty CSV file" in str(exc):
        return DataError(path, "empty file")
    if str(exc).startswith("CSV parse error: Expected"):
        found = _find_bad_line(path, next_line, len(names), sep)
        if found is not None:
            line, fields = found
            return DataError(path, f"expected {len(names)} columns, found {fields}", line=line)
    return DataError(path, f"cannot parse CSV: {str(exc).splitlines()[0]}")


def _drop_blank(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, pa.Array | None]:
    """Drop rows whose read columns are all empty (blank lines), keeping their indices for line numbers."""
    blank = None
    for column in batch.columns:
        empty = pc.equal(pc.binary_length(column), 0)
        blank = empty if blank is None else pc.and_(blank, empty)
    if blank is None or not pc.any(blank).as_py():
        return batch, None
    keep = pc.invert(blank)
    return batch.filter(keep), pc.indices_nonzero(keep)


def iter_csv(
    src: Input, *, names: list[str], include: list[str], sep: str, header: bool, block_size: int
) -> Iterator[Chunk]:
    """Stream the ``include`` columns of ``src`` as binary in blocks of ``block_size`` bytes.

    Columns are read as raw bytes so that conversion can locate bad UTF-8 and bad values itself; lines are
    counted exactly, which assumes no newlines inside quoted values.
    """
    read_options = pa_csv.ReadOptions(column_names=names, skip_rows=int(header), block_size=block_size)
    parse_options = pa_csv.ParseOptions(delimiter=sep, ignore_empty_lines=False)  # keeps line numbers exact
    convert_options = pa_csv.ConvertOptions(include_columns=include, column_types=dict.fromkeys(include, pa.binary()))
    next_line = 1 + int(header)
    try:
        reader = pa_csv.open_csv(src.stream, read_options, parse_options, convert_options)
        for batch in reader:
            kept_batch, kept = _drop_blank(batch)
            if kept is not None:
                log.debug("csv.blank_lines path=%s count=%d", src.path, batch.num_rows - kept_batch.num_rows)
            yield Chunk(kept_batch, src.path, next_line, kept=kept)
            next_line += batch.num_rows
    except pa.ArrowInvalid as exc:
        raise _parse_error(src.path, exc, next_line, names, sep) from None
