"""Candidates from sparse sources equal the dense computation exactly: same pool, order, scores, flags and lists."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from pipelines.features.interactions import Interactions, Vocab
from pipelines.models import (
    CategoryPopularity,
    CoVisitation,
    ItemCosine,
    Popularity,
    RandomRecommender,
    Transitions,
    base,
    popularity,
)
from pipelines.models.base import Recommender, top_k
from pipelines.models.candidates import Candidates, generate_candidates

WEIGHTS = {"view": 1.0, "cart": 3.0, "purchase": 5.0}


def make_history(n_users: int, n_items: int, n_events: int, seed: int, idle_users: int = 3) -> Interactions:
    """Random events over few distinct timestamps (so popularity ties), skewed towards low item codes, leaving the
    last ``idle_users`` users and the top item codes without any event."""
    rng = np.random.default_rng(seed)
    active = max(n_users - idle_users, 1)
    user = np.sort(rng.integers(0, active, n_events))
    item = np.minimum(rng.geometric(4.0 / n_items, n_events) - 1, max(n_items - 3, 0))
    ts = rng.integers(0, 4, n_events) * 86_400 + 1_500_000_000
    order = np.lexsort((ts, user))
    vocab = Vocab(users=np.array([f"u{u}" for u in range(n_users)], dtype=object),
                  items=np.array([f"i{i:05d}" for i in range(n_items)], dtype=object))
    return Interactions(vocab, user[order].astype(np.int32), item[order].astype(np.int32),
                        rng.integers(0, 3, n_events).astype(np.int8)[order], ts[order].astype(np.int64))


def sparse_sources(history: Interactions, seed: int) -> dict[str, Recommender]:
    category = np.random.default_rng(seed).integers(-1, 4, history.n_items)  # -1: unknown category
    return {
        "covisit": CoVisitation(WEIGHTS, window=3, history_len=6).fit(history),
        "itemcos": ItemCosine(WEIGHTS, history_len=6, neighbours=8).fit(history),
        "transitions": Transitions(last_n=2).fit(history),
        "popularity": Popularity(WEIGHTS).fit(history),
        "category_popularity": CategoryPopularity(category, WEIGHTS).fit(history),
    }


def dense_candidates(sources: dict[str, Recommender], users: np.ndarray, n: int, exclude_seen: bool) -> Candidates:
    """The dense computation candidates must reproduce: every source's full score rows, seen items at -inf, each
    source's ``top_k`` of finite score, pooled through a users x items bit mask."""
    dense = {}
    for name, model in sources.items():
        scores = np.array(model.score(users), dtype=np.float32, copy=True)
        if exclude_seen:
            seen = model.history.seen[users]
            scores[np.repeat(np.arange(len(users)), np.diff(seen.indptr)), seen.indices] = -np.inf
        dense[name] = scores
    tops = {}
    for name, scores in dense.items():
        top, values = top_k(scores, n)
        tops[name] = np.where(np.isfinite(values), top, -1)
    proposed_by = np.zeros(next(iter(dense.values())).shape, dtype=np.uint32)
    for bit, top in enumerate(tops.values()):
        rows, cols = np.nonzero(top >= 0)
        np.bitwise_or.at(proposed_by, (rows, top[rows, cols]), 1 << bit)
    row, item = np.nonzero(proposed_by)
    bits = proposed_by[row, item]
    return Candidates(users, np.bincount(row, minlength=len(users)).astype(np.int64), users[row].astype(np.int64),
                      item.astype(np.int64), {name: d[row, item] for name, d in dense.items()},
                      {name: (bits & (1 << b)) > 0 for b, name in enumerate(tops)}, tops)


