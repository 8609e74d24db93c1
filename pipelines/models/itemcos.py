"""Item-item cosine similarity over who-interacted-with-what, scored from the user's recent items."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from pipelines.features.interactions import Interactions
from pipelines.models.covisit import recent_weights
from pipelines.models.item_to_item import ItemToItem


def top_n_per_row(m: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """Keep the ``n`` largest entries of each row: bounds memory and removes weak, noisy neighbours."""
    m = m.tocsr()
    rows, cols, vals = [], [], []
    for r in range(m.shape[0]):
        start, end = m.indptr[r], m.indptr[r + 1]
        if end - start == 0:
            continue
        data, idx = m.data[start:end], m.indices[start:end]
        if end - start > n:
            keep = np.argpartition(-data, n)[:n]
            data, idx = data[keep], idx[keep]
        rows.append(np.full(len(idx), r))
        cols.append(idx)
        vals.append(data)
    if not rows:
        return sp.csr_matrix(m.shape, dtype=np.float32)
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=m.shape)


def cooccurrence_counts(history: Interactions) -> sp.csr_matrix:
    """Users who interacted with both items, per item pair (the diagonal: users per item). Users are whole in a
    part, so the counts of a history are the sum of those of its parts."""
    x = history.seen.astype(np.float32)
    return (x.T @ x).tocsr()


def cosine_from_counts(counts: sp.csr_matrix, neighbours: int) -> sp.csr_matrix:
    """Cosine between item columns of the binary user x item matrix, diagonal removed, top ``neighbours`` per row."""
    sim = counts.tocsr(copy=True)
    inv = (1.0 / np.maximum(np.sqrt(sim.diagonal()), 1e-9)).astype(np.float32)
    # scaled in place (same float32 products as diag @ C @ diag): the co-occurrence matrix is the memory peak of
    # training at 10M events, and the two diagonal products held two more copies of it
    sim.data *= inv[np.repeat(np.arange(sim.shape[0]), np.diff(sim.indptr))]
    sim.data *= inv[sim.indices]
    sim.setdiag(0)
    sim.eliminate_zeros()
    return top_n_per_row(sim, neighbours).astype(np.float32)


class ItemCosine(ItemToItem):
    """Items that the same users interacted with, weighted towards the user's latest items."""

    name = "itemcos"

    def __init__(self, event_weights: dict[str, float] | None = None, history_len: int = 20, neighbours: int = 200):
        self.event_weights = event_weights or {}
        self.history_len = history_len
        self.neighbours = neighbours

    def pair_counts(self, part: Interactions) -> sp.csr_matrix:
        return cooccurrence_counts(part)

    def finish(self, counts: sp.csr_matrix) -> sp.csr_matrix:
        return cosine_from_counts(counts, self.neighbours)

    def profile_weights(self, events: np.ndarray, steps_back: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return recent_weights(events, steps_back, self.event_weights, self.history_len)
