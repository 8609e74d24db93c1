"""Validate a canonical data set with Great Expectations before anything trains on it.

Under ``policy: fail`` any failed expectation stops the pipeline. Under ``policy: quarantine`` rows failing
row-level expectations are set aside (``quarantine.parquet``, with the reasons) and the rest goes on, unless
too many rows are bad or a table-level expectation (columns, types, size) fails. Either way the reports
(``summary.json``, GX Data Docs) are written, and ``out_dir`` is written only when the data passes.

Memory holds one bucket of whole users at a time, whatever the size of the log: the events are shuffled into
``partition_count(rows)`` user buckets (``pipelines.data.partitions``, in a temporary directory beside
``out_dir``) and GX validates each bucket on its own, one task per bucket (``engine.imap_parts``: in turn here, or
on the workers of the Dask cluster ``SHOPREC_DASK_ADDRESS`` names, which see the same files). A task writes its
bucket's good rows as the bucket's part and sends back a small result; the totals, the fingerprint, the quarantine
file and the verdict are reduced here in bucket order, so both ways give the same outputs. Per-user counts and
duplicates (whose key holds the user) are bucket-local; the per-check results are added up over the buckets and
the table-level verdicts (columns, types, share of rows from users with too few events, duplicate share, row count
against the previous version, bad-row share) are judged on the totals. ``summary.json`` reports the totals
(examples from the first buckets); the GX Data Docs show the first bucket's validation only. The validated
``events/`` holds one part per user bucket that kept rows (``part_name(b)``), so later per-user stages read one
part at a time; a small log is one bucket, read in its source order, so its output is the rows of the input in
their order.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.core.atomic import atomic_dir, atomic_file, write_json
from pipelines.core.config import ValidateParams
from pipelines.core.engine import imap_parts
from pipelines.core.errors import DataError, ShoprecError, ValidationFailed
from pipelines.data.expectations import (
    DUPLICATE_KEY,
    IN_CATALOGUE,
    USER_EVENTS,
    Check,
    CheckResult,
    Suite,
    Totals,
    Window,
    build_checks,
    judge_row_count,
    row_count_check,
)
from pipelines.data.partitions import part_name, partition_count, shuffle_by_user
from pipelines.data.schema import EVENTS_SCHEMA, Manifest, events_dir, items_path

log = logging.getLogger(__name__)

PARTITIONED_BY = "fnv1a64(user_id) % n"


@dataclass
class ValidationReport:
    """Outcome of one validation; ``failed`` labels every failed expectation, e.g. ``expect_...(ts)``."""

    success: bool
    rows: int
    bad_rows: int
    failed: list[str]
    summary_path: Path
    docs_path: Path


@dataclass
class _Source:
    parts: list[Path]  # the input's events parts, in name order
    columns: list[str]  # union of the parts' columns, in order of appearance
    rows: int
    items: Path | None
    manifest: Manifest


@dataclass
class _Verdict:
    success: bool
    bad_rows: int
    bad_fraction: float
    problems: list[str]  # one-line reasons the data set is rejected; empty on success


@dataclass(frozen=True, eq=False)
class _Plan:
    """What every bucket's task needs besides its rows, picklable and sent to the workers once: the definitions of
    the checks, the catalogue, and where the parts and the Data Docs go."""

    columns: list[str]
    window: Window
    catalogue: pa.Array | None
    params: ValidateParams
    out: Path  # the validated data set being written (its ``events/`` gets the parts)
    docs: Path  # the Data Docs site, rendered by the first bucket's task

    def checks(self) -> list[Check]:
        """The suite's checks; every task builds its own (cheap) rather than unpickling GX expectations."""
        return build_checks(self.columns, self.window, self.catalogue is not None, self.params)


@dataclass
class _Bucket:
    """One bucket's outcome, small enough to send back from a worker: no rows but the flagged ones."""

    bucket: int
    rows: int
    results: list[tuple[bool, dict[str, Any], str | None]]  # per check: success, what Totals reads, error
    bad_rows: int
    flagged: pa.Table | None  # under ``quarantine``: the bucket's bad rows with their reasons
    row_hashes: bytes  # the rows' pandas hashes, which the fingerprint hashes in bucket order
    may_pass: bool  # the bucket leaves the data set a chance (and so wrote its part)
    seconds: float = 0.0
    good_rows: int = 0  # of the part written
    users: int = 0
    items: pa.Array | None = None  # the part's distinct item ids


