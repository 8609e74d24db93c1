"""ServingModel: explained lists, the precomputed store, the fallback chain, business rules and sessions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.models.popularity import popularity_scores
from pipelines.serving import Rules, ServingModel, UnknownCategory, UnknownItem
from pipelines.serving.store import attach_store, read_manifest, write_recommendations
from tests.serving.conftest import Project


@pytest.fixture(scope="module")
def served(project: Project) -> ServingModel:
    return ServingModel.load(project.model_dir, version="7")


@pytest.fixture(scope="module")
def sasrec_model(project: Project) -> ServingModel:
    return ServingModel.load(project.sasrec_dir)


def active_user(model: ServingModel) -> str:
    """The user with the longest history (enough seen items to test exclusion)."""
    lengths = np.diff(model.history_.user_bounds)
    return str(model.history_.vocab.users[int(lengths.argmax())])


def test_known_user_gets_a_full_explained_list_without_seen_items(served: ServingModel):
    user = active_user(served)
    history = served.history(user)
    recs = served.recommend(user, k=25)
    assert [r.rank for r in recs] == list(range(1, 26))
    items = [r.item_id for r in recs]
    assert len(set(items)) == 25 and not set(items) & set(history["item_id"])
    assert {r.source for r in recs} <= set(served.sources) | {"category_popularity", "popularity"}
    viewed = [r for r in recs if r.source in ("covisit", "transitions")]
    assert viewed, "the two-stage list of an active user has item-to-item candidates"
    for r in viewed:  # the reason names one of the user's own recent items
        assert r.reason.startswith("because you viewed ") and r.reason.split()[-1] in set(history["item_id"])
    assert all(r.reason for r in recs)


def test_history_is_oldest_first_in_utc(served: ServingModel):
    frame = served.history(active_user(served))
    assert list(frame.columns) == ["item_id", "category_id", "event_type", "ts"]
    assert str(frame["ts"].dt.tz) == "UTC" and frame["ts"].is_monotonic_increasing
    assert set(frame["event_type"]) <= {"view", "cart", "fav", "purchase"} and frame["category_id"].notna().all()
    assert served.history("nobody").empty and not served.known_user("nobody")


def test_precomputed_store_gives_the_same_lists_as_scoring_on_the_fly(project: Project, tmp_path: Path):
    summary = write_recommendations(project.model_dir, tmp_path / "serving", k=40)
    fresh = ServingModel.load(project.model_dir)
    assert summary["users"] == fresh.history_.n_users and summary["rows"] > 30 * summary["users"]
    frame = pd.read_parquet(tmp_path / "serving" / "recommendations.parquet")
    assert list(frame.columns) == ["user_id", "rank", "item_id", "score", "source", "reason", "related_item_id"]
    users = fresh.history_.vocab.users[:25]
    on_the_fly = {u: fresh.recommend(u, 20) for u in users}
    assert fresh.needs_scoring(users[0])
    assert attach_store(fresh, tmp_path / "serving")
    assert not fresh.needs_scoring(users[0]) and fresh.needs_scoring(users[0], [{"item_id": "x"}])
    for u in users:
        assert fresh.recommend(u, 20) == on_the_fly[u]


def test_a_store_of_another_model_is_stale_and_ignored(project: Project, tmp_path: Path):
    write_recommendations(project.sasrec_dir, tmp_path / "serving", k=5)
    other = ServingModel.load(project.model_dir)
    assert read_manifest(tmp_path / "serving")["model_id"] != other.model_id
    assert not attach_store(other, tmp_path / "serving") and other.store is None
    assert not attach_store(other, tmp_path / "missing")


def test_unknown_user_gets_global_popularity(served: ServingModel):
    recs = served.recommend("never-seen", k=10)
    params = served.meta["params"]
    pop = popularity_scores(served.history_, params["event_weights"], params["popularity_half_life_days"])
    expected = served.item_ids[np.argsort(-pop, kind="stable")[:10]]
    assert [r.item_id for r in recs] == list(expected)
    assert {(r.source, r.reason) for r in recs} == {("popularity", "popular right now")}


def test_category_filter_and_unknown_category(served: ServingModel):
    user = active_user(served)
    category = served.history(user)["category_id"].iloc[-1]
    recs = served.recommend(user, k=15, category=category)
    cats = dict(zip(served.item_ids, served.categories[served.item_category], strict=True))
    available = {i for i, c in cats.items() if c == category} - set(served.history(user)["item_id"])
    assert len(recs) == min(15, len(available)) > 0 and {r.item_id for r in recs} <= available
    anonymous = served.recommend(None, k=5, category=category)
    assert {r.source for r in anonymous} == {"category_popularity"}
    assert anonymous[0].reason == f"popular in category {category}"
    with pytest.raises(UnknownCategory):
        served.recommend(user, category="no-such-category")


def test_blocked_items_and_the_category_cap_keep_the_list_full(served: ServingModel):
    user = active_user(served)
    plain = served.recommend(user, k=30)
    blocked = frozenset(r.item_id for r in plain[:5])
    ruled = served.with_rules(Rules(blocked=blocked, max_per_category=5))
    recs = ruled.recommend(user, k=30)
    assert len(recs) == 30 and not blocked & {r.item_id for r in recs}
    cats = dict(zip(served.item_ids, served.categories[served.item_category], strict=True))
    per_category = pd.Series([cats[r.item_id] for r in recs]).value_counts()
    assert per_category.max() <= 5
    tight = served.with_rules(Rules(max_per_category=3)).recommend(user, k=30)
    assert len(tight) == 3 * len(served.categories)  # as full as the cap allows: 3 of each of the 8 categories
    assert not blocked & {r.item_id for r in ruled.recommend("never-seen", k=30)}
    assert not blocked & {r.item_id for r in ruled.similar(plain[6].item_id, k=30)}
    assert served.recommend(user, k=30) == plain  # the original instance keeps its rules


def test_lists_are_full_up_to_the_catalogue(served: ServingModel):
    user = active_user(served)
    seen = set(served.history(user)["item_id"])
    n_items = len(served.item_ids)
    recs = served.recommend(user, k=200)
    assert len(recs) == min(200, n_items - len(seen)) and len({r.item_id for r in recs}) == len(recs)
    everything = served.recommend(user, k=n_items, exclude_seen=False)
    assert len(everything) == n_items  # with seen items allowed, the whole catalogue


def session_codes(model: ServingModel, events: list[dict]) -> np.ndarray:
    return model.item_index.get_indexer([e["item_id"] for e in events]).astype(np.int64)


def test_session_runs_the_two_stage_path(sasrec_model: ServingModel):
    """History + session events go through the model's sources (SASRec among them), features and chosen ranker."""
    model = sasrec_model
    user = active_user(model)
    last = model.history(user)["item_id"].iloc[-1]
    events = [{"item_id": str(model.item_ids[i]), "event_type": "view", "ts": f"2017-12-03T10:0{n}:00Z"}
              for n, i in enumerate([3, 40, 41])]
    anon = model.recommend(None, k=20, recent_events=events)
    sequence = session_codes(model, events)
    ranked = model.model.rank_sequence(sequence, np.zeros(3, dtype=np.int64), 20)
    assert [r.item_id for r in anon] == list(model.item_ids[ranked.items[0]])
    assert {r.source for r in anon} <= set(model.sources) and len(anon) == 20
    assert all(r.reason == "based on your recent activity" for r in anon if r.source == "sasrec")
    assert not {e["item_id"] for e in events} & {r.item_id for r in anon}
    other = model.recommend(None, k=20, recent_events=[{"item_id": last, "event_type": "cart", "ts": None}])
    assert [r.item_id for r in other] != [r.item_id for r in anon]
    known = model.recommend(user, k=20, recent_events=events)
    assert not set(model.history(user)["item_id"]) & {r.item_id for r in known}
    assert [r.item_id for r in known] != [r.item_id for r in anon]  # the user's history is part of the sequence
    unknown_items = [{"item_id": "not-in-catalogue", "event_type": "view", "ts": "2017-12-03T10:00:00Z"}]
    assert model.recommend(None, k=10, recent_events=unknown_items) == model.recommend(None, k=10)


