"""The three rankers on synthetic learning-to-rank data where only a non-linear mix of two features matters.

Each group's single positive is drawn with probability softmax(2.5 * x0 * x1 + 1.5 * |x1|): no single feature
orders the rows well, so a ranker has to learn the interaction to beat the best single feature.
"""

from __future__ import annotations

import math
import os
from typing import Any

import joblib
import numpy as np
import pytest

from pipelines.rankers import RANKERS, DeepRanker, Ranker, RankingData, build_ranker, ndcg_at_k_grouped
from pipelines.rankers.deep_ranker import listwise_softmax_loss
from tests.conftest import move_python_random

N_FEATURES = 6
GROUP_SIZE = 30
# GBDTs on one thread: at this size two OpenMP threads on a shared 2-core machine are ~10x slower.
PARAMS: dict[str, dict[str, Any]] = {
    "lightgbm": {"n_jobs": 1},
    "xgboost": {"n_jobs": 1},
    "deep": {"batch_groups": 16, "lr": 3e-3, "emb_l2": 0.1, "max_epochs": 40, "time_budget_s": 30},
}
MAX_ROUNDS = {"lightgbm": ("n_estimators", 500), "xgboost": ("n_estimators", 500), "deep": ("max_epochs", 40)}
NAMES = list(RANKERS)


def make_data(n_groups: int, seed: int, nan_rate: float = 0.0) -> RankingData:
    """``n_groups`` groups of GROUP_SIZE rows, one positive each; item codes carry no signal here."""
    rng = np.random.default_rng(seed)
    n = n_groups * GROUP_SIZE
    X = rng.normal(size=(n, N_FEATURES)).astype(np.float32)
    utility = 2.5 * X[:, 0] * X[:, 1] + 1.5 * np.abs(X[:, 1]) + rng.gumbel(size=n)
    y = np.zeros((n_groups, GROUP_SIZE), dtype=np.float32)
    y[np.arange(n_groups), utility.reshape(n_groups, GROUP_SIZE).argmax(axis=1)] = 1.0
    X[rng.random(X.shape) < nan_rate] = np.nan
    return RankingData(X=X, group=np.full(n_groups, GROUP_SIZE), y=y.ravel(),
                       feature_names=[f"f{i}" for i in range(N_FEATURES)],
                       item_codes=rng.integers(0, 200, n), user_codes=np.repeat(np.arange(n_groups), GROUP_SIZE))


@pytest.fixture(scope="module")
def data() -> dict[str, RankingData]:
    return {"train": make_data(400, seed=1), "valid": make_data(200, seed=2), "test": make_data(400, seed=3)}


@pytest.fixture(scope="module", params=NAMES)
def fitted(request: pytest.FixtureRequest, data: dict[str, RankingData]) -> Ranker:
    return build_ranker(request.param, **PARAMS[request.param]).fit(data["train"], data["valid"])


def ndcg(scores: np.ndarray, data: RankingData) -> float:
    return ndcg_at_k_grouped(scores, data.labels, data.group, k=10)


def test_beats_random_and_best_single_feature(fitted: Ranker, data: dict[str, RankingData]) -> None:
    test = data["test"]
    random_ndcg = ndcg(np.random.default_rng(0).random(test.n_rows), test)
    single = max(ndcg(sign * test.X[:, j], test) for j in range(N_FEATURES) for sign in (1, -1))
    got = ndcg(fitted.predict(test), test)
    assert got > random_ndcg + 0.4, (fitted.name, got, random_ndcg)
    assert got > single + 0.25, (fitted.name, got, single)


def test_predict_shape_and_dtype(fitted: Ranker, data: dict[str, RankingData]) -> None:
    scores = fitted.predict(data["test"])
    assert scores.shape == (data["test"].n_rows,)
    assert scores.dtype == np.float32
    assert np.isfinite(scores).all()


