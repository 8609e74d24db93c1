"""Item-item rows of bounded size: each item keeps its strongest neighbours, ties to the lower item code."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from pipelines.core.config import TrainParams
from pipelines.features.interactions import Interactions, Vocab
from pipelines.models import build_source
from pipelines.models.item_to_item import top_n_per_row
from pipelines.models.kernels import csr_pairs


def _reference_top(m: sp.csr_matrix, n: int) -> np.ndarray:
    dense = m.toarray()
    out = np.zeros_like(dense)
    for r, row in enumerate(dense):
        cols = np.flatnonzero(m[r].toarray()[0] != 0) if m[r].nnz else []
        best = sorted(cols, key=lambda c: (-row[c], c))[:n]
        out[r, best] = row[best]
    return out


def test_top_n_per_row_keeps_the_largest_and_breaks_ties_by_lower_column():
    rng = np.random.default_rng(0)
    values = rng.integers(1, 4, size=(40, 60)).astype(np.float32)  # few distinct values: many ties at the cut
    values[rng.random(values.shape) < 0.6] = 0
    m = sp.csr_matrix(values)
    for n in (1, 3, 10, 60):
        pruned = top_n_per_row(m, n)
        assert (np.diff(pruned.indptr) == np.minimum(np.diff(m.indptr), n)).all()
        np.testing.assert_array_equal(pruned.toarray(), _reference_top(m, n))


def test_order_of_stored_entries_does_not_change_the_pruned_row():
    m = sp.csr_matrix((np.array([2, 1, 2, 2], np.float32), (np.zeros(4, int), np.array([7, 3, 5, 1]))), shape=(1, 9))
    shuffled = sp.csr_matrix((m.data[::-1], m.indices[::-1], m.indptr), shape=m.shape)
    for matrix in (m, shuffled):
        np.testing.assert_array_equal(top_n_per_row(matrix, 2).toarray()[0].nonzero()[0], [1, 5])


@pytest.mark.parametrize("n_cols, density", [(50, 0.2), (200_000, 0.0001)], ids=["scratch-row", "sorted-rows"])
def test_pair_lookup_matches_the_dense_matrix(n_cols, density):
    """Both ways of looking pairs up (a dense scratch row, or sorted rows when the columns far outnumber the
    entries asked about), with the stored entries of each row in shuffled order."""
    rng = np.random.default_rng(1)
    m = sp.random(30, n_cols, density=density, format="csr", random_state=2, dtype=np.float32)
    for r in range(m.shape[0]):
        span = slice(m.indptr[r], m.indptr[r + 1])
        order = rng.permutation(span.stop - span.start)
        m.indices[span], m.data[span] = m.indices[span][order], m.data[span][order]
    stored = rng.integers(0, m.nnz, 500)  # half the pairs are stored entries, half random cells
    entry_row = np.searchsorted(m.indptr, stored, side="right") - 1
    hit = rng.random(500) < 0.5
    rows = np.where(hit, entry_row, rng.integers(0, 30, 500))
    cols = np.where(hit, m.indices[stored], rng.integers(0, n_cols, 500))
    np.testing.assert_array_equal(csr_pairs(m.indptr, m.indices, m.data, n_cols, rows, cols), m.toarray()[rows, cols])


def test_covisitation_and_transitions_keep_at_most_max_neighbours_per_item():
    rng = np.random.default_rng(3)
    n_users, n_items, per_user = 300, 80, 30
    user = np.repeat(np.arange(n_users), per_user)
    item = rng.integers(0, n_items, len(user))
    vocab = Vocab(users=np.array([f"u{i}" for i in range(n_users)], dtype=object),
                  items=np.array([f"i{i}" for i in range(n_items)], dtype=object))
    history = Interactions(vocab, user.astype(np.int32), item.astype(np.int32), np.zeros(len(user), np.int8),
                           np.arange(len(user), dtype=np.int64))
    for name in ("covisit", "transitions"):
        full = build_source(name, TrainParams(max_neighbours=n_items)).fit(history)
        pruned = build_source(name, TrainParams(max_neighbours=5)).fit(history)
        assert np.diff(full.matrix_.indptr).max() > 5 >= np.diff(pruned.matrix_.indptr).max(), name
        np.testing.assert_array_equal(pruned.matrix_.toarray(), _reference_top(full.matrix_.tocsr(), 5))