def test_session_of_one_view_is_explained_by_it(served: ServingModel):
    pop_top = served.item_ids[served.pop_order[0]]
    recs = served.recommend("new-user", k=20, recent_events=[{"item_id": pop_top, "event_type": "view"}])
    assert len(recs) == 20 and pop_top not in {r.item_id for r in recs}
    viewed = [r for r in recs if r.source in ("covisit", "transitions")]
    assert viewed and all(r.reason in (f"because you viewed {pop_top}", "related to what you viewed") for r in viewed)
    assert any(r.reason == f"because you viewed {pop_top}" for r in viewed)


def test_a_model_without_sequence_scoring_serves_its_own_list_with_a_session(project: Project):
    """A source that cannot score a sequence (random) leaves sessions to the user's own list and the fallbacks."""
    from pipelines.models import RandomRecommender

    base = ServingModel.load(project.model_dir)
    model = ServingModel(RandomRecommender(1).fit(base.history_), pd.read_parquet(project.model_dir / "items.parquet"),
                         base.meta)
    user = active_user(model)
    events = [{"item_id": str(model.item_ids[3]), "event_type": "view"}]
    assert model.model.score_sequence(np.array([3]), np.array([0])) is None
    recs = model.recommend(user, k=10, recent_events=events)
    assert [r.source for r in recs] == ["random"] * 10
    assert {r.source for r in model.recommend(None, k=10, recent_events=events)} <= {"category_popularity",
                                                                                      "popularity"}


