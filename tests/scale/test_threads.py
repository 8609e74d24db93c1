"""Parts on a pool of threads in one process (``SHOPREC_THREADS``) give what one thread gives, in part order."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.core import engine
from pipelines.core.config import SplitParams, SyntheticParams
from pipelines.core.errors import ShoprecError
from pipelines.data.generate import generate
from pipelines.data.split import run_split
from pipelines.features.encode import load_features, run_features
from pipelines.models.train import run_train
from pipelines.serving.store import LISTS_FILE, write_recommendations
from tests.scale.test_stages_on_dask import FAST, _pipeline


def _slow_square(x: int) -> tuple[int, str]:
    time.sleep(0.02 * (5 - x % 5))  # later parts finish first
    return x * x, threading.current_thread().name


def test_results_come_in_job_order_from_several_threads(on_one_machine: None, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(engine.THREADS_ENV, "3")
    out = engine.map_parts(_slow_square, [(x,) for x in range(10)])
    assert [r for r, _ in out] == [x * x for x in range(10)]
    assert len({name for _, name in out}) == 3


def test_at_most_threads_results_are_held_ahead_of_the_caller(on_one_machine: None, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(engine.THREADS_ENV, "2")
    started: list[int] = []

    def job(x: int) -> int:
        started.append(x)
        return x

    parts = engine.imap_parts(job, [(x,) for x in range(20)])
    assert next(parts) == 0
    time.sleep(0.05)
    assert len(started) <= 3  # the one consumed, one refill, one already running
    assert list(parts) == list(range(1, 20))


def test_work_inside_a_part_runs_on_that_thread(on_one_machine: None, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(engine.THREADS_ENV, "2")

    def outer(x: int) -> set[str]:
        return {name for _, name in engine.map_parts(_slow_square, [(y,) for y in range(4)])} | {
            threading.current_thread().name}

    assert all(len(names) == 1 for names in engine.map_parts(outer, [(0,), (1,)]))


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_thread_count_is_a_clear_error(value: str, on_one_machine: None, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(engine.THREADS_ENV, value)
    with pytest.raises(ShoprecError, match=engine.THREADS_ENV):
        engine.map_parts(_slow_square, [(1,), (2,)])


def test_pipeline_on_two_threads_equals_one_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   on_one_machine: None):
    generate(tmp_path / "data", SyntheticParams(users=600, items=300, categories=8, events_per_user=25, seed=2))
    monkeypatch.setattr("pipelines.data.partitions.ROWS_PER_PARTITION", 5_500)  # three parts
    monkeypatch.setenv(engine.THREADS_ENV, "1")
    one, one_ndcg = _pipeline(tmp_path / "data", tmp_path / "one")
    monkeypatch.setenv(engine.THREADS_ENV, "2")
    two, two_ndcg = _pipeline(tmp_path / "data", tmp_path / "two")
    for report in (one, two):
        for entry in report["models"].values():
            entry.pop("ms_per_user")
    assert two["models"] == one["models"] and two["components"] == one["components"]
    np.testing.assert_array_equal(two_ndcg, one_ndcg)


def test_batch_lists_on_two_threads_equal_one_thread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     on_one_machine: None):
    generate(tmp_path / "data", SyntheticParams(users=400, items=200, categories=6, events_per_user=25, seed=3))
    monkeypatch.setattr("pipelines.data.partitions.ROWS_PER_PARTITION", 4_000)
    run_split(tmp_path / "data", tmp_path / "split", SplitParams())
    run_features(tmp_path / "split", tmp_path / "features")
    assert len(load_features(tmp_path / "features").parts) > 2
    run_train(tmp_path / "features", tmp_path / "model", FAST)
    lists = {}
    for threads in ("1", "2"):
        monkeypatch.setenv(engine.THREADS_ENV, threads)
        write_recommendations(tmp_path / "model", tmp_path / threads, k=10, features_dir=tmp_path / "features")
        lists[threads] = pd.read_parquet(tmp_path / threads / LISTS_FILE)
    pd.testing.assert_frame_equal(lists["2"], lists["1"])
