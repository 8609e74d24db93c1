"""The per-part stages as Dask tasks on a 2-worker LocalCluster give what one process gives on the same parts.

Split, features, the item-side fits of the sources (per-part pair counts, summed in part order) and the ranking of
each part's test users run on the workers; the deterministic parts (every source's lists, the popularity
baseline) come out exactly the same, and, since the ranker sample fits one process, the
two-stage candidate too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.core import engine
from pipelines.core.config import EvaluateParams, SplitParams, SyntheticParams, TrainParams
from pipelines.data.generate import generate
from pipelines.data.split import run_split
from pipelines.evaluation.evaluate import evaluate_models
from pipelines.evaluation.metrics import per_user_metrics
from pipelines.features.encode import load_features, run_features
from pipelines.models.train import fit_models

FAST = TrainParams(sources=["covisit", "itemcos", "transitions", "popularity", "category_popularity"],
                   rankers=["lightgbm"], n_per_source=20)


def _pipeline(data: Path, out: Path) -> tuple[dict, np.ndarray]:
    """The evaluation report and the candidate's per-user test NDCG@10."""
    run_split(data, out / "split", SplitParams())
    run_features(out / "split", out / "features")
    store = load_features(out / "features")
    assert len(store.parts) == 3
    models = fit_models(store, FAST)
    lists: dict[str, np.ndarray] = {}
    report = evaluate_models({k: models[k] for k in ("candidate", "baseline")}, store,
                             EvaluateParams(bootstrap_samples=50), exclude_seen=True, lists_out=lists)
    return report, per_user_metrics(lists["candidate"], store.target_sets("test")[1], [10])["ndcg@10"]


def test_parts_on_the_cluster_equal_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dask_cluster):
    generate(tmp_path / "data", SyntheticParams(users=600, items=300, categories=8, events_per_user=25, seed=2))
    monkeypatch.setattr("pipelines.data.partitions.ROWS_PER_PARTITION", 5_500)  # ~15k events: three parts
    monkeypatch.delenv(engine.ADDRESS_ENV, raising=False)
    local, local_ndcg = _pipeline(tmp_path / "data", tmp_path / "local")
    monkeypatch.setenv(engine.ADDRESS_ENV, dask_cluster.scheduler_address)
    on_dask, dask_ndcg = _pipeline(tmp_path / "data", tmp_path / "dask")
    assert on_dask["parts"] == local["parts"] == 3
    for source in FAST.sources:
        assert on_dask["components"][f"source:{source}"] == local["components"][f"source:{source}"], source
    untimed = [{k: v for k, v in r["models"]["baseline"].items() if k != "ms_per_user"} for r in (local, on_dask)]
    assert untimed[0] == untimed[1]
    # the ranker sample fits one process, so it trains there (pipelines.rankers.distributed.MIN_DISTRIBUTED_ROWS)
    # and the candidate's lists are the same too
    assert on_dask["models"]["candidate"]["overall"] == local["models"]["candidate"]["overall"]
    np.testing.assert_array_equal(dask_ndcg, local_ndcg)

def test_batch_lists_on_the_cluster_equal_one_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dask_cluster):
    """One trained model, its lists of every user written part by part here and as tasks on the workers."""
    import pandas as pd

    from pipelines.models.train import run_train
    from pipelines.serving.store import LISTS_FILE, write_recommendations

    generate(tmp_path / "data", SyntheticParams(users=400, items=200, categories=6, events_per_user=25, seed=3))
    monkeypatch.setattr("pipelines.data.partitions.ROWS_PER_PARTITION", 4_000)
    monkeypatch.delenv(engine.ADDRESS_ENV, raising=False)
    run_split(tmp_path / "data", tmp_path / "split", SplitParams())
    run_features(tmp_path / "split", tmp_path / "features")
    assert len(load_features(tmp_path / "features").parts) > 1
    run_train(tmp_path / "features", tmp_path / "model", FAST)
    write_recommendations(tmp_path / "model", tmp_path / "local", k=10, features_dir=tmp_path / "features")
    monkeypatch.setenv(engine.ADDRESS_ENV, dask_cluster.scheduler_address)
    summary = write_recommendations(tmp_path / "model", tmp_path / "dask", k=10, features_dir=tmp_path / "features")
    local, on_dask = (pd.read_parquet(tmp_path / d / LISTS_FILE) for d in ("local", "dask"))
    assert summary["users"] == local["user_id"].nunique() == 400
    pd.testing.assert_frame_equal(on_dask, local)
