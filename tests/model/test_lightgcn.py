"""LightGCN learns two user communities from their graph, and its fitted state is plain numpy."""

from __future__ import annotations

import joblib
import numpy as np
import pytest

from pipelines.evaluation.metrics import hit_rate_at_k
from pipelines.features.interactions import Interactions, Vocab
from pipelines.models.base import Targets
from pipelines.models.lightgcn import LightGCN, LightGCNParams
from pipelines.models.popularity import Popularity
from pipelines.models.stopping import capped_fits
from tests.conftest import make_events

CLUSTER = 12  # items per community
PER_USER = 6  # items each user consumes: the last one is held out
PARAMS = LightGCNParams(dim=16, layers=2, lr=0.05, batch_size=64, max_epochs=40, eval_every=2, patience=5)


def _community_rows(rng: np.random.Generator) -> tuple[list[tuple[str, str, str, int]], dict[str, str]]:
    """Users a* buy from items A*, users b* from items B*; group a is larger, so popularity leans to A."""
    rows, held_out = [], {}
    for group, n_users in (("a", 30), ("b", 20)):
        for u in range(n_users):
            user = f"{group}{u}"
            items = [f"{group.upper()}{i}" for i in rng.choice(CLUSTER, size=PER_USER, replace=False)]
            rows += [(user, item, "purchase" if t % 3 == 0 else "view", t) for t, item in enumerate(items)]
            held_out[user] = items[-1]
    rows.append(("newcomer", "A0", "view", 0))  # no training history: appears only in the longer history
    return rows, held_out


@pytest.fixture(scope="module")
def data() -> tuple[Interactions, Interactions, Targets]:
    """Training history (held-out items removed), the full history, and the held-out targets."""
    rows, held_out = _community_rows(np.random.default_rng(0))
    events = make_events(rows)
    vocab = Vocab.build(events)
    is_target = np.array([held_out.get(u) == i for u, i in zip(events["user_id"], events["item_id"], strict=True)])
    train = Interactions.from_events(events[~is_target & (events["user_id"] != "newcomer")], vocab)
    full = Interactions.from_events(events, vocab)
    users = vocab.user_codes(np.array(sorted(held_out)))
    targets = [vocab.item_codes(np.array([held_out[u]])) for u in sorted(held_out)]
    return train, full, (users, targets)


@pytest.fixture(scope="module")
def model(data) -> LightGCN:
    train, _, valid = data
    return LightGCN(PARAMS).fit(train, valid)


def test_ranks_own_community_above_the_other(data, model):
    train, _, (users, targets) = data
    recs, _ = model.recommend(users, 5)
    hr = hit_rate_at_k(recs, targets, 5).mean()
    pop_recs, _ = Popularity().fit(train).recommend(users, 5)
    assert hr >= hit_rate_at_k(pop_recs, targets, 5).mean() + 0.2
    group_of_item = np.array([name[0].lower() for name in train.vocab.items])
    group_of_user = np.array([name[0] for name in train.vocab.users[users]])
    assert (group_of_item[recs] == group_of_user[:, None]).mean() > 0.95


def test_shapes_history_and_users_without_history(data, model):
    train, _, _ = data
    scores = model.score(np.arange(train.n_users))
    assert scores.shape == (train.n_users, train.n_items) and scores.dtype == np.float32
    assert np.isfinite(scores).all()
    newcomer = train.vocab.user_codes(["newcomer"])
    assert (model.score(newcomer) == 0).all()  # no edges, no signal
    assert model.history_ and model.best_epoch_ in {row["epoch"] for row in model.history_}
    assert set(model.history_[0]) == {"epoch", "loss", "valid_ndcg@10", "seconds"}


def test_with_history_repropagates_without_training(data):
    train, full, valid = data
    model = LightGCN(PARAMS).fit(train, valid)
    ego = model.ego_.copy()
    newcomer = train.vocab.user_codes(["newcomer"])
    user = valid[0][:1]
    before = model.score(user)
    model.with_history(full)
    assert np.array_equal(model.ego_, ego)
    assert not np.allclose(model.score(user), before)
    scores = model.score(newcomer)[0]  # reached A0 only: its neighbours are the A community
    group_of_item = np.array([name[0] for name in full.vocab.items])
    assert scores[group_of_item == "A"].mean() > scores[group_of_item == "B"].mean()


def test_joblib_round_trip_gives_identical_scores(data, model, tmp_path):
    train, _, _ = data
    users = np.arange(train.n_users)
    joblib.dump(model, tmp_path / "model.joblib")
    loaded = joblib.load(tmp_path / "model.joblib")
    np.testing.assert_array_equal(loaded.score(users), model.score(users))
    assert all(not type(v).__module__.startswith(("tensorflow", "keras")) for v in vars(loaded).values())


def test_same_seed_same_model(data, model):
    train, _, valid = data
    again = LightGCN(PARAMS).fit(train, valid)
    np.testing.assert_array_equal(again.ego_, model.ego_)
    assert again.history_[-1]["loss"] == model.history_[-1]["loss"]


def test_without_targets_the_budget_stops_training_and_keeps_the_last_epoch(data):
    train, _, _ = data
    model = LightGCN(PARAMS, time_budget_s=0.0).fit(train)
    assert [row["epoch"] for row in model.history_] == [1] and model.best_epoch_ == 1
    assert np.isnan(model.history_[0]["valid_ndcg@10"])
    assert model.report["training"]["stopped_by"] == "time cap" and capped_fits(model.report) == ["model"]


def test_without_targets_max_epochs_is_the_length_and_is_recorded(data):
    train, _, _ = data
    model = LightGCN(PARAMS, max_epochs=3, time_budget_s=None).fit(train)
    assert model.training_ | {"seconds": 0} == {"epochs": 3, "best_epoch": 3, "stopped_by": "max_epochs",
                                                "seconds": 0, "time_cap_s": None}
    assert capped_fits(model.report) == []


def test_invalid_params_are_rejected():
    with pytest.raises(ValueError, match="dim"):
        LightGCNParams(dim=0)