@dataclass
class _Output:
    """What the validated buckets add up to (for the manifest, the summary and the history)."""

    rows: int = 0
    bad_rows: int = 0
    good_rows: int = 0
    users: int = 0  # summed over buckets: a bucket holds whole users
    items: pa.Array | None = None  # distinct item ids of the good rows so far

    def add(self, done: _Bucket) -> None:
        """Fold in the next bucket's counts (in bucket order, the order of the parts)."""
        self.rows, self.bad_rows = self.rows + done.rows, self.bad_rows + done.bad_rows
        self.good_rows, self.users = self.good_rows + done.good_rows, self.users + done.users
        if done.items is not None:
            self.items = done.items if self.items is None else pc.unique(pa.concat_arrays([self.items, done.items]))


def validate(
    dataset_dir: str | Path, out_dir: str | Path, reports_dir: str | Path, params: ValidateParams
) -> ValidationReport:
    """Run the suite on ``dataset_dir`` bucket by bucket; write reports, then the validated data set or raise
    ValidationFailed."""
    dataset_dir, out_dir = Path(dataset_dir), Path(out_dir)
    source = _source(dataset_dir)
    report_dir = Path(reports_dir) / "validation"
    summary_path, docs_path = report_dir / "summary.json", report_dir / "data_docs"
    history_path = report_dir / "history.jsonl"
    last = _last_entry(history_path)  # a broken history fails before any report is replaced
    window = _window(source.manifest, params)
    catalogue = _catalogue(source.items)
    n = partition_count(source.rows)
    with atomic_dir(out_dir) as tmp_out:
        events_dir(tmp_out).mkdir()
        with atomic_dir(docs_path) as tmp_docs, _quarantine(report_dir / "quarantine.parquet", params.policy) as q:
            plan = _Plan(source.columns, window, catalogue, params, tmp_out, tmp_docs)
            results, out, fingerprint = _validate_buckets(source, n, plan, q)
        prev_rows = _rows_unless_same(last, fingerprint)
        if prev_rows is not None:
            results.append(judge_row_count(row_count_check(prev_rows, params), out.rows))
        verdict = _judge(params, results, out.bad_rows, out.rows)
        quarantined = out.bad_rows if params.policy == "quarantine" else 0
        summary = _summary(params, window, results, verdict, quarantined, fingerprint, prev_rows, out.rows, n)
        write_json(summary_path, summary | {"data_docs": str(docs_path / "index.html")})
        if not verdict.success:
            raise ValidationFailed(f"validation failed: {'; '.join(verdict.problems)}; see {summary_path}")
        _finish_dataset(tmp_out, source, window, out, quarantined, n)
    _append_history(history_path, fingerprint, out.rows, out.good_rows, dataset_dir)
    failed = [r.check.label for r in results if not r.success]
    return ValidationReport(True, out.rows, verdict.bad_rows, failed, summary_path, docs_path)


def _validate_buckets(
    source: _Source, n: int, plan: _Plan, quarantine: _QuarantineFile
) -> tuple[list[CheckResult], _Output, str]:
    """Each bucket as a task (Data Docs of the first), reduced in bucket order: the checks' totals, the counts, the
    quarantined rows, the fingerprint.

    The fingerprint hashes the rows bucket by bucket in bucket order, so it does not depend on how the input is cut
    into parts (for one bucket it is the hash of all rows, as before buckets).
    """
    checks = plan.checks()
    totals, out = Totals(checks), _Output()
    fingerprint = hashlib.sha256(",".join(source.columns).encode())
    with _buckets(source, n, plan.out.parent) as buckets:
        jobs = [(plan, bucket, paths, k == 0) for k, (bucket, paths) in enumerate(buckets)]
        for done in imap_parts(_validate_bucket, jobs, threads=1):  # GX contexts are not shared across threads
            fingerprint.update(done.row_hashes)
            totals.add([CheckResult(c, *r) for c, r in zip(checks, done.results, strict=True)], out.rows)
            quarantine.add(done.flagged)
            out.add(done)
            log.info("validate bucket=%d of %d rows=%d bad=%d seconds=%.1f", done.bucket, n, done.rows,
                     done.bad_rows, done.seconds)
    return totals.results(), out, fingerprint.hexdigest()


