"""The features stage's per-part work gives the same files in this process and as tasks on a Dask cluster,
and the same tables whether the users come as one part or several."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines.core import engine
from pipelines.core.config import SplitParams, SyntheticParams
from pipelines.data.generate import generate
from pipelines.data.split import run_split
from pipelines.features.encode import load_features, run_features


@pytest.fixture(scope="module")
def split_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """The split of 400 synthetic users as one part and as four parts of whole users."""
    root = tmp_path_factory.mktemp("split")
    generate(root / "data", SyntheticParams(users=400, items=300, categories=12, events_per_user=25))
    out = {1: root / "split1"}
    run_split(root / "data", out[1], SplitParams())
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("pipelines.data.partitions.ROWS_PER_PARTITION", 3_000)  # ~10k events: four parts
        out[4] = root / "split4"
        run_split(root / "data", out[4], SplitParams())
    assert len(list((out[4] / "events").glob("*.parquet"))) == 4
    return out


def _ids(store, frame: pd.DataFrame) -> pd.DataFrame:
    """Encoded rows with string ids again, in a canonical order (codes differ between partitionings)."""
    out = frame.assign(user=store.vocab.users[frame["user"]], item=store.vocab.items[frame["item"]])
    return out.sort_values(list(out.columns), kind="stable").reset_index(drop=True)


def test_one_machine_is_the_default(on_one_machine: None) -> None:
    assert engine.dask_address() is None
    assert engine.dask_client() is None
    assert engine.map_parts(divmod, [(7, 2), (9, 4)]) == [(3, 1), (2, 1)]


def test_empty_address_means_one_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(engine.ADDRESS_ENV, "  ")
    assert engine.dask_client() is None


@pytest.mark.parametrize("pending", [4, 1])  # item tables folded at the end, or after every part
def test_features_of_four_parts_equal_one_part(split_dirs: dict[int, Path], tmp_path: Path, on_one_machine: None,
                                               monkeypatch: pytest.MonkeyPatch, pending: int) -> None:
    """Encoded events, targets, categories and statistics are reductions over parts: the partitioning is invisible."""
    monkeypatch.setattr("pipelines.features.encode._Folded.PENDING", pending)
    for n in (1, 4):
        run_features(split_dirs[n], tmp_path / f"f{n}")
    one, four = load_features(tmp_path / "f1"), load_features(tmp_path / "f4")
    assert len(four.parts) == 4
    np.testing.assert_array_equal(one.vocab.items, four.vocab.items)
    assert sorted(one.vocab.users) == sorted(four.vocab.users)
    for what in ("events", "targets"):
        pd.testing.assert_frame_equal(_ids(one, getattr(one.all, what)), _ids(four, getattr(four.all, what)))
    pd.testing.assert_series_equal(one.category, four.category)
    pd.testing.assert_series_equal(one.serving_category, four.serving_category)
    for name in ("item_stats.parquet", "user_stats.parquet"):
        assert pq.read_table(tmp_path / "f1" / name).equals(pq.read_table(tmp_path / "f4" / name)), name
    # each part's users are a contiguous code range, and a part holds all of its users' events
    bounds = [(p.events["user"].min(), p.events["user"].max()) for p in map(four.part, four.parts)]
    assert all(hi < lo for (_, hi), (lo, _) in zip(bounds[:-1], bounds[1:], strict=True))


def test_item_stats_count_known_events(split_dirs: dict[int, Path], tmp_path: Path, on_one_machine: None) -> None:
    run_features(split_dirs[4], tmp_path / "f")
    events = pd.read_parquet(split_dirs[4] / "events")
    known = events[events["fold"] != "test"]
    stats = pd.read_parquet(tmp_path / "f" / "item_stats.parquet").set_index("item_id")
    expected = known.groupby("item_id").agg(view=("event_type", lambda e: int((e == "view").sum())),
                                            users=("user_id", "nunique"))
    pd.testing.assert_frame_equal(stats[["view", "users"]], expected.sort_index(), check_names=False)


def test_features_stage_writes_identical_files_on_dask(split_dirs: dict[int, Path], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, dask_cluster) -> None:
    """The four parts encoded as tasks on the workers of a LocalCluster: byte-for-byte the same tables."""
    monkeypatch.delenv(engine.ADDRESS_ENV, raising=False)
    run_features(split_dirs[4], tmp_path / "local")
    monkeypatch.setenv(engine.ADDRESS_ENV, dask_cluster.scheduler_address)
    run_features(split_dirs[4], tmp_path / "dask")
    names = sorted(str(p.relative_to(tmp_path / "local")) for p in (tmp_path / "local").rglob("*.parquet"))
    assert {"item_stats.parquet", "user_stats.parquet", "events/part-00000.parquet"} <= set(names)
    assert names == sorted(str(p.relative_to(tmp_path / "dask")) for p in (tmp_path / "dask").rglob("*.parquet"))
    for name in names:
        local, dist = pq.read_table(tmp_path / "local" / name), pq.read_table(tmp_path / "dask" / name)
        assert dist.schema.equals(local.schema, check_metadata=True), name
        assert dist.equals(local), name


def _engine_choice_on_a_worker(address: str) -> bool:
    """Whether a task running on a Dask worker with the cluster configured would compute in its own process."""
    import os

    os.environ[engine.ADDRESS_ENV] = address
    try:
        return engine.dask_client() is None
    finally:
        del os.environ[engine.ADDRESS_ENV]


def test_a_task_already_on_the_cluster_computes_locally(on_dask: str) -> None:
    """No nested cluster jobs from inside a worker (e.g. a stage run by Prefect's DaskTaskRunner)."""
    client = engine.dask_client()
    assert client.submit(_engine_choice_on_a_worker, on_dask, pure=False).result() is True
    assert engine.dask_client() is not None  # the caller itself still uses the cluster
