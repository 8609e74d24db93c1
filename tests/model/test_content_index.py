"""Content neighbours walk the rarest tokens first and stop once no unwalked item can reach the top; the answer is
the full walk's, also when a token is held by every item (a catalogue-wide attribute)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.models import content
from pipelines.models.content import ContentIndex


@pytest.fixture(scope="module")
def index() -> ContentIndex:
    rng = np.random.default_rng(3)
    n = 3_000
    catalogue = pd.DataFrame({
        "item_id": [f"i{i}" for i in range(n)],
        "category_id": [f"c{c}" for c in rng.integers(0, 40, n)],
        # "shop" is on every item; the others range from a few items to a third of them
        "attributes": [["shop", f"size{s}", f"colour{c}", f"kind{k}"]
                       for s, c, k in zip(rng.integers(0, 3, n), rng.integers(0, 30, n), rng.integers(0, 400, n),
                                          strict=True)],
    })
    return ContentIndex.fit(catalogue)


@pytest.mark.parametrize("budget", [0, 40, 200, 1_000])
@pytest.mark.parametrize("among_share", [None, 0.9, 0.3])
def test_the_rare_token_walk_gives_the_full_walks_neighbours(index, monkeypatch, budget, among_share):
    rng = np.random.default_rng(budget)
    among = None if among_share is None else np.flatnonzero(rng.random(index.base.shape[0]) < among_share)
    queries = [index.item_vectors(np.array([code])) for code in rng.integers(0, index.base.shape[0], 25)]
    monkeypatch.setattr(content, "WALK_POSTINGS", 10**12)  # every token walked
    want = [index.neighbours(q, 20, among=among, exclude=[1, 2]) for q in queries]
    monkeypatch.setattr(content, "WALK_POSTINGS", budget)
    for q, (items, values) in zip(queries, want, strict=True):
        got_items, got_values = index.neighbours(q, 20, among=among, exclude=[1, 2])
        np.testing.assert_array_equal(got_items, items)
        np.testing.assert_allclose(got_values, values, rtol=1e-6)


def test_item_vectors_take_extra_rows_over_base_rows_and_leave_unknown_codes_empty(index):
    grown = ContentIndex(index.hasher, index.idf, index.base)
    grown.add(np.array([5, 3_000]), [{"category_id": "new", "attributes": ["x"]}, {"brand": "b"}])
    codes = np.array([7, 5, 3_000, -1, 9_999, 7])
    got = grown.item_vectors(codes)
    want = [index.base[7], grown.extra[0], grown.extra[1], None, None, index.base[7]]
    for row, expected in enumerate(want):
        if expected is None:
            assert got[row].nnz == 0
        else:
            np.testing.assert_array_equal(got[row].toarray(), expected.toarray())


@pytest.mark.parametrize("direct_max", [10**9, 0])  # one sparse product over 'among', or one index walk per user
def test_closest_new_of_a_batch_equals_each_users_own(index, monkeypatch, direct_max):
    monkeypatch.setattr(content, "DIRECT_MAX", direct_max)
    rng = np.random.default_rng(5)
    among = np.flatnonzero(rng.random(index.base.shape[0]) < 0.2)
    recents = [rng.integers(0, index.base.shape[0], n) for n in (1, 4, 10, 0, 3)]
    batch = content.closest_new(index, recents, among, 10)
    for recent, (items, values) in zip(recents, batch, strict=True):
        one_items, one_values = content.closest_new(index, [recent], among, 10)[0]
        np.testing.assert_array_equal(items, one_items)
        np.testing.assert_allclose(values, one_values, rtol=1e-6)
        assert not np.isin(items, recent).any() and np.isin(items, among).all()
        assert len(items) == (0 if not len(recent) else 90)
