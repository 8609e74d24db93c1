"""Training and evaluation over parts of whole users give the model one history would give.

Item-side fits are sums over the parts (exact up to float32 summation order) and every user is ranked against
their own part, so cutting the users into four parts leaves every source's lists as they were. The learned
ranker sees the same rows in another order (user codes follow the parts) and its seeded bagging and hold-out
draw differ, so its metrics agree within sampling noise, not exactly.
"""

from __future__ import annotations

import copy
import weakref

import numpy as np
import pytest

from pipelines.core.config import EvaluateParams, SplitParams, SyntheticParams, TrainParams
from pipelines.data.generate import generate
from pipelines.data.split import run_split
from pipelines.evaluation.evaluate import evaluate_models
from pipelines.features.encode import FeatureStore, load_features, run_features
from pipelines.models.covisit import CoVisitation
from pipelines.models.train import ALL_EVENTS, EVAL_HISTORY, fit_models, fit_two_stage

FAST = TrainParams(sources=["covisit", "itemcos", "transitions", "popularity", "category_popularity"],
                   rankers=["lightgbm"], n_per_source=30)


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[int, FeatureStore]:
    root = tmp_path_factory.mktemp("parts")
    generate(root / "data", SyntheticParams(users=1200, items=500, categories=10, events_per_user=30, seed=5))
    out = {}
    for n, rows in ((1, None), (4, 10_000)):  # ~36k events: one part, or four
        with pytest.MonkeyPatch.context() as mp:
            if rows:
                mp.setattr("pipelines.data.partitions.ROWS_PER_PARTITION", rows)
            run_split(root / "data", root / f"split{n}", SplitParams())
        run_features(root / f"split{n}", root / f"features{n}")
        out[n] = load_features(root / f"features{n}")
    assert len(out[4].parts) == 4
    return out


def test_four_parts_train_and_evaluate_as_one(stores: dict[int, FeatureStore]):
    results = {}
    for n, store in stores.items():
        models = fit_models(store, FAST)
        assert (len(models["candidate"].history) == 0) == (n > 1)  # several parts: no user state kept
        report = evaluate_models({k: models[k] for k in ("candidate", "baseline")}, store,
                                 EvaluateParams(bootstrap_samples=50), exclude_seen=True)
        assert report["parts"] == n
        results[n] = report, models
    (one, _), (four, _) = results[1], results[4]
    assert one["users"] == four["users"] > 1000
    untimed = [{k: v for k, v in r["models"]["baseline"].items() if k != "ms_per_user"} for r in (one, four)]
    assert untimed[0] == untimed[1]  # popularity: a sum over parts, the same lists
    for metric in ("ndcg@10", "hr@10"):
        assert four["models"]["candidate"]["overall"][metric] == pytest.approx(
            one["models"]["candidate"]["overall"][metric], abs=0.015), metric
    for source in ("covisit", "itemcos", "transitions", "popularity", "category_popularity"):
        assert four["components"][f"source:{source}"] == pytest.approx(one["components"][f"source:{source}"],
                                                                       abs=1e-4), source


def test_moving_a_model_drops_the_old_item_item_rows_before_refitting(stores: dict[int, FeatureStore],
                                                                     monkeypatch: pytest.MonkeyPatch):
    """At scale the train stage holds one model at a time: the old co-visitation rows must be gone when their
    refit on the longer history starts, while a copy taken before a move keeps its own rows and lists."""
    store = stores[4]
    model = fit_two_stage(store, FAST)
    before = copy.copy(model)
    part = store.histories(("train",)).part(0)
    users = np.unique(part.user)[:50]
    lists = before.attach(part).rank(users, 10).items
    model.move_to(store.histories(EVAL_HISTORY))
    assert np.array_equal(before.attach(part).rank(users, 10).items, lists)
    assert model.sources["covisit"].matrix_.nnz > before.sources["covisit"].matrix_.nnz
    del before

    old_rows = weakref.ref(model.sources["covisit"].matrix_)
    released_at_refit = []
    refit = CoVisitation.fit_matrix
    monkeypatch.setattr(CoVisitation, "fit_matrix",
                        lambda self, history: released_at_refit.append(old_rows() is None) or refit(self, history))
    model.move_to(store.histories(ALL_EVENTS))
    assert released_at_refit == [True]