def assert_same(got: Candidates, want: Candidates) -> None:
    for field in ("users", "group", "user", "item"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
    for field in ("scores", "proposed", "source_top"):
        assert list(getattr(got, field)) == list(getattr(want, field))
        for name, want_values in getattr(want, field).items():
            got_values = getattr(got, field)[name]
            assert got_values.dtype == want_values.dtype and got_values.shape == want_values.shape, (field, name)
            np.testing.assert_array_equal(got_values, want_values, err_msg=f"{field}[{name}]")


@pytest.fixture(scope="module", params=[150, 3000], ids=["150items", "3000items"])
def history(request: pytest.FixtureRequest) -> Interactions:
    return make_history(n_users=60, n_items=request.param, n_events=1200, seed=1)


@pytest.fixture(scope="module")
def sources(history: Interactions) -> dict[str, Recommender]:
    return sparse_sources(history, seed=1)


@pytest.fixture(autouse=True, params=["sparse", "cheapest"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Sparse sources take their sparse path always, or the cheaper of sparse and dense rows per batch."""
    if request.param == "sparse":
        for module in (base, popularity):
            monkeypatch.setattr(module, "denser_than_sparse", lambda *_: False)
    return request.param


@pytest.mark.parametrize("exclude_seen", [True, False])
@pytest.mark.parametrize("name", ["covisit", "itemcos", "transitions", "popularity", "category_popularity"])
def test_each_sparse_source_gives_the_dense_candidates(history, sources, name, exclude_seen):
    one = {name: sources[name]}
    assert sources[name].sparse_scores
    users = np.arange(history.n_users)  # the last users have no history at all
    for n in (1, 7, 40):
        assert_same(generate_candidates(one, users, n, exclude_seen), dense_candidates(one, users, n, exclude_seen))


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_a_mix_with_a_dense_source_gives_the_dense_candidates(history, sources, exclude_seen):
    mix = {**sources, "random": RandomRecommender(seed=3).fit(history)}
    users = np.random.default_rng(0).permutation(history.n_users)[:45]  # any order, batches of 16
    got = generate_candidates(mix, users, 12, exclude_seen, batch_size=16)
    assert_same(got, dense_candidates(mix, users, 12, exclude_seen))


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_catalogues_smaller_than_the_lists(exclude_seen):
    history = make_history(n_users=12, n_items=9, n_events=60, seed=4, idle_users=2)
    sources = {**sparse_sources(history, seed=4), "random": RandomRecommender().fit(history)}
    users = np.arange(history.n_users)
    got = generate_candidates(sources, users, 20, exclude_seen)
    assert_same(got, dense_candidates(sources, users, 20, exclude_seen))
    assert all(top.shape == (len(users), history.n_items) for top in got.source_top.values())


def test_categories_cut_inside_ties_are_listed_whole():
    """Items tied in share at the cut of a category's head: the sparse path must read past the head."""
    n_items = 300
    user = np.repeat(np.arange(20), 3)
    item = np.tile([0, 100, 200], 20)  # every category has one popular item, the rest tie at zero
    vocab = Vocab(users=np.array([f"u{u}" for u in range(22)], dtype=object),
                  items=np.array([f"i{i:03d}" for i in range(n_items)], dtype=object))
    history = Interactions(vocab, user.astype(np.int32), item.astype(np.int32), np.zeros(60, dtype=np.int8),
                           np.full(60, 1_500_000_000, dtype=np.int64))
    model = CategoryPopularity(np.arange(n_items) // 100, WEIGHTS).fit(history)
    users = np.arange(history.n_users)
    for n, exclude_seen in ((5, True), (5, False), (150, True)):
        got = generate_candidates({"cat": model}, users, n, exclude_seen)
        assert_same(got, dense_candidates({"cat": model}, users, n, exclude_seen))
        assert (got.source_top["cat"][0, : min(n, 297)] >= 0).all()


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_a_lower_code_tied_past_the_cut_of_a_category_is_found(exclude_seen):
    """Item 1 has less share than item 3 but more prior, so both score 0.5; the head of category 0 (one item, 3)
    misses item 1, which the dense list ranks first as the lower code."""
    vocab = Vocab(users=np.array(["u0", "u1"], dtype=object), items=np.array([f"i{i}" for i in range(8)], dtype=object))
    history = Interactions(vocab, np.zeros(1, dtype=np.int32), np.zeros(1, dtype=np.int32), np.zeros(1, dtype=np.int8),
                           np.zeros(1, dtype=np.int64))
    model = CategoryPopularity(np.repeat([0, 1], 4)).fit(history)  # u0 likes category 0 only
    model.item_share_ = np.array([0, 0.375, 0, 0.5, 0, 0, 0, 0], dtype=np.float32)
    model.prior_ = np.array([0, 0.125, 0, 0, 0.25, 0, 0, 0], dtype=np.float32)
    users = np.array([0, 1])
    got = generate_candidates({"cat": model}, users, 1, exclude_seen)
    assert_same(got, dense_candidates({"cat": model}, users, 1, exclude_seen))
    assert got.source_top["cat"][:, 0].tolist() == [1, 4]


def test_item_orders_kept_across_calls_follow_changed_fitted_arrays(history, sources):
    users = np.arange(history.n_users)
    for name in ("covisit", "popularity", "category_popularity"):
        model = copy.deepcopy(sources[name])
        generate_candidates({name: model}, users, 10)
        prior = model.item_scores_ if name == "popularity" else model.prior_
        prior[:] = prior[::-1].copy()  # in place: the same arrays, other values
        assert_same(generate_candidates({name: model}, users, 10), dense_candidates({name: model}, users, 10, True))


def test_negative_event_weights_fall_back_to_dense_rows(history):
    model = CategoryPopularity(np.arange(history.n_items) % 5, {"view": -1.0, "cart": 2.0}).fit(history)
    assert not model.sparse_scores
    users = np.arange(history.n_users)
    assert_same(generate_candidates({"cat": model}, users, 9), dense_candidates({"cat": model}, users, 9, True))


def test_score_pairs_equal_the_dense_scores(history, sources):
    rng = np.random.default_rng(2)
    users = rng.integers(0, history.n_users, 500)
    items = rng.integers(0, history.n_items, 500)
    users[:50], items[:50] = history.user[:50], history.item[:50]  # seen pairs score as well
    for name, model in {**sources, "random": RandomRecommender().fit(history)}.items():
        dense = np.array(model.score(np.arange(history.n_users)), dtype=np.float32)
        np.testing.assert_array_equal(model.score_pairs(users, items), dense[users, items], err_msg=name)


def test_top_candidates_are_the_dense_top_lists(history, sources):
    users = np.arange(history.n_users)
    for name, model in sources.items():
        dense = np.array(model.score(users), dtype=np.float32, copy=True)
        dense[history.seen[users].nonzero()] = -np.inf
        want_items, want_values = top_k(dense, 25)
        items, values = model.top_candidates(users, 25)
        np.testing.assert_array_equal(values, want_values, err_msg=name)
        np.testing.assert_array_equal(items, np.where(np.isfinite(want_values), want_items, -1), err_msg=name)


@pytest.mark.parametrize("k, n", [(1, 5), (3, 64), (10, 100), (40, 33), (100, 4000)])
def test_top_k_breaks_ties_by_the_lower_index(k, n):
    rng = np.random.default_rng(k)
    scores = rng.integers(0, 4, size=(9, n)).astype(np.float32)  # many ties, also across block maxima
    scores[0] = -np.inf
    scores[1, ::2] = -0.0  # equal to 0.0
    idx, vals = top_k(scores, k)
    order = np.lexsort((np.broadcast_to(np.arange(n), scores.shape), -scores), axis=1)[:, : min(k, n)]
    np.testing.assert_array_equal(idx, order)
    np.testing.assert_array_equal(vals, np.take_along_axis(scores, order, axis=1))


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_users_who_saw_the_whole_head_of_the_prior_read_further(exclude_seen):
    """The prior's first 2 * n items usually hold a user's n best unseen ones; a user who saw all of them (and the
    users whose stored items crowd them out) must read further down the order, as the dense row does."""
    n_items, n = 300, 5
    base_history = make_history(40, n_items, 2_000, seed=4)
    popular = np.argsort(-np.bincount(base_history.item, minlength=n_items), kind="stable")[:3 * n]
    user = np.concatenate([base_history.user, np.full(len(popular), 40, dtype=np.int32)])
    item = np.concatenate([base_history.item, popular.astype(np.int32)])
    vocab = Vocab(users=np.array([f"u{u}" for u in range(41)], dtype=object), items=base_history.vocab.items)
    order = np.lexsort((np.arange(len(user)), user))
    history = Interactions(vocab, user[order], item[order], np.zeros(len(user), np.int8),
                           np.arange(len(user), dtype=np.int64)[order])
    one = {"popularity": Popularity(WEIGHTS).fit(history)}
    users = np.arange(41)
    assert_same(generate_candidates(one, users, n, exclude_seen), dense_candidates(one, users, n, exclude_seen))


def dense_sequence_top(model: Recommender, items: np.ndarray, events: np.ndarray, exclude: np.ndarray | None,
                       n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The dense row of ``score_sequence`` with ``exclude`` at -inf, its ``top_k`` (-1 past finite scores)."""
    row = np.array(model.score_sequence(items, events), dtype=np.float32, copy=True)[None]
    if exclude is not None:
        row[0, exclude] = -np.inf
    top, values = top_k(row, n)
    return row[0], np.where(np.isfinite(values), top, -1), values


@pytest.mark.parametrize("exclude", [True, False])
@pytest.mark.parametrize("name", ["covisit", "itemcos", "transitions", "popularity", "category_popularity"])
def test_sequence_scorers_give_the_dense_sequence_rows(history, sources, name, exclude):
    """A session's candidates come from the same sparse path as a fitted user's: the dense row's top lists and
    pair scores, for a user's own history, a random sequence and an empty one."""
    model, rng = sources[name], np.random.default_rng(5)
    span = slice(history.user_bounds[2], history.user_bounds[3])
    sequences = [(history.item[span], history.event[span]),
                 (rng.integers(0, history.n_items, 9), rng.integers(0, 3, 9)),
                 (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))]
    for items, events in sequences:
        seen = np.asarray(items, dtype=np.int64) if exclude else None
        scorer = model.sequence_scorer()(items, events, seen)
        probe = rng.integers(0, history.n_items, 50)
        for n in (1, 7, 40):
            row, want_items, want_values = dense_sequence_top(model, items, events, seen, n)
            got_items, got_values = scorer.top(n)
            np.testing.assert_array_equal(got_values, want_values, err_msg=f"{name} n={n}")
            np.testing.assert_array_equal(got_items, want_items, err_msg=f"{name} n={n}")
        np.testing.assert_array_equal(scorer.at(np.zeros(len(probe), dtype=np.int64), probe), row[probe])


def test_excluding_drops_further_items_from_a_users_scores(history, sources):
    """A known user's scores with a session's items excluded on top: the dense row with both at -inf."""
    user, extra = 4, np.array([0, 1, 2, 5, 8])
    for name, model in sources.items():
        scores = base.Excluding(model.candidate_scorer(exclude_seen=True)(np.array([user])), extra)
        dense = np.array(model.score(np.array([user])), dtype=np.float32, copy=True)
        dense[0, history.seen[user].indices] = -np.inf
        dense[0, extra] = -np.inf
        want_items, want_values = top_k(dense, 12)
        items, values = scores.top(12)
        np.testing.assert_array_equal(values, want_values, err_msg=name)
        np.testing.assert_array_equal(items, np.where(np.isfinite(want_values), want_items, -1), err_msg=name)
        probe = np.arange(min(history.n_items, 30))
        np.testing.assert_array_equal(scores.at(np.zeros(len(probe), dtype=np.int64), probe), dense[0, probe])


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_category_heads_read_past_each_categorys_own_seen_items(exclude_seen):
    """Users who saw most of one category's head and little of others: each category's head must reach past the
    seen items of that category (not of the user's whole history) to give the dense list."""
    rng = np.random.default_rng(11)
    n_items, n_users = 600, 40
    category = np.arange(n_items) % 30  # 30 categories of 20 items
    user = np.repeat(np.arange(n_users), 25)
    # most events on one category's items (its popular head), a few elsewhere
    item = np.where(rng.random(len(user)) < 0.8, (user % 30) + 30 * rng.integers(0, 12, len(user)),
                    rng.integers(0, n_items, len(user)))
    vocab = Vocab(users=np.array([f"u{u}" for u in range(n_users)], dtype=object),
                  items=np.array([f"i{i:03d}" for i in range(n_items)], dtype=object))
    history = Interactions(vocab, user.astype(np.int32), item.astype(np.int32),
                           rng.integers(0, 3, len(user)).astype(np.int8),
                           (1_500_000_000 + rng.integers(0, 5, len(user)) * 86_400).astype(np.int64))
    model = CategoryPopularity(category, WEIGHTS).fit(history)
    users = np.arange(n_users)
    for n in (5, 15, 40):
        assert_same(generate_candidates({"cat": model}, users, n, exclude_seen),
                    dense_candidates({"cat": model}, users, n, exclude_seen))
