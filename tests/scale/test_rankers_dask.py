"""LightGBM and XGBoost rankers trained on the Dask cluster match the single-machine fit, and stay local models."""

from __future__ import annotations

from pathlib import Path

import joblib
import numpy as np
import pytest

from pipelines.core import engine
from pipelines.rankers import Ranker, RankingData, build_ranker, ndcg_at_k_grouped
from pipelines.rankers import distributed as distributed_rankers
from pipelines.rankers.distributed import early_stopped, group_partitions, to_dask
from tests.model.test_rankers import PARAMS, make_data

GBDTS = ["lightgbm", "xgboost"]
# small enough for a 2-worker test cluster in seconds; the local fit gets the same settings
SMALL = {"n_estimators": 120}


@pytest.fixture(scope="module")
def data() -> dict[str, RankingData]:
    return {"train": make_data(300, seed=11), "valid": make_data(100, seed=12), "test": make_data(300, seed=13)}


def ndcg(scores: np.ndarray, data: RankingData) -> float:
    return ndcg_at_k_grouped(scores, data.labels, data.group, k=10)


def fit(name: str, data: dict[str, RankingData]) -> Ranker:
    return build_ranker(name, **PARAMS[name], **SMALL).fit(data["train"], data["valid"])


@pytest.mark.parametrize("name", GBDTS)
def test_dask_fit_matches_local_fit(name: str, data: dict[str, RankingData], monkeypatch: pytest.MonkeyPatch,
                                   dask_cluster, tmp_path: Path) -> None:
    monkeypatch.delenv(engine.ADDRESS_ENV, raising=False)
    local = fit(name, data)
    monkeypatch.setenv(engine.ADDRESS_ENV, dask_cluster.scheduler_address)
    monkeypatch.setattr("pipelines.rankers.distributed.MIN_DISTRIBUTED_ROWS", 0)  # this small data goes too
    distributed = fit(name, data)
    test = data["test"]
    random = ndcg(np.random.default_rng(0).random(test.n_rows), test)
    got_local, got_dask = ndcg(local.predict(test), test), ndcg(distributed.predict(test), test)
    assert got_dask > random + 0.4 and got_local > random + 0.4, (got_dask, got_local, random)
    assert abs(got_dask - got_local) < 0.05, (got_dask, got_local)
    # early stopping on the valid set happened (on the cluster for XGBoost, afterwards for LightGBM)
    assert 0 < distributed.best_iteration_ < SMALL["n_estimators"]
    curve = distributed.history_[f"valid_ndcg@{distributed.eval_at}"]
    assert curve[distributed.best_iteration_ - 1] == pytest.approx(max(curve))

    # the fitted model is a plain local one: it pickles and predicts on numpy with no cluster configured
    path = tmp_path / f"{name}.joblib"
    joblib.dump(distributed, path)
    monkeypatch.delenv(engine.ADDRESS_ENV)
    loaded = joblib.load(path)
    np.testing.assert_array_equal(loaded.predict(test), distributed.predict(test))
    assert set(loaded.feature_importances()) == set(test.feature_names)


def test_partitions_hold_whole_groups(data: dict[str, RankingData], dask_cluster) -> None:
    from distributed import Client

    train = data["train"]
    with Client(dask_cluster.scheduler_address, set_as_default=False) as client:
        scattered = to_dask(train, client, min_partitions=4)
        assert scattered.n_partitions == 4
        row_chunks, group_chunks = scattered.X.chunks[0], scattered.group.chunks[0]
        assert [int(g.sum()) for g in np.split(train.group, np.cumsum(group_chunks)[:-1])] == list(row_chunks)
        np.testing.assert_array_equal(client.compute(scattered.X).result(), train.X)
        np.testing.assert_array_equal(client.compute(scattered.qid).result(), train.qid)


def test_group_partitions_are_balanced_and_cover_everything() -> None:
    group = np.random.default_rng(0).integers(1, 50, size=1000)
    bounds = group_partitions(group, 7)
    assert bounds[0] == 0 and bounds[-1] == len(group) and len(bounds) == 8
    rows = np.add.reduceat(group, bounds[:-1])
    assert rows.max() - rows.min() < 2 * group.max()
    assert group_partitions(np.array([5]), 3).tolist() == [0, 1]  # never an empty partition


def test_early_stopped_follows_the_patience_rule() -> None:
    curve = [0.1, 0.3, 0.2, 0.3, 0.25, 0.2, 0.5]
    assert early_stopped(curve, patience=3) == (2, curve[:5])  # round 2 best, no gain in the 3 after it
    assert early_stopped(curve, patience=10) == (7, curve)


@pytest.mark.parametrize("name", GBDTS)
def test_rows_below_the_threshold_train_in_this_process(name: str, data: dict[str, RankingData],
                                                        monkeypatch: pytest.MonkeyPatch, dask_cluster) -> None:
    """With a cluster configured, a ranker sample that fits one process trains here, exactly as without one."""
    monkeypatch.delenv(engine.ADDRESS_ENV, raising=False)
    local = fit(name, data)
    monkeypatch.setenv(engine.ADDRESS_ENV, dask_cluster.scheduler_address)
    assert data["train"].n_rows < distributed_rankers.MIN_DISTRIBUTED_ROWS
    here = fit(name, data)
    np.testing.assert_array_equal(here.predict(data["test"]), local.predict(data["test"]))
