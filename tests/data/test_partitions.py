"""User buckets: a published hash (same bucket everywhere), whole users per part, source order kept."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.data.partitions import bucket_of, partition_count, shuffle_by_user, stable_hash


def _fnv1a(text: str) -> int:
    h = 0xCBF29CE484222325
    for byte in text.encode():
        h = ((h ^ byte) * 0x100000001B3) % 2**64
    return h


def test_stable_hash_is_fnv1a_of_utf8_bytes():
    ids = ["u1", "", "héllo", "a-much-longer-user-identifier-0042"]
    assert stable_hash(pa.array(ids)).tolist() == [_fnv1a(x) for x in ids]
    # a sliced array (non-zero offset) and a chunked one hash the same strings the same way
    assert stable_hash(pa.array(ids).slice(1)).tolist() == [_fnv1a(x) for x in ids[1:]]
    assert stable_hash(pa.chunked_array([ids[:2], ids[2:]])).tolist() == [_fnv1a(x) for x in ids]


def test_known_bucket_values_never_change():
    # pinned: a change of the hash would move users between parts of data sets already written
    assert bucket_of(pa.array(["u1", "u2", "user-123"]), 16).tolist() == [_fnv1a(x) % 16 for x in
                                                                          ("u1", "u2", "user-123")]


def test_partition_count():
    assert partition_count(0) == 1
    assert partition_count(10, rows_per_partition=4) == 3


def test_shuffle_keeps_whole_users_in_source_order(tmp_path):
    rng = np.random.default_rng(0)
    users = [f"u{u}" for u in rng.integers(0, 50, 1000)]
    parts = []
    for i in range(3):  # three source parts, rows numbered in source order
        lo, hi = i * 400, min((i + 1) * 400, 1000)
        path = tmp_path / f"src-{i}.parquet"
        pq.write_table(pa.table({"user_id": users[lo:hi], "row": np.arange(lo, hi)}), path)
        parts.append(path)
    out = tmp_path / "out"
    out.mkdir()
    written = shuffle_by_user(parts, out, 4)
    tables = [pq.read_table(p) for p in written]
    assert sum(t.num_rows for t in tables) == 1000
    seen: set[str] = set()
    for t in tables:
        ids = set(t["user_id"].to_pylist())
        assert not ids & seen  # each user in exactly one part
        seen |= ids
        assert set(bucket_of(t["user_id"], 4).tolist()) == {int(written[tables.index(t)].stem[-5:])}
        rows = t["row"].to_numpy()
        assert (np.diff(rows) > 0).all()  # source order kept
    assert seen == set(users)
