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
