"""Every candidate source trains on tiny data, ranks the whole catalogue and never re-recommends history."""

import numpy as np
import pytest

from pipelines.core.config import TrainParams
from pipelines.features.interactions import Interactions, Vocab
from pipelines.models import CoVisitation, Popularity, Transitions, build_model
from tests.conftest import make_events


@pytest.fixture
def history() -> Interactions:
    # Everyone walks a -> b -> c; "p" is popular but never follows anything in particular.
    rows = []
    for u in range(30):
        rows += [(f"u{u}", "p", "view", 0), (f"u{u}", "a", "view", 10), (f"u{u}", "b", "view", 20)]
        if u < 20:
            rows.append((f"u{u}", "c", "view", 30))
    rows += [("v", "a", "view", 0), ("w", "p", "view", 0)]
    events = make_events(rows)
    vocab = Vocab.build(events)
    return Interactions.from_events(events, vocab)


def test_popularity_ranks_by_weighted_counts(history):
    model = Popularity({"view": 1.0}, half_life_days=3).fit(history)
    items, _ = model.recommend(np.array([history.vocab.user_codes(["v"])[0]]), k=3, exclude_seen=False)
    assert history.vocab.items[items[0][0]] in {"a", "p"}


def test_covisitation_follows_transitions(history):
    model = CoVisitation({"view": 1.0, "cart": 3.0}, window=2, history_len=5).fit(history)
    v = history.vocab.user_codes(["v"])
    items, scores = model.recommend(v, k=2)
    assert history.vocab.items[items[0][0]] == "b"
    assert "a" not in history.vocab.items[items[0]]  # seen items are excluded
    assert scores.shape == (1, 2) and scores[0, 0] >= scores[0, 1]


def test_full_catalogue_is_ranked_for_users_without_history(history):
    model = CoVisitation().fit(history)
    scores = model.score(np.arange(history.n_users))
    assert scores.shape == (history.n_users, history.n_items)
    assert np.isfinite(scores).all()


def test_build_model_from_params():
    assert isinstance(build_model(TrainParams(model="popularity")), Popularity)
    assert isinstance(build_model(TrainParams(model="covisit")), CoVisitation)


def test_recommend_before_fit_is_an_error():
    with pytest.raises(RuntimeError, match="fit"):
        CoVisitation().recommend(np.array([0]), k=1)


@pytest.mark.parametrize("k, n", [(1, 5), (3, 64), (10, 100), (40, 33)])
def test_top_k_matches_a_full_sort(k, n):
    from pipelines.models.base import top_k

    rng = np.random.default_rng(k)
    scores = rng.integers(0, 5, size=(7, n)).astype(np.float32)  # many ties
    idx, vals = top_k(scores, k)
    expected = -np.sort(-scores, axis=1)[:, : min(k, n)]
    np.testing.assert_array_equal(vals, expected)
    np.testing.assert_array_equal(np.take_along_axis(scores, idx, axis=1), vals)


def test_rank_lists_explain_items_and_pad_past_the_catalogue(history):
    model = CoVisitation({"view": 1.0}, window=2, history_len=5).fit(history)
    v = history.vocab.user_codes(["v"])
    ranked = model.rank(v, k=history.n_items + 2)
    n_unseen = history.n_items - 1  # v saw only a
    assert ranked.items.shape == (1, history.n_items + 2)
    assert (ranked.items[0, n_unseen:] == -1).all() and np.isneginf(ranked.scores[0, n_unseen:]).all()
    assert (ranked.sources[0, :n_unseen] == 0).all() and model.source_names == ["covisit"]
    assert history.vocab.items[ranked.items[0, 0]] == "b" and history.vocab.items[ranked.related[0, 0]] == "a"
    everything = model.rank(v, k=history.n_items, exclude_seen=False)
    assert "a" in set(history.vocab.items[everything.items[0]])  # seen items follow the request
    popular = Popularity().fit(history).rank(v, k=3)
    assert (popular.related == -1).all() and not Popularity.relates_items


def test_a_sequence_scores_as_the_same_history_would(history):
    """``score_sequence`` of a user's own history equals ``score`` of that user, for every source that has it."""
    from pipelines.models import CategoryPopularity, ItemCosine

    category = np.arange(history.n_items) % 2
    sources = [CoVisitation({"view": 1.0}, window=2, history_len=2), ItemCosine(history_len=2), Transitions(2),
               Popularity(), CategoryPopularity(category)]
    bounds = history.user_bounds
    for source in sources:
        source.fit(history)
        for user in range(history.n_users):
            span = slice(bounds[user], bounds[user + 1])
            own = source.score_sequence(history.item[span], history.event[span])
            np.testing.assert_array_equal(own, source.score(np.array([user]))[0], err_msg=source.name)
