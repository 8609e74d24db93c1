"""Validate a canonical data set with Great Expectations before anything trains on it.

Under ``policy: fail`` any failed expectation stops the pipeline. Under ``policy: quarantine`` rows failing
row-level expectations are set aside (``quarantine.parquet``, with the reasons) and the rest goes on, unless
too many rows are bad or a table-level expectation (columns, types, size) fails. Either way the reports
(``summary.json``, GX Data Docs) are written, and ``out_dir`` is written only when the data passes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.atomic import atomic_dir, atomic_file, write_json
from pipelines.core.config import ValidateParams
from pipelines.core.errors import DataError, ShoprecError, ValidationFailed
from pipelines.data.expectations import (
    DUPLICATE_KEY,
    IN_CATALOGUE,
    USER_EVENTS,
    CheckResult,
    Window,
    build_checks,
    run_checks,
)
from pipelines.data.schema import EVENTS_SCHEMA, Manifest, events_dir, items_path


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
class _Dataset:
    events: pd.DataFrame  # original columns, RangeIndex (GX reports row positions)
    items: Path | None
    manifest: Manifest


@dataclass
class _Verdict:
    success: bool
    bad_rows: int
    bad_fraction: float
    problems: list[str]  # one-line reasons the data set is rejected; empty on success


def validate(
    dataset_dir: str | Path, out_dir: str | Path, reports_dir: str | Path, params: ValidateParams
) -> ValidationReport:
    """Run the suite on ``dataset_dir``; write reports, then the validated data set or raise ValidationFailed."""
    data = _load(Path(dataset_dir))
    report_dir = Path(reports_dir) / "validation"
    summary_path, docs_path = report_dir / "summary.json", report_dir / "data_docs"
    history_path = report_dir / "history.jsonl"
    window = _window(data.manifest, params)
    fingerprint = _fingerprint(data.events)
    prev_rows = _previous_rows(history_path, fingerprint)
    catalogue = _catalogue(data.items)
    checks = build_checks(data.events.columns, window, catalogue, prev_rows, params)
    with atomic_dir(docs_path) as tmp_docs:
        results = run_checks(_with_derived_columns(data.events, catalogue), checks, tmp_docs)

    reasons = _reasons(data.events, results)
    verdict = _judge(params, results, reasons, len(data.events))
    quarantined = _write_quarantine(report_dir, data.events, reasons, params.policy)
    summary = _summary(params, data, window, results, verdict, quarantined, fingerprint, prev_rows)
    write_json(summary_path, summary | {"data_docs": str(docs_path / "index.html")})
    failed = [r.check.label for r in results if not r.success]
    if not verdict.success:
        raise ValidationFailed(f"validation failed: {'; '.join(verdict.problems)}; see {summary_path}")

    good = data.events.drop(index=list(reasons)) if params.policy == "quarantine" else data.events
    _write_dataset(Path(out_dir), good, data, window, quarantined)
    _append_history(history_path, fingerprint, len(data.events), len(good), Path(dataset_dir))
    return ValidationReport(True, len(data.events), verdict.bad_rows, failed, summary_path, docs_path)


def _load(dataset_dir: Path) -> _Dataset:
    """Read the events parts, the optional catalogue and the manifest; the manifest marks a complete data set."""
    if not (dataset_dir / "manifest.json").exists():
        raise DataError(dataset_dir, "no manifest.json: not a complete canonical data set")
    parts = sorted(events_dir(dataset_dir).glob("*.parquet"))
    if not parts:
        raise DataError(events_dir(dataset_dir), "no events parquet parts")
    frames = [_read_parquet(p) for p in parts]
    events = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    items = items_path(dataset_dir)
    return _Dataset(events, items if items.exists() else None, Manifest.read(dataset_dir))


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pq.read_table(path).to_pandas()
    except (OSError, pa.ArrowException) as exc:
        raise DataError(path, f"unreadable parquet: {exc}") from None


def _catalogue(items: Path | None) -> list[str] | None:
    """The catalogue's item ids, or None when the data set has no catalogue (the check is then skipped)."""
    if items is None:
        return None
    try:
        ids = pq.read_table(items, columns=["item_id"]).column("item_id").to_pylist()
    except (OSError, pa.ArrowException, KeyError) as exc:
        raise DataError(items, f"cannot read the item_id column: {exc}") from None
    return sorted({str(i) for i in ids if i is not None})


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


