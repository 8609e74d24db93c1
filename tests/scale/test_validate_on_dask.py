"""Validation's user buckets as Dask tasks on a 2-worker LocalCluster give what one process gives: the same
validated parts byte for byte, summary totals, manifest, quarantined rows and rejection message.

``partitions.ROWS_PER_PARTITION`` is lowered so that ~9k synthetic events (four input parts) make four buckets;
the bad rows (events before the window, unknown event types, copied events) sit in users of several buckets.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.core import engine
from pipelines.core.config import SyntheticParams, ValidateParams
from pipelines.core.errors import ValidationFailed
from pipelines.data.generate import generate
from pipelines.data.partitions import bucket_of
from pipelines.data.validate import validate

BUCKETS = 4
WINDOW = "expect_column_values_to_be_between(ts)"
EVENT_TYPE = "expect_column_values_to_be_in_set(event_type)"
DUPLICATE = "expect_compound_columns_to_be_unique(user_id,item_id,event_type,ts)"


def _dataset(path: Path, bad: bool) -> Path:
    """400 synthetic users in four parts; with ``bad``, each part gets an event before the window, one of an
    unknown type and a copied event, in different users."""
    generate(path, SyntheticParams(users=400, items=200, categories=6, events_per_user=25, seed=3),
             users_per_chunk=128)
    for part in sorted((path / "events").glob("*.parquet")) if bad else []:
        table = pq.read_table(part)
        frame = table.to_pandas()
        n = len(frame)
        frame.loc[n // 4, "ts"] = pd.Timestamp("2017-01-01T00:00:00Z")
        frame.loc[n // 2, "event_type"] = "click"
        frame = pd.concat([frame, frame.iloc[[3 * n // 4]]], ignore_index=True)
        pq.write_table(pa.Table.from_pandas(frame, schema=table.schema, preserve_index=False), part)
    return path


def _run(data: Path, root: Path, params: ValidateParams) -> dict[str, Any]:
    """What one validation wrote, comparable between runs: parts' bytes, manifest, summary, quarantined rows,
    the rejection message."""
    out, reports = root / "out", root / "reports"
    try:
        validate(data, out, reports, params)
        error = None
    except ValidationFailed as exc:
        error = str(exc).replace(str(reports), "REPORTS")
    summary = json.loads((reports / "validation" / "summary.json").read_text())
    assert Path(summary.pop("data_docs")).exists()  # the first bucket's Data Docs
    quarantine = reports / "validation" / "quarantine.parquet"
    return {
        "parts": {p.name: p.read_bytes() for p in sorted((out / "events").glob("*.parquet"))},
        "manifest": json.loads((out / "manifest.json").read_text()) if out.exists() else None,
        "summary": summary,
        "quarantine": pq.read_table(quarantine) if quarantine.exists() else None,
        "error": error,
    }


def _here_and_on_dask(
    tmp_path: Path, data: Path, params: ValidateParams, monkeypatch: pytest.MonkeyPatch, cluster: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``data`` validated in this process, then with its buckets as tasks that must have run on the workers."""
    from distributed import get_task_stream

    monkeypatch.setattr("pipelines.data.partitions.ROWS_PER_PARTITION", 3_000)
    monkeypatch.delenv(engine.ADDRESS_ENV, raising=False)
    local = _run(data, tmp_path / "local", params)
    monkeypatch.setenv(engine.ADDRESS_ENV, cluster.scheduler_address)
    with get_task_stream(client=engine.dask_client()) as stream:
        on_dask = _run(data, tmp_path / "dask", params)
    workers = [t["worker"] for t in stream.data if str(t["key"]).startswith("_validate_bucket-")]
    assert len(workers) == BUCKETS and set(workers) <= set(cluster.scheduler_info["workers"])
    return local, on_dask


def _assert_same(on_dask: dict[str, Any], local: dict[str, Any]) -> None:
    assert on_dask.keys() == local.keys()
    for key, value in local.items():
        assert on_dask[key] == value, key


def test_clean_buckets_on_the_cluster_equal_one_process(tmp_path: Path, monkeypatch, dask_cluster) -> None:
    data = _dataset(tmp_path / "data", bad=False)
    local, on_dask = _here_and_on_dask(tmp_path, data, ValidateParams(), monkeypatch, dask_cluster)
    assert local["summary"]["success"] and local["summary"]["partitions"] == BUCKETS
    assert len(local["parts"]) == BUCKETS and local["manifest"]["users"] == 400
    _assert_same(on_dask, local)


def test_quarantine_on_the_cluster_equals_one_process(tmp_path: Path, monkeypatch, dask_cluster) -> None:
    data = _dataset(tmp_path / "data", bad=True)
    local, on_dask = _here_and_on_dask(tmp_path, data, ValidateParams(policy="quarantine"), monkeypatch,
                                       dask_cluster)
    assert local["summary"]["success"] and local["summary"]["quarantined"] == 12
    quarantined = local["quarantine"]
    assert pd.Series(quarantined.column("reason")).value_counts().to_dict() == {WINDOW: 4, EVENT_TYPE: 4, DUPLICATE: 4}
    assert len(set(bucket_of(quarantined.column("user_id"), BUCKETS).tolist())) >= 3
    _assert_same(on_dask, local)


def test_rejection_on_the_cluster_equals_one_process(tmp_path: Path, monkeypatch, dask_cluster) -> None:
    data = _dataset(tmp_path / "data", bad=True)
    local, on_dask = _here_and_on_dask(tmp_path, data, ValidateParams(), monkeypatch, dask_cluster)
    assert local["manifest"] is None and local["parts"] == {} and not local["summary"]["success"]
    assert f"{EVENT_TYPE}: 4 rows with unknown event types" in local["error"]
    _assert_same(on_dask, local)
