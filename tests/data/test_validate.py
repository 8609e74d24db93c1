"""Validation stage: each expectation catches its defect, the policies act on it, reports are written.

Great Expectations costs ~0.5 s per ``validate()`` run (plus ~4 s to import once), so the bad-data cases
share one parametrised test and the policy logic without GX is tested directly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.core.config import ValidateParams
from pipelines.core.errors import DataError, ValidationFailed
from pipelines.data.schema import EVENTS_SCHEMA, Manifest
from pipelines.data.validate import _previous_rows, validate

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("SHOPREC_SHARED_DIR", ROOT.parent / "shared"))
TAOBAO_CSV = SHARED / "datasets" / "taobao-sample" / "UserBehavior_sample.csv"
START, END = "2017-11-24T16:00:00+00:00", "2017-12-03T16:00:00+00:00"


def clean_events(users: int = 10, per_user: int = 5) -> pd.DataFrame:
    """``users`` x ``per_user`` distinct events, hourly inside the window, on items i0..i9."""
    rows = [
        {
            "user_id": f"u{u}",
            "item_id": f"i{(u + k) % 10}",
            "event_type": ("view", "cart", "fav", "purchase")[k % 4],
            "ts": pd.Timestamp(START) + pd.Timedelta(hours=u * per_user + k + 1),
            "category_id": "c1",
        }
        for u in range(users)
        for k in range(per_user)
    ]
    return pd.DataFrame(rows)


def write_dataset(path: Path, events: pd.DataFrame, items: list[str] | None = None) -> Path:
    """A canonical-layout data set with the events as given (no schema enforced, so defects survive)."""
    (path / "events").mkdir(parents=True)
    pq.write_table(pa.Table.from_pandas(events, preserve_index=False), path / "events" / "part-00000.parquet")
    catalogue = [f"i{k}" for k in range(10)] if items is None else items
    pq.write_table(pa.table({"item_id": catalogue}), path / "items.parquet")
    Manifest(source="test", rows=len(events), window_start=START, window_end=END).write(path)
    return path


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    return {"data": tmp_path / "data", "out": tmp_path / "out", "reports": tmp_path / "reports"}


def run(dirs: dict[str, Path], **params: object):
    return validate(dirs["data"], dirs["out"], dirs["reports"], ValidateParams(**params))


def summary(dirs: dict[str, Path]) -> dict:
    return json.loads((dirs["reports"] / "validation" / "summary.json").read_text())


def test_clean_data_passes_and_writes_canonical_output(dirs: dict[str, Path], capfd) -> None:
    write_dataset(dirs["data"], clean_events())
    report = run(dirs)
    assert report.success and report.rows == 50 and report.bad_rows == 0 and report.failed == []
    table = pq.read_table(dirs["out"] / "events" / "part-00000.parquet")
    assert table.schema.equals(EVENTS_SCHEMA, check_metadata=True) and table.num_rows == 50
    assert (dirs["out"] / "items.parquet").exists()
    manifest = Manifest.read(dirs["out"])
    assert (manifest.rows, manifest.users, manifest.window_start) == (50, 10, START)
    assert manifest.extra["quarantined"] == 0
    got = summary(dirs)
    assert got["success"] and got["window"] == {"start": START, "end": END}
    names = {e["name"] for e in got["expectations"]}
    assert {"expect_column_to_exist", "expect_compound_columns_to_be_unique"} <= names
    assert (report.docs_path / "index.html").exists()
    history = (dirs["reports"] / "validation" / "history.jsonl").read_text().splitlines()
    assert len(history) == 1 and json.loads(history[0])["rows"] == 50
    assert "Calculating Metrics" not in capfd.readouterr().err


def _drop_column(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns="event_type")


def _int_ids(df: pd.DataFrame) -> pd.DataFrame:
    return df.assign(user_id=range(len(df)))


def _null_id(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[3, "user_id"] = None
    return df


def _unknown_type(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[[1, 2], "event_type"] = "click"
    return df


def _out_of_window(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[[0, 7], "ts"] = pd.Timestamp("2017-11-20T00:00:00Z")
    df.loc[9, "ts"] = pd.Timestamp(END)  # the end is exclusive
    return df


def _duplicates(df: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([df, df.iloc[:3]], ignore_index=True)  # 6 of 53 rows belong to duplicated events


def _unknown_item(df: pd.DataFrame) -> pd.DataFrame:
    df.loc[4, "item_id"] = "i999"
    return df


def _few_events(df: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([df.iloc[:5], clean_events(users=30, per_user=2).assign(user_id=lambda d: "x" + d.user_id)])


@pytest.mark.parametrize(
    ("defect", "label", "count"),
    [
        (_drop_column, "expect_column_to_exist(event_type)", None),
        (_int_ids, "expect_column_values_to_be_of_type(user_id)", None),
        (_null_id, "expect_column_values_to_not_be_null(user_id)", 1),
        (_unknown_type, "expect_column_values_to_be_in_set(event_type)", 2),
        (_out_of_window, "expect_column_values_to_be_between(ts)", 3),
        (_duplicates, "expect_compound_columns_to_be_unique(user_id,item_id,event_type,ts)", 6),
        (_unknown_item, "expect_column_values_to_be_in_set(item_in_catalogue)", 1),
        (_few_events, "expect_column_values_to_be_between(user_events)", 60),
    ],
)
def test_fail_policy_rejects_defect_and_keeps_out_dir(dirs: dict[str, Path], defect, label, count) -> None:
    write_dataset(dirs["data"], defect(clean_events()))
    dirs["out"].mkdir()
    (dirs["out"] / "previous.txt").write_text("old")
    with pytest.raises(ValidationFailed, match=r"^validation failed: .*summary\.json$") as exc:
        run(dirs)
    assert label + ":" in str(exc.value) and "\n" not in str(exc.value)
    assert [p.name for p in dirs["out"].iterdir()] == ["previous.txt"]
    got = summary(dirs)
    assert not got["success"] and label in got["failed"]
    if count is not None:
        (entry,) = [e for e in got["expectations"] if label.startswith(e["name"] + "(" + ",".join(e["columns"]))]
        assert entry["unexpected_count"] == count and entry["example_rows"]
    assert (dirs["reports"] / "validation" / "data_docs" / "index.html").exists()
    assert not (dirs["reports"] / "validation" / "history.jsonl").exists()


def test_row_count_drop_against_previous_version(dirs: dict[str, Path], tmp_path: Path) -> None:
    write_dataset(dirs["data"], clean_events(users=20))
    run(dirs, max_row_drop=0.5)
    smaller = write_dataset(tmp_path / "v2", clean_events(users=8))
    with pytest.raises(ValidationFailed, match=r"expect_table_row_count_to_be_between: 40 rows, fewer than 50"):
        validate(smaller, dirs["out"], dirs["reports"], ValidateParams(max_row_drop=0.5))
    assert Manifest.read(dirs["out"]).rows == 100


def _messy_events() -> pd.DataFrame:
    """100 clean rows, then: one row out of window *and* of unknown type, one unknown type, one duplicate."""
    df = clean_events(users=20)
    df.loc[5, ["ts", "event_type"]] = [pd.Timestamp("2017-11-01T00:00:00Z"), "click"]
    df.loc[6, "event_type"] = "click"
    return pd.concat([df, df.iloc[[10]]], ignore_index=True)


def test_quarantine_sets_bad_rows_aside_under_threshold(dirs: dict[str, Path]) -> None:
    write_dataset(dirs["data"], _messy_events())
    report = run(dirs, policy="quarantine", max_bad_fraction=0.05, max_duplicate_fraction=0.05)
    assert report.success and report.rows == 101 and report.bad_rows == 3
    quarantine = pd.read_parquet(dirs["reports"] / "validation" / "quarantine.parquet")
    between, in_set = "expect_column_values_to_be_between(ts)", "expect_column_values_to_be_in_set(event_type)"
    assert quarantine["reason"].tolist() == [
        f"{in_set}; {between}",
        in_set,
        "expect_compound_columns_to_be_unique(user_id,item_id,event_type,ts)",
    ]
    assert "category_id" in quarantine.columns and "user_events" not in quarantine.columns
    out = pd.read_parquet(dirs["out"] / "events")
    assert len(out) == 98 and not out.duplicated().any()
    assert set(out["event_type"]) <= {"view", "cart", "fav", "purchase"}
    manifest = Manifest.read(dirs["out"])
    assert manifest.rows == 98 and manifest.extra["quarantined"] == 3
    assert summary(dirs)["quarantined"] == 3


def test_quarantine_fails_above_threshold(dirs: dict[str, Path]) -> None:
    write_dataset(dirs["data"], _messy_events())
    with pytest.raises(ValidationFailed, match=r"3 rows to quarantine \(2\.97% > max_bad_fraction 1\.00%\)"):
        run(dirs, policy="quarantine", max_bad_fraction=0.01, max_duplicate_fraction=0.05)
    assert not dirs["out"].exists()
    assert len(pd.read_parquet(dirs["reports"] / "validation" / "quarantine.parquet")) == 3


def test_previous_rows_skips_rerun_of_same_data(tmp_path: Path) -> None:
    history = tmp_path / "history.jsonl"
    assert _previous_rows(history, "abc") is None
    history.write_text(json.dumps({"fingerprint": "old", "rows": 9}) + "\n")
    assert _previous_rows(history, "abc") == 9
    history.write_text(history.read_text() + json.dumps({"fingerprint": "abc", "rows": 5}) + "\n")
    assert _previous_rows(history, "abc") is None
    history.write_text("{broken\n")
    with pytest.raises(DataError, match="history.jsonl:1: not valid JSON"):
        _previous_rows(history, "abc")


def test_missing_manifest_is_a_data_error(dirs: dict[str, Path]) -> None:
    (dirs["data"] / "events").mkdir(parents=True)
    with pytest.raises(DataError, match="no manifest.json"):
        run(dirs)


def _taobao_dataset(path: Path) -> Path:
    names = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
    raw = pd.read_csv(TAOBAO_CSV, header=None, names=names, dtype=str)
    events = pd.DataFrame(
        {
            "user_id": raw["user_id"],
            "item_id": raw["item_id"],
            "event_type": raw["behavior_type"].replace({"pv": "view", "buy": "purchase"}),
            "ts": pd.to_datetime(raw["timestamp"].astype("int64"), unit="s", utc=True).astype("datetime64[us, UTC]"),
            "category_id": raw["category_id"],
        }
    )
    return write_dataset(path, events, items=sorted(set(raw["item_id"])))


@pytest.mark.e2e
@pytest.mark.skipif(not TAOBAO_CSV.exists(), reason=f"shared sample missing: {TAOBAO_CSV}")
def test_taobao_sample_rows_before_window(dirs: dict[str, Path]) -> None:
    _taobao_dataset(dirs["data"])
    expected = f"expect_column_values_to_be_between(ts): 4 rows outside {START}..{END}"
    with pytest.raises(ValidationFailed) as exc:
        run(dirs)
    assert expected in str(exc.value) and not dirs["out"].exists()

    report = run(dirs, policy="quarantine", max_bad_fraction=0.01)
    assert report.success and report.rows == 10_000 and report.bad_rows == 4
    quarantine = pd.read_parquet(dirs["reports"] / "validation" / "quarantine.parquet")
    assert len(quarantine) == 4 and set(quarantine["reason"]) == {"expect_column_values_to_be_between(ts)"}
    assert (quarantine["ts"] < pd.Timestamp(START)).all()
    assert Manifest.read(dirs["out"]).rows == 9_996