def test_component_lists_on_a_sample_of_the_evaluated_users(stores: dict[int, FeatureStore]):
    models = fit_models(stores[4], FAST)
    full = evaluate_models({"candidate": models["candidate"]}, stores[4], EvaluateParams(bootstrap_samples=0), True)
    sampled = evaluate_models({"candidate": models["candidate"]}, stores[4],
                              EvaluateParams(bootstrap_samples=0, max_component_users=200), True)
    assert sampled["component_users"] == 200 < full["component_users"] == full["users"]
    assert sampled["models"] == {"candidate": {**full["models"]["candidate"],
                                               "ms_per_user": sampled["models"]["candidate"]["ms_per_user"]}}
    assert sampled["components"]["source:popularity"] != full["components"]["source:popularity"]


def test_batch_lists_of_a_parted_model_come_part_by_part(stores: dict[int, FeatureStore], tmp_path):
    import pandas as pd

    from pipelines.models.train import ALL_EVENTS, load_model, run_train
    from pipelines.serving.store import write_recommendations

    store = stores[4]
    run_train(store.root, tmp_path / "model", FAST)
    summary = write_recommendations(tmp_path / "model", tmp_path / "serving", k=10, features_dir=store.root)
    lists = pd.read_parquet(tmp_path / "serving" / "recommendations.parquet")
    assert summary["users"] == lists["user_id"].nunique() == store.vocab.n_users
    serving = load_model(tmp_path / "model")
    part = store.histories(ALL_EVENTS).part(2)
    user = int(part.user[0])
    expected = serving.attach(part).rank(np.array([user]), 10).items[0]
    got = lists[lists["user_id"] == store.vocab.users[user]].sort_values("rank")["item_id"].tolist()
    assert got == [store.vocab.items[i] for i in expected if i >= 0]


def test_a_parted_models_api_ranks_live_events_after_the_stored_history(stores: dict[int, FeatureStore], tmp_path):
    """A model trained on parts holds no user history; the store keeps each user's newest events, so a known
    shopper's live event is ranked after their own history, as the model attached to their part would rank it."""
    from pipelines.models.train import ALL_EVENTS, run_train
    from pipelines.serving.model import ServingModel
    from pipelines.serving.store import STORE_HISTORY, attach_store, write_recommendations

    store = stores[4]
    run_train(store.root, tmp_path / "model", FAST)
    write_recommendations(tmp_path / "model", tmp_path / "serving", k=10, features_dir=store.root)
    served = ServingModel.load(tmp_path / "model")
    assert not len(served.history_)  # nothing of the users in the model itself
    assert attach_store(served, tmp_path / "serving")
    part = store.histories(ALL_EVENTS).part(1)
    user = int(part.user[0])
    span = slice(part.user_bounds[user], part.user_bounds[user + 1])
    items, events = served._user_events(user)
    np.testing.assert_array_equal(items, part.item[span][-STORE_HISTORY:])
    np.testing.assert_array_equal(events, part.event[span][-STORE_HISTORY:])
    viewed = int(part.item[span][0])
    got = served.recommend(str(store.vocab.users[user]), 10,
                           recent_events=[{"item_id": str(store.vocab.items[viewed]), "event_type": "view"}])
    sequence = np.r_[items, viewed]
    expected = served.model.attach(part).rank_sequence(sequence, np.r_[events, 0], 10, True, user).items[0]
    assert [r.item_id for r in got][:5] == [str(store.vocab.items[i]) for i in expected[:5]]
