"""Validation by user buckets gives the verdicts, counts and rows of validating the whole data set at once.

``partitions.ROWS_PER_PARTITION`` is lowered so that ~290 rows make 4 buckets; the same data validated as one
bucket is the reference. The defects sit in users of different buckets, and the users with too few events
crowd one bucket, so that bucket alone would fail the min-events check that the whole data set passes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.core.config import ValidateParams
from pipelines.core.errors import DataError, ValidationFailed
from pipelines.data import partitions
from pipelines.data.partitions import bucket_of, part_name
from pipelines.data.schema import Manifest
from pipelines.data.validate import PARTITIONED_BY, validate

START, END = "2017-11-24T16:00:00+00:00", "2017-12-03T16:00:00+00:00"
BUCKETS = 4
DUPLICATE = "expect_compound_columns_to_be_unique(user_id,item_id,event_type,ts)"
WINDOW = "expect_column_values_to_be_between(ts)"
MIN_EVENTS = "expect_column_values_to_be_between(user_events)"


def _bucket_users(prefix: str, bucket: int, count: int) -> list[str]:
    """The first ``count`` ids ``prefix0, prefix1, ...`` that hash into ``bucket``."""
    ids = [f"{prefix}{k}" for k in range(50 * count)]
    return [u for u, b in zip(ids, bucket_of(pa.array(ids), BUCKETS).tolist(), strict=True) if b == bucket][:count]


def _events(users: list[str], per_user: int, first_minute: int) -> pd.DataFrame:
    rows = [
        {
            "user_id": user,
            "item_id": f"i{(u + k) % 10}",
            "event_type": ("view", "cart", "fav", "purchase")[k % 4],
            "ts": pd.Timestamp(START) + pd.Timedelta(minutes=first_minute + u * per_user + k),
            "category_id": "c1",
        }
        for u, user in enumerate(users)
        for k in range(per_user)
    ]
    return pd.DataFrame(rows)


def messy_events() -> pd.DataFrame:
    """40 users x 5 events, 40 users x 2 events all in bucket 0 (61% of that bucket's rows, 29% of all rows),
    one copied event in each of 6 users across the buckets, and 2 rows before the window in two buckets."""
    regular = _events([f"u{k}" for k in range(40)], 5, 1)
    few = _events(_bucket_users("x", 0, 40), 2, 1000)
    events = pd.concat([regular, few], ignore_index=True)
    events.loc[[3, 57], "ts"] = pd.Timestamp("2017-11-01T00:00:00Z")
    copies = events.iloc[[0, 26, 52, 78, 104, 130]]  # first events of u0, u5, u10, ...: all four buckets
    return pd.concat([events, copies], ignore_index=True)


def write_dataset(path: Path, events: pd.DataFrame, parts: int) -> Path:
    """The events cut into ``parts`` row chunks (ingest's layout), a 10-item catalogue and a manifest."""
    (path / "events").mkdir(parents=True)
    bounds = [len(events) * k // parts for k in range(parts + 1)]
    for k in range(parts):
        chunk = events.iloc[bounds[k]: bounds[k + 1]]
        pq.write_table(pa.Table.from_pandas(chunk, preserve_index=False), path / "events" / part_name(k))
    pq.write_table(pa.table({"item_id": [f"i{k}" for k in range(10)]}), path / "items.parquet")
    Manifest(source="test", rows=len(events), window_start=START, window_end=END).write(path)
    return path


def run(tmp: Path, name: str, data: Path, buckets: int, monkeypatch: pytest.MonkeyPatch, **params: object):
    """Validate ``data`` into ``tmp/name`` (out) and ``tmp/name-reports`` as ``buckets`` user buckets."""
    rows = Manifest.read(data).rows
    monkeypatch.setattr(partitions, "ROWS_PER_PARTITION", -(-rows // buckets))  # ceil: exactly ``buckets``
    return validate(data, tmp / name, tmp / f"{name}-reports", ValidateParams(**params))


def summary(tmp: Path, name: str) -> dict:
    return json.loads((tmp / f"{name}-reports" / "validation" / "summary.json").read_text())


def counts(got: dict) -> dict[str, tuple[bool, int | None]]:
    entries = got["expectations"]
    return {f"{e['name']}({','.join(e['columns'])})": (e["success"], e["unexpected_count"]) for e in entries}


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(list(frame.columns), kind="stable").reset_index(drop=True)


QUARANTINE = {"policy": "quarantine", "max_bad_fraction": 0.05, "max_duplicate_fraction": 0.05}


def test_buckets_give_the_rows_counts_and_quarantine_of_one_bucket(tmp_path: Path, monkeypatch) -> None:
    data = write_dataset(tmp_path / "data", messy_events(), parts=2)
    one = run(tmp_path, "one", data, 1, monkeypatch, **QUARANTINE)
    four = run(tmp_path, "four", data, BUCKETS, monkeypatch, **QUARANTINE)
    assert one.success and four.success and (four.rows, four.bad_rows) == (one.rows, one.bad_rows) == (286, 8)

    parts = sorted((tmp_path / "four" / "events").iterdir())
    assert [p.name for p in parts] == [part_name(b) for b in range(BUCKETS)]
    owner: dict[str, int] = {}
    for b, path in enumerate(parts):
        users = pq.read_table(path, columns=["user_id"]).column("user_id")
        assert set(bucket_of(users, BUCKETS).tolist()) == {b}  # the part holds the users hashed to it ...
        for user in set(users.to_pylist()):
            assert owner.setdefault(user, b) == b  # ... and each of them only there
    assert len(owner) == 80

    good_one, good_four = pd.read_parquet(tmp_path / "one" / "events"), pd.read_parquet(tmp_path / "four" / "events")
    pd.testing.assert_frame_equal(_sorted(good_four), _sorted(good_one))
    quarantined = [pd.read_parquet(tmp_path / f"{n}-reports/validation/quarantine.parquet") for n in ("one", "four")]
    pd.testing.assert_frame_equal(_sorted(quarantined[1]), _sorted(quarantined[0]))
    assert quarantined[0]["reason"].value_counts().to_dict() == {DUPLICATE: 6, WINDOW: 2}

    s1, s4 = summary(tmp_path, "one"), summary(tmp_path, "four")
    assert counts(s4) == counts(s1)
    assert counts(s4)[MIN_EVENTS] == (True, 80) and counts(s4)[DUPLICATE] == (True, 12)
    assert (s4["partitions"], s1["partitions"]) == (BUCKETS, 1) and s4["quarantined"] == s1["quarantined"] == 8
    m1, m4 = Manifest.read(tmp_path / "one"), Manifest.read(tmp_path / "four")
    assert (m4.rows, m4.users, m4.items) == (m1.rows, m1.users, m1.items) == (278, 80, 10)
    assert m4.extra | {"partitions": 1} == m1.extra and m4.extra["partitions"] == BUCKETS
    assert m4.extra["partitioned_by"] == PARTITIONED_BY
    assert not list(tmp_path.glob(".validate-buckets-*"))  # the shuffle's scratch directory is gone


def test_defects_across_buckets_are_caught_as_in_one_bucket(tmp_path: Path, monkeypatch) -> None:
    data = write_dataset(tmp_path / "data", messy_events(), parts=3)
    failures = {}
    for name, buckets in (("one", 1), ("four", BUCKETS)):
        with pytest.raises(ValidationFailed) as exc:
            run(tmp_path, name, data, buckets, monkeypatch, max_duplicate_fraction=0.01)
        failures[name] = str(exc.value).replace(f"{name}-reports", "")
        assert not (tmp_path / name).exists()
    assert failures["four"] == failures["one"]
    assert f"{DUPLICATE}: 12 rows in duplicated events (4.20%" in failures["four"]
    assert f"{WINDOW}: 2 rows" in failures["four"]
    got = summary(tmp_path, "four")
    assert counts(got) == counts(summary(tmp_path, "one")) and got["failed"] == [WINDOW, DUPLICATE]
    (duplicates,) = [e for e in got["expectations"] if e["name"] == "expect_compound_columns_to_be_unique"]
    assert sorted(duplicates["example_rows"])[:1] == [0]  # positions in the bucket-ordered rows, first bucket on


def test_fingerprint_and_row_count_over_buckets(tmp_path: Path, monkeypatch) -> None:
    events = messy_events()
    first = run(tmp_path, "out", write_dataset(tmp_path / "v1", events, parts=2), BUCKETS, monkeypatch, **QUARANTINE)
    # the same rows cut into other parts: recognised as a re-run, not compared against itself
    again = run(tmp_path, "out", write_dataset(tmp_path / "v1b", events, parts=5), BUCKETS, monkeypatch, **QUARANTINE)
    assert first.success and again.success and summary(tmp_path, "out")["previous_rows"] is None
    history = [json.loads(line) for line in (tmp_path / "out-reports" / "validation" / "history.jsonl").open()]
    assert history[0]["fingerprint"] == history[1]["fingerprint"]

    smaller = write_dataset(tmp_path / "v2", events.iloc[:120], parts=2)
    with pytest.raises(ValidationFailed, match=r"expect_table_row_count_to_be_between: 120 rows, fewer than 143 "):
        run(tmp_path, "out", smaller, BUCKETS, monkeypatch, **QUARANTINE)
    assert summary(tmp_path, "out")["previous_rows"] == 286 and Manifest.read(tmp_path / "out").rows == 278


def test_parts_to_shuffle_must_agree_on_columns(tmp_path: Path, monkeypatch) -> None:
    events = messy_events()
    data = write_dataset(tmp_path / "data", events, parts=2)
    pq.write_table(pa.Table.from_pandas(events.iloc[:10].assign(extra=1), preserve_index=False),
                   data / "events" / part_name(2))
    (tmp_path / "out").mkdir()
    with pytest.raises(DataError, match=r"part-00002\.parquet: columns differ from part-00000\.parquet: extra$"):
        run(tmp_path, "out", data, BUCKETS, monkeypatch)
    assert list((tmp_path / "out").iterdir()) == [] and not list((tmp_path / "out-reports").rglob("*.*"))
    assert not list(tmp_path.glob(".*"))  # no scratch or half-written directory left beside out