def test_early_stopping_uses_valid(fitted: Ranker) -> None:
    key, cap = MAX_ROUNDS[fitted.name]
    valid_curve = fitted.history_["valid_ndcg@10"]
    assert 0 < fitted.best_iteration_ < cap
    assert fitted.best_iteration_ < len(valid_curve) < cap  # stopped after patience, before the cap
    assert valid_curve[fitted.best_iteration_ - 1] == pytest.approx(max(valid_curve))
    if fitted.name == "deep":  # an iterative fit says how it stopped (GBDTs' early stopping is the library's)
        assert fitted.report["training"]["stopped_by"] == "patience"
        assert fitted.report["training"]["epochs"] == len(valid_curve)


def test_deep_time_cap_cuts_training_and_is_recorded(data: dict[str, RankingData]) -> None:
    ranker = DeepRanker(**PARAMS["deep"] | {"time_budget_s": 0.0}).fit(data["train"], data["valid"])
    assert len(ranker.history_["loss"]) == 1  # the cap stops within the first epoch, after one batch
    assert ranker.report["training"]["stopped_by"] == "time cap"


def test_joblib_round_trip_gives_identical_predictions(fitted: Ranker, data: dict[str, RankingData], tmp_path) -> None:
    path = tmp_path / f"{fitted.name}.joblib"
    joblib.dump(fitted, path)
    loaded = joblib.load(path)
    np.testing.assert_array_equal(loaded.predict(data["test"]), fitted.predict(data["test"]))
    assert loaded.best_iteration_ == fitted.best_iteration_


def test_feature_importances_point_at_the_informative_features(fitted: Ranker) -> None:
    importances = fitted.feature_importances()
    if fitted.name == "deep":
        assert importances == {}
        return
    assert set(importances) == {f"f{i}" for i in range(N_FEATURES)}
    assert sum(importances.values()) == pytest.approx(1.0)
    assert sorted(importances, key=importances.get)[-2:] in (["f0", "f1"], ["f1", "f0"])


def test_predict_refuses_other_feature_columns(fitted: Ranker, data: dict[str, RankingData]) -> None:
    test = data["test"]
    renamed = RankingData(test.X, test.group, None, list(reversed(test.feature_names)), test.item_codes)
    with pytest.raises(ValueError, match="feature names"):
        fitted.predict(renamed)


def test_unseen_item_codes_are_scored(fitted: Ranker, data: dict[str, RankingData]) -> None:
    """New items reach the ranker every day: the deep ranker maps them to its trained OOV embedding."""
    test = data["test"]
    unseen = RankingData(test.X, test.group, test.y, test.feature_names, item_codes=test.item_codes + 10_000)
    scores = fitted.predict(unseen)
    assert np.isfinite(scores).all()
    assert ndcg(scores, test) > ndcg(fitted.predict(test), test) - 0.1


def test_deep_user_embedding_and_missing_codes(data: dict[str, RankingData]) -> None:
    ranker = DeepRanker(**{**PARAMS["deep"], "user_dim": 8, "max_epochs": 2}).fit(data["train"])
    assert ranker.n_users_ == 400
    test = data["test"]
    assert np.isfinite(ranker.predict(test)).all()  # test users are all unseen: OOV user row
    with pytest.raises(ValueError, match="user_codes are required"):
        ranker.predict(RankingData(test.X, test.group, None, test.feature_names, item_codes=test.item_codes))


def test_listwise_loss_by_hand() -> None:
    logits = np.array([1.0, 2.0, 3.0, 0.0, 0.0], dtype=np.float32)
    segment = np.array([0, 0, 0, 1, 1], dtype=np.int32)
    target = np.array([0.0, 0.0, 1.0, 0.5, 0.5], dtype=np.float32)
    group0 = math.log(math.exp(1) + math.exp(2) + math.exp(3)) - 3.0
    assert float(listwise_softmax_loss(logits, segment, target)) == pytest.approx((group0 + math.log(2)) / 2)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_predictions(name: str, data: dict[str, RankingData], monkeypatch: pytest.MonkeyPatch) -> None:
    """Also when the process's global ``random`` is somewhere else for each fit."""
    small_train, small_valid = make_data(150, seed=4), make_data(60, seed=5)
    runs = []
    for offset in (1, 2):
        move_python_random(monkeypatch, offset)
        runs.append(build_ranker(name, **PARAMS[name]).fit(small_train, small_valid).predict(data["test"]))
    np.testing.assert_array_equal(runs[0], runs[1])