def test_seen_items_follow_the_request_in_the_models_own_list(project: Project):
    """exclude_seen=false lets a single model list the user's seen items itself (not only the popularity fill)."""
    from pipelines.models import CoVisitation

    base = ServingModel.load(project.model_dir)
    covisit = CoVisitation(base.event_weights, 3, 20).fit(base.history_)
    model = ServingModel(covisit, pd.read_parquet(project.model_dir / "items.parquet"), base.meta)
    user = active_user(model)
    code = model.user_index.get_loc(user)
    recs = model.recommend(user, k=30, exclude_seen=False)
    expected = covisit.rank(np.array([code]), 30, exclude_seen=False).items[0]
    assert [r.item_id for r in recs] == list(model.item_ids[expected])
    assert {r.source for r in recs} == {"covisit"} and set(model.history(user)["item_id"]) & {r.item_id for r in recs}
    assert not set(model.history(user)["item_id"]) & {r.item_id for r in model.recommend(user, k=30)}


def test_similar_items(served: ServingModel):
    item = str(served.item_ids[served.pop_order[0]])
    recs = served.similar(item, k=12)
    assert len(recs) == 12 and item not in {r.item_id for r in recs}
    assert recs[0].source == "covisit" and recs[0].reason == f"often viewed together with {item}"
    n, code = len(served.item_ids), served.item_index.get_loc(item)
    strength = served.sources["covisit"].pair_strength(np.full(n, code), np.arange(n))
    assert recs[0].item_id == served.item_ids[strength.argmax()]
    with pytest.raises(UnknownItem):
        served.similar("no-such-item")


def test_fallbacks_use_the_event_weights_the_model_was_trained_with(project: Project):
    """Popularity fallbacks weigh events as meta.json's params say; without params, as the pipeline's defaults."""
    from pipelines.core.config import TrainParams

    base = ServingModel.load(project.model_dir)
    items = pd.read_parquet(project.model_dir / "items.parquet")
    weights = {"view": 1.0, "cart": 1.0, "fav": 1.0, "purchase": 50.0}
    for meta, expected in [({"params": {"event_weights": weights, "popularity_half_life_days": 1.0}}, (weights, 1.0)),
                           ({}, (TrainParams().event_weights, TrainParams().popularity_half_life_days))]:
        model = ServingModel(base.model, items, meta)
        pop = popularity_scores(base.history_, *expected)
        assert model.event_weights == expected[0]
        assert [r.item_id for r in model.recommend("never-seen", k=10)] == list(
            base.item_ids[np.argsort(-pop, kind="stable")[:10]])


def test_describe_names_version_and_model(served: ServingModel):
    info = served.describe()
    assert info["version"] == "7" and info["model"] == "two_stage" and info["ranker"] == "lightgbm"
    assert info["sources"] == ["covisit", "transitions", "popularity", "category_popularity"]
    assert info["trained_at"] == served.meta["trained_at"] and info["users"] == served.history_.n_users


def test_category_fallback_reads_the_heads_then_continues_in_the_same_order(served: ServingModel):
    """Of a shopper's categories only the heads are merged first; if a list needs more (rules blocked them), the
    rest follows: together the order a ranking of every item of those categories gives."""
    user = served._user_code(active_user(served))
    items, events = served._user_events(user)
    affinity = np.bincount(served.item_category[items], minlength=len(served.categories),
                           weights=served._event_weight[events])
    every = np.concatenate([served._category_order(c) for c in np.flatnonzero(affinity > 0)])
    scores = affinity[served.item_category[every]] * served.category_share[every]
    order = np.lexsort((every, -scores))
    order = order[scores[order] > 0]
    parts = list(served._fill_parts(items, events, None, width=7))
    assert [len(p.items) for p in parts[:1]] == [7] and len(parts) == 3  # head, rest, global popularity
    assert np.concatenate([p.items for p in parts[:2]]).tolist() == every[order].tolist()


def test_a_pickled_model_explains_its_lists_the_same(served: ServingModel):
    """Workers receive the model pickled (batch lists on Dask): its reasons, category texts included, are the same."""
    import pickle

    again = pickle.loads(pickle.dumps(served))
    category = str(served.categories[0])
    for model in (served, again):
        assert model.recommend("never-seen", k=10, category=category)[0].reason == f"popular in category {category}"
    item = str(served.item_ids[served.pop_order[0]])
    assert again.similar(item, k=100) == served.similar(item, k=100)
    user = active_user(served)
    assert again.recommend(user, k=200) == served.recommend(user, k=200)
