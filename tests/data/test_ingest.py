"""Ingest adapters: canonical output, streaming in parts, compressed inputs, and one-line errors on bad input."""

from __future__ import annotations

import gzip
import json
import sys
import types
import zipfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

import pipelines.data.ingest.adapters as adapters
from pipelines.core.config import SyntheticParams
from pipelines.core.errors import DataError
from pipelines.data.ingest import TAOBAO_WINDOW, SourceSpec, ingest, parse_source
from pipelines.data.schema import EVENTS_SCHEMA, ITEMS_SCHEMA, Manifest, events_dir, items_path

TAOBAO_ROWS = [
    "1,10,100,pv,1511539200",
    "1,11,100,cart,1511539260",
    "2,10,100,fav,1511539320",
    "2,12,101,buy,1511539380",
    "3,10,100,pv,1511539440",
]


def write(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def taobao_file(tmp_path: Path, rows: list[str] = TAOBAO_ROWS, name: str = "ub.csv") -> Path:
    return write(tmp_path / name, "\n".join(rows) + "\n")


def many_rows(n: int) -> list[str]:
    behaviors = ("pv", "cart", "fav", "buy")
    return [f"{i % 7},{i},{i % 3},{behaviors[i % 4]},{1511539200 + i}" for i in range(n)]


def read_events(out: Path) -> pd.DataFrame:
    return ds.dataset(events_dir(out)).to_table().to_pandas()


def part_schemas_exact(out: Path) -> bool:
    parts = sorted(events_dir(out).glob("part-*.parquet"))
    return bool(parts) and all(pq.read_schema(p).equals(EVENTS_SCHEMA) for p in parts)


# ------------------------------------------------------------------------------------------------ specs


def test_parse_source_kinds_and_options() -> None:
    assert parse_source("taobao:data/ub.csv") == SourceSpec("taobao", "data/ub.csv", {})
    assert parse_source("seqfile:b.txt,attributes=a.json").options == {"attributes": "a.json"}
    spec = parse_source("csv:x.csv,sep=,,user_id=u,map=pv:view;buy:purchase,header=false")
    assert spec.options == {"sep": ",", "user_id": "u", "map": "pv:view;buy:purchase", "header": "false"}
    assert parse_source("synthetic") == SourceSpec("synthetic", "", {})
    assert parse_source("synthetic:users=50,seed=3").options == {"users": "50", "seed": "3"}


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nosuch:x.csv", "unknown source kind 'nosuch'"),
        ("taobao", "missing path"),
        ("taobao:", "missing path"),
        ("taobao:x.csv,sep=;", "unknown option 'sep' for taobao"),
        ("synthetic:colour=red", "unknown option 'colour' for synthetic"),
        ("synthetic:junk", "bad option .junk. \\(expected key=value\\)"),
        ("csv:x.csv,ts_unit=days", "option 'ts_unit'"),
        ("csv:x.csv,header=maybe", "option 'header'"),
        ("csv:x.csv,sep=ab", "option 'sep'"),
        ("csv:x.csv,map=pv:click", "option 'map': bad pair 'pv:click'"),
    ],
)
def test_bad_spec_is_data_error(tmp_path: Path, spec: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        ingest(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ adapters


def test_taobao_happy_path(tmp_path: Path) -> None:
    src = taobao_file(tmp_path)
    manifest = ingest(f"taobao:{src}", tmp_path / "out")
    assert part_schemas_exact(tmp_path / "out")
    events = read_events(tmp_path / "out")
    assert events["event_type"].tolist() == ["view", "cart", "fav", "purchase", "view"]
    assert events["user_id"].tolist() == ["1", "1", "2", "2", "3"]
    assert events["category_id"].tolist() == ["100", "100", "100", "101", "100"]
    assert events["session_id"].isna().all()
    assert events["ts"].iloc[0] == pd.Timestamp("2017-11-24T16:00:00Z")
    assert manifest == Manifest.read(tmp_path / "out")
    assert (manifest.source, manifest.rows, manifest.users, manifest.items) == (f"taobao:{src}", 5, 3, 3)
    assert (manifest.window_start, manifest.window_end) == TAOBAO_WINDOW
    assert not items_path(tmp_path / "out").exists()


def test_retailrocket_happy_path(tmp_path: Path) -> None:
    src = write(
        tmp_path / "events.csv",
        "timestamp,visitorid,event,itemid,transactionid\n"
        "1433221332117,257597,view,355908,\n"
        "1433224214164,992329,addtocart,248676,\n"
        "1433221999827,111016,transaction,318965,4000\n",
    )
    manifest = ingest(f"retailrocket:{src}", tmp_path / "out")
    assert part_schemas_exact(tmp_path / "out")
    events = read_events(tmp_path / "out")
    assert events["event_type"].tolist() == ["view", "cart", "purchase"]
    assert events["user_id"].tolist() == ["257597", "992329", "111016"]
    assert events["ts"].iloc[0] == pd.Timestamp("2015-06-02T05:02:12.117Z")
    assert events["category_id"].isna().all()
    assert (manifest.rows, manifest.users, manifest.items, manifest.window_start) == (3, 3, 3, None)


def test_seqfile_with_attributes(tmp_path: Path) -> None:
    src = write(tmp_path / "seq.txt", "1 4 5 6\n2 5 9\n")
    attrs = write(tmp_path / "attrs.json", json.dumps({"4": [1, 2], "5": [3], "6": [], "7": [8]}))
    manifest = ingest(f"seqfile:{src},attributes={attrs}", tmp_path / "out")
    events = read_events(tmp_path / "out")
    assert part_schemas_exact(tmp_path / "out")
    assert events["item_id"].tolist() == ["4", "5", "6", "5", "9"]
    assert set(events["event_type"]) == {"purchase"}
    seconds = (events["ts"] - pd.Timestamp("2000-01-01", tz="UTC")).dt.total_seconds().tolist()
    assert seconds == [0, 1, 2, 0, 1]
    items = pq.read_table(items_path(tmp_path / "out"))
    assert items.schema.equals(ITEMS_SCHEMA)
    assert items["item_id"].to_pylist() == ["4", "5", "6", "7", "9"]
    assert items["attributes"].to_pylist() == [["1", "2"], ["3"], [], ["8"], None]
    assert (manifest.rows, manifest.users, manifest.items, manifest.catalog_items) == (5, 2, 4, 5)
    assert manifest.extra["synthetic_time"] is True and manifest.window_start is None


def test_seqfile_without_attributes_has_no_catalog(tmp_path: Path) -> None:
    src = write(tmp_path / "seq.txt", "1 4 5\n\n2 5\n")
    manifest = ingest(f"seqfile:{src}", tmp_path / "out")
    assert (manifest.rows, manifest.catalog_items) == (3, 0)
    assert not items_path(tmp_path / "out").exists()


def test_generic_csv_with_mapping(tmp_path: Path) -> None:
    src = write(
        tmp_path / "log.csv",
        "when;who;what;action;cat;visit\n"
        "2017-11-25T08:00:00+08:00;u1;i1;click;c1;s1\n"
        "2017-11-25 01:00:00;u1;i2;purchase;;s1\n"
        "2017-11-25T02:00:00.5Z;u2;i1;cart;c2;\n",
    )
    spec = f"csv:{src},sep=;,user_id=who,item_id=what,event_type=action,ts=when,category_id=cat,session_id=visit"
    manifest = ingest(spec + ",map=click:view", tmp_path / "out")
    events = read_events(tmp_path / "out")
    assert part_schemas_exact(tmp_path / "out")
    assert events["event_type"].tolist() == ["view", "purchase", "cart"]
    assert events["ts"].tolist() == [
        pd.Timestamp("2017-11-25T00:00:00Z"),
        pd.Timestamp("2017-11-25T01:00:00Z"),
        pd.Timestamp("2017-11-25T02:00:00.5Z"),
    ]
    assert events["category_id"].fillna("-").tolist() == ["c1", "-", "c2"]  # empty optional values become null
    assert events["session_id"].fillna("-").tolist() == ["s1", "s1", "-"]
    assert (manifest.rows, manifest.users, manifest.items) == (3, 2, 2)


def test_generic_csv_defaults_and_headerless(tmp_path: Path) -> None:
    canonical = write(tmp_path / "c.csv", "user_id,item_id,event_type,ts,category_id\nu,i,view,2017-11-25,c\n")
    ingest(f"csv:{canonical}", tmp_path / "a")
    assert read_events(tmp_path / "a")["category_id"].tolist() == ["c"]  # picked up by its canonical name
    headerless = write(tmp_path / "h.tsv", "1511539200\tu\ti\tbuy\n")
    ingest(
        f"csv:{headerless},header=false,sep=tab,ts=1,user_id=2,item_id=3,event_type=4,ts_unit=s,map=buy:purchase",
        tmp_path / "b",
    )
    events = read_events(tmp_path / "b")
    assert events[["user_id", "item_id", "event_type"]].iloc[0].tolist() == ["u", "i", "purchase"]
    assert events["ts"].iloc[0] == pd.Timestamp("2017-11-24T16:00:00Z")


def test_parquet_file_and_directory(tmp_path: Path) -> None:
    table = pa.table(
        {
            "u": pa.array([1, 2, 3]),
            "item_id": ["a", "b", "a"],
            "event_type": ["view", "purchase", "view"],
            "ms": pa.array([1511539200000, 1511539201000, 1511539202000]),
        }
    )
    (tmp_path / "pq").mkdir()
    pq.write_table(table.slice(0, 2), tmp_path / "pq" / "a.parquet")
    pq.write_table(table.slice(2), tmp_path / "pq" / "b.parquet")
    manifest = ingest(f"parquet:{tmp_path / 'pq'},user_id=u,ts=ms,ts_unit=ms", tmp_path / "out", chunk_rows=2)
    assert part_schemas_exact(tmp_path / "out")
    events = read_events(tmp_path / "out")
    assert sorted(events["user_id"]) == ["1", "2", "3"]
    assert (manifest.rows, manifest.users, manifest.items) == (3, 3, 2)
    # a canonical data set is itself a valid parquet source (timestamp column kept as is)
    again = ingest(f"parquet:{events_dir(tmp_path / 'out')}", tmp_path / "again")
    assert again.rows == 3 and read_events(tmp_path / "again")["ts"].equals(events["ts"])


def test_synthetic_dispatches_to_generator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[SyntheticParams] = []

    def fake_generate(out_dir: Path, params: SyntheticParams, *, progress: bool = False) -> Manifest:
        seen.append(params)
        events_dir(out_dir).mkdir(parents=True)
        manifest = Manifest(source="synthetic", rows=1)
        manifest.write(out_dir)
        return manifest

    monkeypatch.setitem(sys.modules, "pipelines.data.generate", types.SimpleNamespace(generate=fake_generate))
    manifest = ingest("synthetic:users=50,seed=3", tmp_path / "out", synthetic=SyntheticParams(items=99))
    assert (seen[0].users, seen[0].seed, seen[0].items) == (50, 3, 99)
    assert Manifest.read(tmp_path / "out").source == manifest.source == "synthetic:users=50,seed=3"
    with pytest.raises(DataError, match="option 'users'"):
        ingest("synthetic:users=lots", tmp_path / "bad")
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------------------------ inputs


@pytest.mark.parametrize("name", ["ub.csv.gz", "ub.zip", "ub-gzip-without-extension"])
def test_compressed_inputs(tmp_path: Path, name: str) -> None:
    text = ("\n".join(TAOBAO_ROWS) + "\n").encode()
    src = tmp_path / name
    if name.endswith(".zip"):
        with zipfile.ZipFile(src, "w") as archive:
            archive.writestr("UserBehavior.csv", text)
    else:
        src.write_bytes(gzip.compress(text))
    ingest(f"taobao:{src}", tmp_path / "out")
    ingest(f"taobao:{taobao_file(tmp_path)}", tmp_path / "plain")
    assert read_events(tmp_path / "out").equals(read_events(tmp_path / "plain"))


def test_streaming_writes_parts_of_chunk_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapters, "_MIN_BLOCK_BYTES", 256)  # many small CSV blocks, as on a multi-GB file
    src = taobao_file(tmp_path, many_rows(100))
    manifest = ingest(f"taobao:{src}", tmp_path / "small", chunk_rows=30, progress=True)
    parts = sorted(events_dir(tmp_path / "small").glob("*.parquet"))
    assert [pq.read_metadata(p).num_rows for p in parts] == [30, 30, 30, 10]
    assert part_schemas_exact(tmp_path / "small")
    ingest(f"taobao:{src}", tmp_path / "whole")
    assert read_events(tmp_path / "small").equals(read_events(tmp_path / "whole"))
    assert (manifest.rows, manifest.users, manifest.items) == (100, 7, 100)


def test_blank_lines_are_skipped_and_lines_still_counted(tmp_path: Path) -> None:
    rows = TAOBAO_ROWS[:2] + [""] + TAOBAO_ROWS[2:] + ["", "9,9,9,bad,1511539200"]
    with pytest.raises(DataError, match=r"ub\.csv:8: column 'behavior_type': unknown event type 'bad'"):
        ingest(f"taobao:{taobao_file(tmp_path, rows)}", tmp_path / "out")
    assert ingest(f"taobao:{taobao_file(tmp_path, rows[:-1])}", tmp_path / "out").rows == 5


# ------------------------------------------------------------------------------------------------ bad input


def corrupt_gzip(tmp_path: Path) -> Path:
    return write(tmp_path / "ub.csv.gz", gzip.compress(("\n".join(many_rows(2000)) + "\n").encode())[:-100])


BAD_TAOBAO = [
    ("missing", None, r"ub\.csv: no such file"),
    ("empty", b"", r"ub\.csv: empty file"),
    ("columns", TAOBAO_ROWS[:2] + ["1,2,3,pv"] + TAOBAO_ROWS, r"ub\.csv:3: expected 5 columns, found 4"),
    (
        "ts",
        TAOBAO_ROWS[:3] + ["1,2,3,pv,yesterday"],
        r"ub\.csv:4: column 'timestamp': non-numeric timestamp 'yesterday'",
    ),
    ("empty-ts", ["1,2,3,pv,"], r"ub\.csv:1: column 'timestamp': empty value"),
    (
        "event",
        TAOBAO_ROWS + ["1,2,3,click,1511539200"],
        r"ub\.csv:6: column 'behavior_type': unknown event type 'click'",
    ),
    ("utf8", b"1,2,3,pv,1511539200\n1,\xff\xfe,3,pv,1511539200\n", r"ub\.csv:2: column 'item_id': invalid UTF-8 bytes"),
    ("empty-id", [",2,3,pv,1511539200"], r"ub\.csv:1: column 'user_id': empty value"),
]


@pytest.mark.parametrize("case, content, message", BAD_TAOBAO, ids=[c[0] for c in BAD_TAOBAO])
def test_bad_taobao_input(tmp_path: Path, case: str, content: list[str] | bytes | None, message: str) -> None:
    if isinstance(content, list):
        taobao_file(tmp_path, content)
    elif content is not None:
        write(tmp_path / "ub.csv", content)
    with pytest.raises(DataError, match=message) as error:
        ingest(f"taobao:{tmp_path / 'ub.csv'}", tmp_path / "out")
    assert len(str(error.value).splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name != "ub.csv"] == []  # no output, no temporary dir


def test_errors_deep_in_a_stream_name_the_right_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapters, "_MIN_BLOCK_BYTES", 256)
    rows = many_rows(200)
    rows[149] = "1,2,3,pv"
    with pytest.raises(DataError, match=r"ub\.csv:150: expected 5 columns, found 4"):
        ingest(f"taobao:{taobao_file(tmp_path, rows)}", tmp_path / "out", chunk_rows=10)
    rows[149] = "1,2,3,pv,soon"
    with pytest.raises(DataError, match=r"ub\.csv:150: column 'timestamp': non-numeric"):
        ingest(f"taobao:{taobao_file(tmp_path, rows)}", tmp_path / "out", chunk_rows=10)
    header = "timestamp,visitorid,event,itemid,transactionid\n"
    body = "\n".join(f"{1433221332117 + i},{i},view,{i}," for i in range(200)) + "\n1,2,purchase,3,\n"
    with pytest.raises(DataError, match=r"events\.csv:202: column 'event': unknown event type 'purchase'"):
        ingest(f"retailrocket:{write(tmp_path / 'events.csv', header + body)}", tmp_path / "out", chunk_rows=10)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (gzip.compress(b"1,2,3,pv,1511539200\n" * 3000)[:-100], "truncated or corrupt gzip stream"),
        (b"\x1f\x8b" + b"not really gzip" * 10, "truncated or corrupt gzip stream"),
        (gzip.compress(b""), "empty file"),
    ],
    ids=["truncated", "garbage", "empty-member"],
)
def test_bad_gzip(tmp_path: Path, content: bytes, message: str) -> None:
    src = write(tmp_path / "ub.csv.gz", content)
    with pytest.raises(DataError, match=rf"ub\.csv\.gz: {message}"):
        ingest(f"taobao:{src}", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_bad_zip(tmp_path: Path) -> None:
    src = tmp_path / "ub.zip"
    with zipfile.ZipFile(src, "w") as archive:
        archive.writestr("a.csv", "1,2,3,pv,1511539200\n")
        archive.writestr("b.csv", "1,2,3,pv,1511539200\n")
    with pytest.raises(DataError, match="exactly one file, found 2"):
        ingest(f"taobao:{src}", tmp_path / "out")
    write(src, b"PK\x03\x04 truncated")
    with pytest.raises(DataError, match=r"ub\.zip: truncated or corrupt zip archive"):
        ingest(f"taobao:{src}", tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "spec, files, message",
    [
        (
            "retailrocket:{d}/e.csv",
            {"e.csv": "timestamp,visitor,event,itemid\n1,2,view,3\n"},
            r"e\.csv: column 'visitorid': no such column; the file has: timestamp, visitor, event, itemid",
        ),
        (
            "retailrocket:{d}/e.csv",
            {"e.csv": "timestamp,visitorid,event,itemid\n1.5,2,view,3\n"},
            r"e\.csv:2: column 'timestamp': non-numeric timestamp '1.5' \(expected Unix ms\)",
        ),
        (
            "csv:{d}/e.csv",
            {"e.csv": "user_id,item_id,event_type,ts\nu,i,view,last tuesday\n"},
            r"e\.csv:2: column 'ts': not an ISO 8601 timestamp: 'last tuesday'",
        ),
        ("csv:{d}/e.csv", {"e.csv": "\n"}, r"e\.csv:1: line 1 is blank"),
        ("seqfile:{d}/s.txt", {"s.txt": b"1 2 3\n2 \xff\n"}, r"s\.txt:2: invalid UTF-8 bytes"),
        ("seqfile:{d}/s.txt", {"s.txt": "1 2 3\n7\n"}, r"s\.txt:2: user '7' has no items"),
        ("seqfile:{d}/s.txt", {"s.txt": "\n\n"}, r"s\.txt: no events"),
        (
            "seqfile:{d}/s.txt,attributes={d}/a.json",
            {"s.txt": "1 2\n", "a.json": '{\n"2": [1],\n"3": 4\n}'},
            r"a\.json: item '3': attributes must be a list",
        ),
        (
            "seqfile:{d}/s.txt,attributes={d}/a.json",
            {"s.txt": "1 2\n", "a.json": '{\n"2": [1,\n'},
            r"a\.json:3: invalid JSON",
        ),
        ("seqfile:{d}/s.txt,attributes={d}/missing.json", {"s.txt": "1 2\n"}, r"missing\.json: no such file"),
        ("parquet:{d}/missing", {}, r"missing: no such file or directory"),
        ("parquet:{d}/x.parquet", {"x.parquet": "not parquet"}, r"x\.parquet: not a readable Parquet"),
    ],
)
def test_bad_input_other_adapters(tmp_path: Path, spec: str, files: dict[str, str | bytes], message: str) -> None:
    for name, content in files.items():
        write(tmp_path / name, content)
    with pytest.raises(DataError, match=message):
        ingest(spec.format(d=tmp_path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_parquet_null_names_the_row(tmp_path: Path) -> None:
    table = pa.table({"user_id": ["a", None], "item_id": ["i", "j"], "event_type": ["view"] * 2, "ts": [1, 2]})
    pq.write_table(table, tmp_path / "e.parquet")
    with pytest.raises(DataError, match=r"e\.parquet: column 'user_id': row 2: empty value"):
        ingest(f"parquet:{tmp_path / 'e.parquet'},ts_unit=s", tmp_path / "out")


def test_failure_leaves_existing_dataset_untouched(tmp_path: Path) -> None:
    good = ingest(f"taobao:{taobao_file(tmp_path)}", tmp_path / "out")
    before = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    bad = taobao_file(tmp_path, TAOBAO_ROWS + ["1,2,3,pv,nope"], name="bad.csv")
    with pytest.raises(DataError, match=r"bad\.csv:6"):
        ingest(f"taobao:{bad}", tmp_path / "out")
    after = {p.relative_to(tmp_path): p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert after == before and Manifest.read(tmp_path / "out") == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv", "out", "ub.csv"]


# ------------------------------------------------------------------------------------------------ real data


@pytest.mark.e2e
def test_real_taobao_sample(tmp_path: Path, shared_dir: Path) -> None:
    sample = shared_dir / "datasets" / "taobao-sample" / "UserBehavior_sample.csv"
    manifest = ingest(f"taobao:{sample}", tmp_path / "out", chunk_rows=4000)
    assert (manifest.rows, manifest.users, manifest.items) == (10_000, 114, 7_623)
    assert len(list(events_dir(tmp_path / "out").glob("*.parquet"))) == 3
    counts = read_events(tmp_path / "out")["event_type"].value_counts().to_dict()
    assert counts == {"view": 9046, "cart": 536, "fav": 212, "purchase": 206}


@pytest.mark.e2e
def test_real_amazon_beauty(tmp_path: Path, shared_dir: Path) -> None:
    base = shared_dir / "datasets" / "amazon-beauty"
    manifest = ingest(
        f"seqfile:{base / 'Beauty.txt'},attributes={base / 'Beauty_item2attributes.json'}", tmp_path / "out"
    )
    assert (manifest.rows, manifest.users, manifest.items, manifest.catalog_items) == (198_502, 22_363, 12_101, 12_101)
    assert manifest.extra["synthetic_time"] is True
    assert len(manifest.extra["inputs_md5"]) == 2
    assert part_schemas_exact(tmp_path / "out")