@pytest.mark.parametrize("name", NAMES)
def test_nan_features_work(name: str) -> None:
    """10% missing cells everywhere, plus one group whose rows are entirely missing."""
    train, valid, test = (make_data(n, seed, nan_rate=0.1) for n, seed in ((300, 6), (100, 7), (200, 8)))
    test.X[:GROUP_SIZE] = np.nan
    scores = build_ranker(name, **PARAMS[name]).fit(train, valid).predict(test)
    assert np.isfinite(scores).all()
    assert ndcg(scores, test) > ndcg(np.random.default_rng(0).random(test.n_rows), test) + 0.25


@pytest.mark.parametrize(("name", "cap"), [("lightgbm", {"n_estimators": 7}), ("xgboost", {"n_estimators": 7}),
                                           ("deep", {"max_epochs": 2})])
def test_without_valid_trains_every_round(name: str, cap: dict[str, int], data: dict[str, RankingData]) -> None:
    ranker = build_ranker(name, **{**PARAMS[name], **cap}).fit(data["train"])
    assert ranker.best_iteration_ == next(iter(cap.values()))


@pytest.mark.parametrize("name", ["lightgbm", "xgboost"])
def test_gbdt_threads_default_to_every_core(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """No hard-coded thread count: ``n_jobs`` of null is every core this process may use; a number is kept."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(7)), raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 7)
    small = make_data(20, seed=9)
    assert build_ranker(name, n_estimators=2).fit(small)._model.get_params()["n_jobs"] == 7
    assert build_ranker(name, n_estimators=2, n_jobs=1).fit(small)._model.get_params()["n_jobs"] == 1


def test_a_misspelt_ranker_parameter_is_refused() -> None:
    with pytest.raises(ValueError, match="num_leafs"):
        build_ranker("lightgbm", num_leafs=7)


def test_build_ranker_rejects_unknown_names() -> None:
    with pytest.raises(ValueError, match="unknown ranker"):
        build_ranker("catboost")


def test_ranking_data_checks_group_sizes() -> None:
    with pytest.raises(ValueError, match="sum to 4"):
        RankingData(np.zeros((4, 1)), np.array([2, 3]), None, ["a"])


def test_ndcg_by_hand() -> None:
    scores = np.array([0.1, 0.9, 0.5, 0.2, 0.2, 0.3, 0.4])
    y = np.array([0, 0, 1, 1, 0, 0, 0])
    group = np.array([3, 2, 2])
    # group 0: the positive is ranked 2nd; group 1: tied with a negative, so counted 2nd; group 2: no positive
    second = 1 / math.log2(3)
    assert ndcg_at_k_grouped(scores, y, group) == pytest.approx(second)
    assert ndcg_at_k_grouped(scores, y, group, empty_as_zero=True) == pytest.approx(2 * second / 3)
    assert ndcg_at_k_grouped(scores, y, group, k=1) == 0.0
    scores[2] = 1.0  # group 0's positive moves to the top
    assert ndcg_at_k_grouped(scores, y, group) == pytest.approx((1 + second) / 2)


def test_ndcg_matches_a_per_group_loop() -> None:
    rng = np.random.default_rng(0)
    group = rng.integers(1, 25, size=200)
    n = int(group.sum())
    scores, y = rng.normal(size=n), rng.integers(0, 3, size=n) * (rng.random(n) < 0.2)
    expected = []
    for s, rel in zip(np.split(scores, np.cumsum(group)[:-1]), np.split(y, np.cumsum(group)[:-1]), strict=True):
        discounts = 1 / np.log2(np.arange(2, 7))
        ideal = ((2.0 ** np.sort(rel)[::-1] - 1)[:5] * discounts[: min(5, len(rel))]).sum()
        if ideal > 0:
            expected.append(((2.0 ** rel[np.argsort(-s)] - 1)[:5] * discounts[: min(5, len(rel))]).sum() / ideal)
    assert ndcg_at_k_grouped(scores, y, group, k=5) == pytest.approx(np.mean(expected))
