"""SASRec learns an ordered pattern, scores from any history, stops early, pickles, and never sees test targets."""

from __future__ import annotations

import copy

import joblib
import numpy as np
import pandas as pd
import pytest

from pipelines.data.split import leave_one_out
from pipelines.evaluation.metrics import hit_rate_at_k
from pipelines.features.encode import Features
from pipelines.features.interactions import Interactions, Vocab
from pipelines.models.base import Recommender
from pipelines.models.popularity import Popularity
from pipelines.models.sasrec import SASRec, SASRecParams, _full_softmax, last_items, training_sequences
from pipelines.models.stopping import capped_fits
from tests.conftest import make_events, move_python_random

N_USERS, N_ITEMS = 200, 30
TINY = {"max_len": 12, "dim": 32, "blocks": 1, "dropout": 0.1, "lr": 5e-3, "batch_size": 32, "max_epochs": 40,
        "patience": 3}


def cycle_events(test_shift: int = 0) -> pd.DataFrame:
    """Every user walks the cycle 0 -> 1 -> ... -> 29 -> 0 from their own start; ``test_shift`` moves each last item."""
    rows = []
    for u in range(N_USERS):
        start, length = (7 * u) % N_ITEMS, 6 + u % 7
        for t in range(length):
            item = (start + t + (test_shift if t == length - 1 else 0)) % N_ITEMS
            rows.append((f"u{u:03d}", f"i{item:02d}", "view", t))
    return make_events(rows)


def features(test_shift: int = 0) -> Features:
    split = leave_one_out(cycle_events(test_shift))
    vocab = Vocab(users=np.array(sorted({f"u{u:03d}" for u in range(N_USERS)}), dtype=object),
                  items=np.array([f"i{i:02d}" for i in range(N_ITEMS)], dtype=object))
    return Features.from_frames(vocab, split.events, split.targets, None)


@pytest.fixture(scope="module")
def data() -> Features:
    return features()


@pytest.fixture(scope="module")
def fitted(data: Features) -> SASRec:
    return SASRec(**TINY).fit(data.history(("train",)), data.target_sets("valid"))


def hr_at_10(model: Recommender, targets: tuple[np.ndarray, list[np.ndarray]]) -> float:
    recs, _ = model.recommend(targets[0], 10)
    return float(hit_rate_at_k(recs, targets[1], 10).mean())


def test_training_sequences_predict_the_next_item():
    vocab = Vocab(users=np.array(["a", "b", "c"], dtype=object), items=np.array(list("xyz"), dtype=object))
    history = Interactions(vocab, user=np.array([0, 0, 0, 1], np.int32), item=np.array([2, 0, 1, 1], np.int32),
                           event=np.zeros(4, np.int8), ts=np.arange(4, dtype=np.int64))
    inputs, targets = training_sequences(history, max_len=3)
    # only user a has two events; codes are shifted by one so that 0 is padding
    np.testing.assert_array_equal(inputs, [[0, 3, 1]])
    np.testing.assert_array_equal(targets, [[0, 1, 2]])
    np.testing.assert_array_equal(last_items(history, 2), [[1, 2], [0, 2], [0, 0]])
    inputs, targets = training_sequences(history, max_len=1)  # long histories keep their latest steps
    np.testing.assert_array_equal(inputs, [[1]])
    np.testing.assert_array_equal(targets, [[2]])


def test_learns_the_cycle_far_above_popularity(fitted: SASRec, data: Features):
    valid = data.target_sets("valid")
    popularity = hr_at_10(Popularity().fit(data.history(("train",))), valid)
    assert hr_at_10(fitted, valid) >= 0.9 > popularity + 0.3


def test_scores_every_item_as_float32_even_without_history(fitted: SASRec):
    scores = fitted.score(np.arange(N_USERS))
    assert scores.shape == (N_USERS, N_ITEMS) and scores.dtype == np.float32
    empty = fitted.history
    empty = Interactions(empty.vocab, empty.user[:0], empty.item[:0], empty.event[:0], empty.ts[:0])
    model = copy.deepcopy(fitted).with_history(empty)  # a copy: the fitted fixture is shared
    cold = model.score(np.array([0, 1]))
    assert cold.shape == (2, N_ITEMS) and np.isfinite(cold).all()
    np.testing.assert_array_equal(cold[0], cold[1])


def test_recommend_matches_the_generic_ranking(fitted: SASRec):
    users = np.arange(N_USERS)
    items, scores = fitted.recommend(users, 10)
    ref_items, ref_scores = Recommender.recommend(fitted, users, 10)
    np.testing.assert_array_equal(items, ref_items)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5)


def test_any_sequence_scores_as_a_user_with_that_history(fitted: SASRec):
    """``score_sequence`` reads the sequence's last max_len items: a user's own history gives the user's scores."""
    history, max_len = fitted.history, fitted.params.max_len
    bounds = history.user_bounds
    for user in range(0, N_USERS, 10):
        span = slice(bounds[user], bounds[user + 1])
        own = fitted.score_sequence(history.item[span], history.event[span])
        np.testing.assert_allclose(own, fitted.score(np.array([user]))[0], rtol=1e-4, atol=1e-4)
    longer = np.r_[np.arange(N_ITEMS), np.arange(N_ITEMS)]  # only the last max_len items count
    np.testing.assert_array_equal(fitted.score_sequence(longer, np.zeros(len(longer))),
                                  fitted.score_sequence(longer[-max_len:], np.zeros(max_len)))
    empty = fitted.score_sequence(np.zeros(0, dtype=np.int64), np.zeros(0))
    assert empty.shape == (N_ITEMS,) and np.isfinite(empty).all()