def _validate_bucket(plan: _Plan, bucket: int, paths: list[Path], docs: bool) -> _Bucket:
    """GX on one bucket (the rows of ``paths``), rendering the Data Docs if ``docs``; its good rows become its part
    unless the bucket alone rejects the data set. A task: here, or on a worker that sees the same files."""
    started = time.perf_counter()
    table = _concat(paths)
    events = table.to_pandas()
    results = Suite(plan.checks(), plan.docs).run(_with_derived_columns(events, table, plan.catalogue), docs=docs)
    reasons = _reasons(events, results)
    quarantine = plan.params.policy == "quarantine"
    done = _Bucket(
        bucket=bucket,
        rows=len(events),
        results=[(r.success, Totals.kept(r), r.error) for r in results],
        bad_rows=len(reasons),
        flagged=_flagged(table, reasons) if quarantine else None,
        row_hashes=pd.util.hash_pandas_object(events, index=False).to_numpy().tobytes(),
        may_pass=all(_may_pass(r, plan.params.policy) for r in results),
    )
    if done.may_pass:  # else this bucket rejects the data set: no need to write, and its rows may not be canonical
        good = events.drop(index=list(reasons)) if quarantine else events
        _write_part(events_dir(plan.out) / part_name(bucket), good, done)
    done.seconds = time.perf_counter() - started
    # GX's context, batch and results hold the bucket's frame in reference cycles that the collector's thresholds
    # (counted in Python objects, not bytes) leave for later: every 2M-row bucket stayed, 0.25 GB each, 9.7 GB at 100M
    gc.collect()
    return done


def _source(dataset_dir: Path) -> _Source:
    """The parts' row counts and columns from their footers; the manifest marks a complete data set."""
    if not (dataset_dir / "manifest.json").exists():
        raise DataError(dataset_dir, "no manifest.json: not a complete canonical data set")
    parts = sorted(events_dir(dataset_dir).glob("*.parquet"))
    if not parts:
        raise DataError(events_dir(dataset_dir), "no events parquet parts")
    rows, columns = 0, {}
    for path in parts:
        try:
            metadata = pq.ParquetFile(path).metadata
        except (OSError, pa.ArrowException) as exc:
            raise DataError(path, f"unreadable parquet: {exc}") from None
        rows += metadata.num_rows
        columns |= dict.fromkeys(metadata.schema.to_arrow_schema().names)
    items = items_path(dataset_dir)
    return _Source(parts, list(columns), rows, items if items.exists() else None, Manifest.read(dataset_dir))


@contextmanager
def _buckets(source: _Source, n: int, scratch: Path) -> Iterator[list[tuple[int, list[Path]]]]:
    """(bucket number, the files of its rows) of each bucket of whole users that has rows, in bucket order; the
    files last as long as the block.

    One bucket is the parts concatenated in their order (no shuffle). Without a ``user_id`` column there are no
    per-user checks and no users to keep together (the data set fails the column check), so each part is a bucket.
    """
    if n == 1:
        yield [(0, source.parts)]
    elif "user_id" not in source.columns:
        yield [(b, [p]) for b, p in enumerate(source.parts)]
    else:
        _same_schema(source.parts)
        with tempfile.TemporaryDirectory(dir=scratch, prefix=".validate-buckets-") as tmp:
            started = time.perf_counter()
            try:
                written = shuffle_by_user(source.parts, Path(tmp), n)
            except (OSError, pa.ArrowException) as exc:
                raise DataError(source.parts[0].parent, f"cannot shuffle into user buckets: {exc}") from None
            seconds = time.perf_counter() - started
            log.info("validate shuffled rows=%d into buckets=%d seconds=%.1f", source.rows, n, seconds)
            names = {path.name for path in written}
            yield [(b, [Path(tmp) / part_name(b)]) for b in range(n) if part_name(b) in names]


def _same_schema(parts: list[Path]) -> None:
    """Parts to shuffle must agree on columns and types (a bucket file takes rows of every part)."""
    first = pq.read_schema(parts[0])
    for path in parts[1:]:
        schema = pq.read_schema(path)
        if not schema.equals(first, check_metadata=False):
            names = sorted(set(schema.names) ^ set(first.names))
            fields = names or [f"{f} (not {first.field(f.name)})" for f in schema if f != first.field(f.name)]
            raise DataError(path, f"columns differ from {parts[0].name}: {', '.join(fields) or 'their order'}")


def _concat(parts: list[Path]) -> pa.Table:
    """The parts as one table; a column missing from some parts is null there (as pandas' concat would do)."""
    tables = [_read_table(p) for p in parts]
    try:
        return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
    except pa.ArrowException as exc:
        raise DataError(parts[0].parent, f"parts with conflicting column types: {exc}") from None


