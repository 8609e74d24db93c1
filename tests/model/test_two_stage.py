"""Two-stage recommendation on small synthetic data: candidates, features, no leakage, and the ranker's gain."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.core.config import EvaluateParams, SplitParams, SyntheticParams, TrainParams
from pipelines.data.generate import generate
from pipelines.data.split import run_split
from pipelines.evaluation.evaluate import evaluate_models
from pipelines.features.encode import Features, load_features, run_features
from pipelines.features.ranking import FeatureContext, ItemInfo
from pipelines.models import CoVisitation, Popularity, Transitions
from pipelines.models.candidates import candidate_recall, generate_candidates, labels
from pipelines.models.train import fit_models

FAST = TrainParams(sources=["covisit", "itemcos", "transitions", "popularity", "category_popularity"],
                   rankers=["lightgbm"], n_per_source=30)


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Features:
    root = tmp_path_factory.mktemp("two_stage")
    generate(root / "data", SyntheticParams(users=2000, items=600, categories=12, events_per_user=30, seed=3))
    run_split(root / "data", root / "split", SplitParams())
    run_features(root / "split", root / "features")
    return load_features(root / "features")


def test_candidates_are_the_union_of_source_lists_without_history(features: Features):
    history = features.history(("train",))
    sources = {"covisit": CoVisitation().fit(history), "pop": Popularity().fit(history)}
    users, targets = features.target_sets("valid")
    cands = generate_candidates(sources, users[:50], n_per_source=10)
    assert cands.group.sum() == len(cands.item)
    for row, u in enumerate(users[:50]):
        mine = set(cands.item[cands.user == u])
        assert set(cands.source_top["covisit"][row]) | set(cands.source_top["pop"][row]) == mine
        assert not mine & set(history.item[history.user == u])
    assert all(np.isfinite(s).all() for s in cands.scores.values())
    y = labels(cands, targets[:50])
    pairs = zip(users[:50], targets[:50], strict=True)
    assert y.sum() == sum(t[0] in set(cands.item[cands.user == u]) for u, t in pairs)
    recall = candidate_recall(cands, targets[:50])
    assert 0 < recall["merged"]["recall"] <= 1 and set(recall) == {"covisit", "pop", "merged"}


def test_features_have_names_and_no_infinities(features: Features):
    history = features.history(("train",))
    info = ItemInfo.build(features.vocab, features.items, features.events)
    sources = {"transitions": Transitions().fit(history)}
    users, _ = features.target_sets("valid")
    X, names = FeatureContext(history, info).features(generate_candidates(sources, users[:20], 15))
    assert X.shape[1] == len(names) == len(set(names)) and X.dtype == np.float32
    assert not np.isinf(X).any()
    assert (X[:, names.index("user_cat_share_all")] > 0).any()  # synthetic items have categories


def test_changing_test_targets_changes_no_model_input(features: Features):
    """Everything the two-stage model trains on (train history, validation targets) ignores the test targets."""
    changed = features.events.copy()
    test_rows = changed.index[changed["fold"] == "test"]
    changed.loc[test_rows, "item_id"] = changed.loc[test_rows[::-1], "item_id"].to_numpy()
    other = Features(features.vocab, changed, features.targets.assign(
        item_id=np.where(features.targets["fold"] == "test", "i0", features.targets["item_id"])), features.items)
    for folds in [("train",), ("train", "valid")]:
        a, b = features.history(folds), other.history(folds)
        assert np.array_equal(a.item, b.item) and np.array_equal(a.user, b.user)
    for x, y in zip(features.target_sets("valid"), other.target_sets("valid"), strict=True):
        assert all(np.array_equal(p, q) for p, q in zip(x, y, strict=True)) if isinstance(x, list) else (x == y).all()


def test_ranker_beats_its_best_single_source(features: Features):
    models = fit_models(features, FAST)
    report = evaluate_models({k: models[k] for k in ("candidate", "baseline")}, features,
                             EvaluateParams(bootstrap_samples=100), exclude_seen=True)
    ranker = report["models"]["candidate"]["overall"]["ndcg@10"]
    best_source = max(v["ndcg@10"] for k, v in report["components"].items() if k.startswith("source:"))
    assert ranker > best_source
    assert report["validation"]["selection"]["chosen"] == "lightgbm"
    assert report["lift_vs_baseline"]["candidate"]["ndcg@10"]["ci_low"] > 0


def test_fitted_two_stage_round_trips_through_joblib(features: Features, tmp_path: Path):
    import joblib

    model = fit_models(features, FAST.model_copy(update={"rankers": ["xgboost"]}))["candidate"]
    joblib.dump(model, tmp_path / "m.joblib")
    again = joblib.load(tmp_path / "m.joblib")
    users = features.target_sets("test")[0][:30]
    np.testing.assert_array_equal(model.recommend(users, 10)[0], again.recommend(users, 10)[0])
    assert isinstance(pd.DataFrame(model.report_["selection"]["results"]), pd.DataFrame)


def test_seen_items_can_be_candidates_when_repeats_are_allowed(features: Features):
    history = features.history(("train",))
    sources = {"pop": Popularity().fit(history)}
    users = features.target_sets("valid")[0][:30]
    seen = {(u, i) for u, i in zip(history.user, history.item, strict=True)}
    allowed = generate_candidates(sources, users, 50, exclude_seen=False)
    excluded = generate_candidates(sources, users, 50, exclude_seen=True)
    assert any((u, i) in seen for u, i in zip(allowed.user, allowed.item, strict=True))
    assert not any((u, i) in seen for u, i in zip(excluded.user, excluded.item, strict=True))
