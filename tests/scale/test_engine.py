"""The features stage's aggregations give the same tables on pandas and on Dask DataFrames over Parquet."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines.core import engine
from pipelines.core.config import SplitParams, SyntheticParams
from pipelines.data.events_io import read_events
from pipelines.data.generate import generate
from pipelines.data.schema import EVENT_TYPES
from pipelines.data.split import make_split
from pipelines.features.encode import item_stats, run_features, user_stats

COLUMNS = ["user_id", "item_id", "event_type"]
KNOWN = [("fold", "!=", "test")]


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A split of 400 synthetic users, events written in small row groups (several Dask partitions)."""
    root = tmp_path_factory.mktemp("split")
    generate(root / "data", SyntheticParams(users=400, items=300, categories=12, events_per_user=25))
    split = make_split(read_events(root / "data"), SplitParams())
    out = root / "split"
    for what in ("events", "targets"):
        (out / what).mkdir(parents=True)
    split.events.to_parquet(out / "events" / "part-00000.parquet", index=False, row_group_size=2_000)
    split.targets.to_parquet(out / "targets" / "part-00000.parquet", index=False)
    return out


def item_stats_before_the_engine(events: pd.DataFrame) -> pd.DataFrame:
    """The single-machine implementation item_stats replaced (pivot_table): the outputs must not change."""
    counts = events.pivot_table(index="item_id", columns="event_type", values="user_id", aggfunc="size", fill_value=0)
    counts = counts.reindex(columns=list(EVENT_TYPES), fill_value=0)
    counts["users"] = events.groupby("item_id")["user_id"].nunique()
    counts["view_to_purchase"] = counts["purchase"] / counts["view"].where(counts["view"] > 0)
    return counts.reset_index()


def test_one_machine_is_the_default(split_dir: Path, on_one_machine: None) -> None:
    assert engine.dask_address() is None
    assert engine.dask_client() is None
    assert engine.backend() == "pandas"
    assert isinstance(engine.read_parquet(split_dir / "events", COLUMNS, filters=KNOWN), pd.DataFrame)


def test_empty_address_means_one_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(engine.ADDRESS_ENV, "  ")
    assert engine.backend() == "pandas"


def test_item_stats_unchanged_against_the_previous_implementation(split_dir: Path, on_one_machine: None) -> None:
    events = pd.read_parquet(split_dir / "events")
    expected = item_stats_before_the_engine(events[events["fold"] != "test"])
    got = item_stats(engine.read_parquet(split_dir / "events", COLUMNS, filters=KNOWN))
    pd.testing.assert_frame_equal(got, expected)


def test_dask_backend_is_lazy_and_reads_partitions(split_dir: Path, on_dask: str) -> None:
    import dask.dataframe as dd

    frame = engine.read_parquet(split_dir / "events", COLUMNS, filters=KNOWN)
    assert engine.backend() == "dask"
    assert isinstance(frame, dd.DataFrame)
    assert frame.npartitions > 1
    assert engine.dask_client().scheduler.address == on_dask


@pytest.mark.parametrize("stats", [item_stats, user_stats])
def test_aggregations_equal_on_pandas_and_dask(split_dir: Path, stats, monkeypatch: pytest.MonkeyPatch,
                                               dask_cluster) -> None:
    monkeypatch.delenv(engine.ADDRESS_ENV, raising=False)
    local = stats(engine.read_parquet(split_dir / "events", COLUMNS, filters=KNOWN))
    monkeypatch.setenv(engine.ADDRESS_ENV, dask_cluster.scheduler_address)
    distributed = stats(engine.read_parquet(split_dir / "events", COLUMNS, filters=KNOWN))
    pd.testing.assert_frame_equal(distributed, local)
    assert len(local) > 100 and local.iloc[:, 1:5].to_numpy().sum() > 0


def test_features_stage_writes_identical_files_on_dask(split_dir: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch, dask_cluster) -> None:
    monkeypatch.delenv(engine.ADDRESS_ENV, raising=False)
    run_features(split_dir, tmp_path / "local")
    monkeypatch.setenv(engine.ADDRESS_ENV, dask_cluster.scheduler_address)
    run_features(split_dir, tmp_path / "dask")
    names = sorted(p.name for p in (tmp_path / "local").glob("*.parquet"))
    assert {"item_stats.parquet", "user_stats.parquet"} <= set(names)
    assert names == sorted(p.name for p in (tmp_path / "dask").glob("*.parquet"))
    for name in names:
        local, dist = pq.read_table(tmp_path / "local" / name), pq.read_table(tmp_path / "dask" / name)
        assert dist.schema.equals(local.schema, check_metadata=True), name
        assert dist.equals(local), name


def _engine_choice_on_a_worker(address: str) -> tuple[str, bool]:
    """What the engine picks inside a task running on a Dask worker with the cluster configured."""
    import os

    os.environ[engine.ADDRESS_ENV] = address
    try:
        return engine.backend(), engine.dask_client() is None
    finally:
        del os.environ[engine.ADDRESS_ENV]


def test_a_task_already_on_the_cluster_computes_locally(on_dask: str) -> None:
    """No nested cluster jobs from inside a worker (e.g. a stage run by Prefect's DaskTaskRunner)."""
    client = engine.dask_client()
    assert client.submit(_engine_choice_on_a_worker, on_dask, pure=False).result() == ("pandas", True)
    assert engine.backend() == "dask"  # the caller itself still uses the cluster