def _read_table(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(path, f"unreadable parquet: {exc}") from None


def _catalogue(items: Path | None) -> pa.Array | None:
    """The catalogue's distinct item ids as strings, or None without a catalogue (the check is then skipped)."""
    if items is None:
        return None
    try:
        ids = pq.read_table(items, columns=["item_id"]).column("item_id")
        return pc.unique(pc.drop_null(pc.cast(ids, pa.string())))
    except (OSError, pa.ArrowException, KeyError) as exc:
        raise DataError(items, f"cannot read the item_id column: {exc}") from None


def _window(manifest: Manifest, params: ValidateParams) -> Window:
    """The manifest's documented window, each bound overridable in params."""
    start = params.window_start if params.window_start is not None else manifest.window_start
    end = params.window_end if params.window_end is not None else manifest.window_end
    return Window(_utc(start), _utc(end))


def _utc(value: str | None) -> pd.Timestamp | None:
    if value is None:
        return None
    try:
        ts = pd.Timestamp(value)
    except ValueError:
        raise ShoprecError(f"validation window: not an ISO 8601 timestamp: {value!r}") from None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _previous_rows(history_path: Path, fingerprint: str) -> int | None:
    """Row count of the last validated version, or None if there is none or it is this very data."""
    return _rows_unless_same(_last_entry(history_path), fingerprint)


def _last_entry(history_path: Path) -> dict[str, Any] | None:
    """The last line of the validation history, or None without one."""
    if not history_path.exists():
        return None
    lines = [(n, line) for n, line in enumerate(history_path.read_text().splitlines(), 1) if line.strip()]
    if not lines:
        return None
    number, line = lines[-1]
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        raise DataError(history_path, "not valid JSON", line=number) from None


def _rows_unless_same(last: dict[str, Any] | None, fingerprint: str) -> int | None:
    return None if last is None or last.get("fingerprint") == fingerprint else int(last["rows"])


def _with_derived_columns(events: pd.DataFrame, table: pa.Table, catalogue: pa.Array | None) -> pd.DataFrame:
    """The frame GX sees: the events plus, per row, how many events its user has (in the bucket, which holds the
    user's every event) and whether its item is in the catalogue (Arrow's hash lookup: 1.3 s for 2M rows against
    4M items, where pandas' ``isin`` takes 23 s)."""
    derived = {}
    if "user_id" in events.columns:
        derived[USER_EVENTS] = events.groupby("user_id", dropna=False)["user_id"].transform("size").astype("int64")
    if catalogue is not None and "item_id" in events.columns:
        items = table.column("item_id")
        known = (
            pc.is_in(pc.cast(items, pa.string()), value_set=catalogue).to_numpy(zero_copy_only=False)
            if pa.types.is_string(items.type) or pa.types.is_large_string(items.type)
            else np.zeros(len(events), dtype=bool)  # ids of another type are never catalogue strings
        )
        derived[IN_CATALOGUE] = pd.Series(known, index=events.index)
    return events.assign(**derived)


def _reasons(events: pd.DataFrame, results: list[CheckResult]) -> dict[int, list[str]]:
    """Row position -> labels of the row-level expectations it fails (the quarantine candidates)."""
    reasons: dict[int, list[str]] = {}
    for result in results:
        if not result.check.row_level:
            continue
        rows = result.unexpected_rows
        if result.check.keep_first and rows:
            copies = events.loc[rows].duplicated(subset=list(DUPLICATE_KEY), keep="first")
            rows = [int(i) for i in copies[copies].index]
        for row in rows:
            reasons.setdefault(row, []).append(result.check.label)
    return dict(sorted(reasons.items()))


def _judge(params: ValidateParams, results: list[CheckResult], bad_rows: int, rows: int) -> _Verdict:
    """Apply the policy: ``fail`` rejects any failure, ``quarantine`` table-level ones or too many bad rows."""
    bad_fraction = bad_rows / rows if rows else 0.0
    failed = [r for r in results if not r.success]
    if params.policy == "fail":
        return _Verdict(not failed, bad_rows, bad_fraction, [r.message() for r in failed])
    # a row-level check that errored flagged no rows, so it cannot be settled by quarantine
    fatal = [r.message() for r in failed if not r.check.row_level or r.error]
    if bad_fraction > params.max_bad_fraction:
        fatal.append(
            f"{bad_rows} rows to quarantine ({bad_fraction:.2%} > max_bad_fraction {params.max_bad_fraction:.2%})"
        )
        fatal += [r.message() for r in failed if r.check.row_level and not r.error]
    return _Verdict(not fatal, bad_rows, bad_fraction, fatal)


class _QuarantineFile:
    """Flagged rows with a ``reason`` column, appended bucket by bucket (one row group each) to one file."""

    def __init__(self, path: Path | None) -> None:
        self._path, self._writer = path, None

    def add(self, bad: pa.Table | None) -> None:
        """Append one bucket's flagged rows (None, as every bucket's, when the policy quarantines nothing)."""
        if bad is None:
            return
        if self._writer is None:  # opened on the first bucket, so a file with no bad rows still has the columns
            self._writer = pq.ParquetWriter(self._path, bad.schema)
        self._writer.write_table(bad)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


@contextmanager
def _quarantine(path: Path, policy: str) -> Iterator[_QuarantineFile]:
    """Under ``quarantine``, the file replaced atomically when the buckets are done; otherwise a stale one goes."""
    if policy != "quarantine":
        path.unlink(missing_ok=True)
        yield _QuarantineFile(None)
        return
    with atomic_file(path) as tmp:
        quarantine = _QuarantineFile(tmp)
        try:
            yield quarantine
        finally:
            quarantine.close()


def _flagged(table: pa.Table, reasons: dict[int, list[str]]) -> pa.Table:
    """The bucket's rows to quarantine, with a ``reason`` column: the labels of the expectations each fails."""
    bad = table.take(pa.array(list(reasons), pa.int64()))
    return bad.append_column("reason", pa.array(["; ".join(r) for r in reasons.values()], pa.string()))


def _may_pass(result: CheckResult, policy: str) -> bool:
    """Whether a bucket's result leaves the data set a chance: it passed, its failing rows are quarantined, or the
    check allows a share of failures (``mostly``) that the totals may still meet. Any other failure rejects the
    data set whatever the other buckets hold (totals of such checks pass only if every bucket passes)."""
    quarantined = policy == "quarantine" and result.check.row_level and not result.error
    return result.success or quarantined or (not result.error and result.check.mostly < 1)


def _write_part(path: Path, good: pd.DataFrame, done: _Bucket) -> None:
    """One bucket's good rows as a canonical part (none if it kept no rows); counted for the manifest."""
    if good.empty:
        return
    table = _canonical_table(good)
    pq.write_table(table, path)
    done.items = pc.unique(table.column("item_id"))
    done.good_rows, done.users = len(good), int(good["user_id"].nunique())


def _summary(
    params: ValidateParams,
    window: Window,
    results: list[CheckResult],
    verdict: _Verdict,
    quarantined: int,
    fingerprint: str,
    prev_rows: int | None,
    rows: int,
    partitions: int,
) -> dict[str, Any]:
    return {
        "success": verdict.success,
        "policy": params.policy,
        "rows": rows,
        "partitions": partitions,
        "bad_rows": verdict.bad_rows,
        "bad_fraction": verdict.bad_fraction,
        "max_bad_fraction": params.max_bad_fraction,
        "quarantined": quarantined,
        "window": {"start": _iso(window.start), "end": _iso(window.end)},
        "fingerprint": fingerprint,
        "previous_rows": prev_rows,
        "problems": verdict.problems,
        "failed": [r.check.label for r in results if not r.success],
        "expectations": [r.to_summary() for r in results],
    }


def _iso(ts: pd.Timestamp | None) -> str | None:
    return None if ts is None else ts.isoformat()


def _finish_dataset(tmp: Path, source: _Source, window: Window, out: _Output, quarantined: int, n: int) -> None:
    """Complete the validated data set beside its parts: the catalogue, then the manifest (last)."""
    if source.items is not None:
        shutil.copy2(source.items, items_path(tmp))
    Manifest(
        source=source.manifest.source,
        rows=out.good_rows,
        users=out.users,
        items=0 if out.items is None else len(out.items),
        catalog_items=source.manifest.catalog_items,
        window_start=_iso(window.start),
        window_end=_iso(window.end),
        extra=source.manifest.extra | {"quarantined": quarantined, "partitions": n, "partitioned_by": PARTITIONED_BY},
    ).write(tmp)


def _canonical_table(events: pd.DataFrame) -> pa.Table:
    """The events in EVENTS_SCHEMA exactly: its columns in its order, absent optional ones as nulls."""
    frame = pd.DataFrame(
        {name: events[name] if name in events.columns else None for name in EVENTS_SCHEMA.names},
        index=events.index,
    )
    frame["ts"] = frame["ts"].astype("datetime64[us, UTC]")
    table = pa.Table.from_pandas(frame, schema=EVENTS_SCHEMA, preserve_index=False)
    return table.replace_schema_metadata(None)


def _append_history(history_path: Path, fingerprint: str, rows: int, good_rows: int, dataset_dir: Path) -> None:
    """Record a validated version; the next run compares its row count against this one."""
    entry = {
        "fingerprint": fingerprint,
        "rows": rows,
        "good_rows": good_rows,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "dataset": str(dataset_dir),
    }
    previous = history_path.read_text() if history_path.exists() else ""
    with atomic_file(history_path) as tmp:
        tmp.write_text(previous + json.dumps(entry) + "\n")