def _fingerprint(events: pd.DataFrame) -> str:
    """A content hash of the events, so a re-run of the same data is recognised whatever the file layout."""
    digest = hashlib.sha256(",".join(map(str, events.columns)).encode())
    digest.update(pd.util.hash_pandas_object(events, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def _previous_rows(history_path: Path, fingerprint: str) -> int | None:
    """Row count of the last validated version, or None if there is none or it is this very data."""
    if not history_path.exists():
        return None
    lines = [(n, line) for n, line in enumerate(history_path.read_text().splitlines(), 1) if line.strip()]
    if not lines:
        return None
    number, line = lines[-1]
    try:
        last = json.loads(line)
    except json.JSONDecodeError:
        raise DataError(history_path, "not valid JSON", line=number) from None
    return None if last.get("fingerprint") == fingerprint else int(last["rows"])


def _with_derived_columns(events: pd.DataFrame, catalogue: list[str] | None) -> pd.DataFrame:
    """The frame GX sees: the events plus, per row, how many events its user has and whether its item is known."""
    derived = {}
    if "user_id" in events.columns:
        derived[USER_EVENTS] = events.groupby("user_id", dropna=False)["user_id"].transform("size").astype("int64")
    if catalogue is not None and "item_id" in events.columns:
        derived[IN_CATALOGUE] = events["item_id"].isin(catalogue)
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


def _judge(params: ValidateParams, results: list[CheckResult], reasons: dict[int, list[str]], rows: int) -> _Verdict:
    """Apply the policy: ``fail`` rejects any failure, ``quarantine`` table-level ones or too many bad rows."""
    bad_rows = len(reasons)
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


def _write_quarantine(report_dir: Path, events: pd.DataFrame, reasons: dict[int, list[str]], policy: str) -> int:
    """Under ``quarantine``, write the flagged rows with a ``reason`` column; otherwise drop a stale file."""
    path = report_dir / "quarantine.parquet"
    if policy != "quarantine":
        path.unlink(missing_ok=True)
        return 0
    bad = events.loc[list(reasons)].assign(reason=["; ".join(r) for r in reasons.values()])
    with atomic_file(path) as tmp:
        pq.write_table(pa.Table.from_pandas(bad, preserve_index=False), tmp)
    return len(bad)


def _summary(
    params: ValidateParams,
    data: _Dataset,
    window: Window,
    results: list[CheckResult],
    verdict: _Verdict,
    quarantined: int,
    fingerprint: str,
    prev_rows: int | None,
) -> dict[str, Any]:
    return {
        "success": verdict.success,
        "policy": params.policy,
        "rows": len(data.events),
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


def _write_dataset(out_dir: Path, events: pd.DataFrame, data: _Dataset, window: Window, quarantined: int) -> None:
    """Write the validated rows as a canonical data set, manifest last, swapped in atomically."""
    manifest = Manifest(
        source=data.manifest.source,
        rows=len(events),
        users=int(events["user_id"].nunique()),
        items=int(events["item_id"].nunique()),
        catalog_items=data.manifest.catalog_items,
        window_start=_iso(window.start),
        window_end=_iso(window.end),
        extra=data.manifest.extra | {"quarantined": quarantined},
    )
    with atomic_dir(out_dir) as tmp:
        events_dir(tmp).mkdir()
        pq.write_table(_canonical_table(events), events_dir(tmp) / "part-00000.parquet")
        if data.items is not None:
            shutil.copy2(data.items, items_path(tmp))
        manifest.write(tmp)


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