def test_with_history_changes_scores_but_not_weights(fitted: SASRec, data: Features):
    model = copy.deepcopy(fitted)
    weights, before = model._network().get_weights(), model.score(np.arange(N_USERS))
    after = model.with_history(data.history(("train", "valid"))).score(np.arange(N_USERS))
    assert not np.allclose(before, after)
    for old, new in zip(weights, model._network().get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    # the valid item is now history, so it is excluded; the test item comes next in the cycle
    assert hr_at_10(model, data.target_sets("test")) >= 0.9


def test_early_stopping_restores_the_best_epoch(fitted: SASRec, data: Features):
    curve = [e["valid_ndcg@10"] for e in fitted.history_]
    assert len(curve) < TINY["max_epochs"], "patience should have stopped training"
    assert fitted.best_epoch_ == int(np.argmax(curve)) + 1
    assert len(curve) == fitted.best_epoch_ + TINY["patience"]
    assert fitted.report["training"] | {"seconds": 0} == {
        "epochs": len(curve), "best_epoch": fitted.best_epoch_, "stopped_by": "patience", "seconds": 0,
        "time_cap_s": TINY.get("time_budget_s", SASRecParams().time_budget_s)}
    assert fitted._valid_ndcg(data.target_sets("valid")) == pytest.approx(max(curve), abs=1e-9)
    assert all(e["seconds"] > 0 and np.isfinite(e["loss"]) for e in fitted.history_)


def test_max_epochs_and_the_time_cap_bound_training_and_say_which(data: Features):
    model = SASRec(**TINY | {"max_epochs": 2}).fit(data.history(("train",)))
    assert len(model.history_) == 2 and model.best_epoch_ == 2
    assert model.training_["stopped_by"] == "max_epochs"
    assert np.isnan(model.history_[0]["valid_ndcg@10"])
    model = SASRec(**TINY | {"max_epochs": 50, "time_budget_s": 1e-3}).fit(data.history(("train",)))
    assert len(model.history_) == 1  # the first epoch always runs, then the cap is spent
    assert model.training_["stopped_by"] == "time cap" and capped_fits(model.report) == ["model"]


def test_joblib_round_trip_gives_identical_scores(fitted: SASRec, data: Features, tmp_path):
    joblib.dump(fitted, tmp_path / "sasrec.joblib")
    loaded = joblib.load(tmp_path / "sasrec.joblib")
    users = np.arange(N_USERS)
    np.testing.assert_array_equal(loaded.score(users), fitted.score(users))
    np.testing.assert_array_equal(loaded.recommend(users, 5)[0], fitted.recommend(users, 5)[0])
    assert loaded.history_ == fitted.history_ and loaded.params == fitted.params


def test_test_targets_change_nothing_the_model_sees(fitted: SASRec, monkeypatch: pytest.MonkeyPatch):
    shifted = features(test_shift=11)
    assert shifted.target_sets("test")[1][0][0] != features().target_sets("test")[1][0][0]
    move_python_random(monkeypatch, 7)  # the layers' seeds come from the model's seed, not from the process
    again = SASRec(**TINY).fit(shifted.history(("train",)), shifted.target_sets("valid"))
    # same seed, same inputs: same training curve and scores (TF on CPU, within float noise)
    assert [e["loss"] for e in again.history_] == pytest.approx([e["loss"] for e in fitted.history_], abs=1e-4)
    np.testing.assert_allclose(again.score(np.arange(N_USERS)), fitted.score(np.arange(N_USERS)), atol=1e-4)


@pytest.mark.parametrize(("matmul_dtype", "rtol", "atol"), [("float32", 1e-4, 1e-6), ("bfloat16", 2e-2, 2e-2)])
def test_hand_written_softmax_gradient_matches_autodiff(matmul_dtype: str, rtol: float, atol: float):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    h, table = tf.constant(rng.normal(size=(40, 8)), "float32"), tf.constant(rng.normal(size=(25, 8)), "float32")
    y = tf.constant(rng.integers(0, 25, 40), "int32")

    def reference() -> tf.Tensor:
        logits = tf.matmul(h, table, transpose_b=True)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))

    results = []
    for loss in (lambda: _full_softmax(h, y, table, matmul_dtype) / 40, reference):
        with tf.GradientTape() as tape:
            tape.watch([h, table])
            value = 3.0 * loss()
        results.append([value.numpy(), *(g.numpy() for g in tape.gradient(value, [h, table]))])
    for ours, expected in zip(*results, strict=True):
        np.testing.assert_allclose(ours, expected, rtol=rtol, atol=atol)


def test_loss_choice_follows_catalogue_size():
    params = SASRecParams(full_softmax_max_items=100)
    assert params.loss_for(100) == "softmax" and params.loss_for(101) == "sampled"
    assert SASRecParams(loss="softmax", full_softmax_max_items=1).loss_for(10**6) == "softmax"
    with pytest.raises(ValueError, match="heads"):
        SASRecParams(dim=10, heads=3)


def test_sampled_softmax_learns_the_cycle_too(data: Features):
    model = SASRec(**TINY | {"loss": "sampled", "num_negatives": 8}).fit(
        data.history(("train",)), data.target_sets("valid")
    )
    assert hr_at_10(model, data.target_sets("valid")) >= 0.9
