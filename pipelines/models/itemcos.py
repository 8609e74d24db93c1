"""Item-item cosine similarity over who-interacted-with-what, scored from the user's recent items."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from pipelines.core.engine import imap_parts, map_parts
from pipelines.features.interactions import Interactions, PartedHistory
from pipelines.models.covisit import recent_weights
from pipelines.models.item_to_item import ItemToItem, top_n_per_row

# co-occurrence entries summed at once when fitting on parts (~12 bytes each): the rows of the item x item product
# are built a block at a time, each block pruned to its top neighbours before the next
PAIR_BUDGET = 40_000_000


def cooccurrence_counts(history: Interactions, items: slice = slice(None)) -> sp.csr_matrix:
    """Users who interacted with both items, for the item pairs whose first item is in ``items`` (rows) and any
    second item (columns); the diagonal is the users per item. Users are whole in a part, so the counts of a
    history are the sum of those of its parts."""
    x = history.seen.astype(np.float32)
    return (x[:, items].T @ x).tocsr()


def cosine_from_counts(counts: sp.csr_matrix, neighbours: int, norms: np.ndarray | None = None,
                       first_row: int = 0) -> sp.csr_matrix:
    """Cosine between item columns of the binary user x item matrix, diagonal removed, top ``neighbours`` per row.

    ``counts`` may be a block of rows (items ``first_row`` on) when ``norms`` gives every item's user count.
    """
    sim = counts.tocsr(copy=True)
    norms = sim.diagonal() if norms is None else norms
    inv = (1.0 / np.maximum(np.sqrt(norms), 1e-9)).astype(np.float32)
    # scaled in place (same float32 products as diag @ C @ diag): the co-occurrence matrix is the memory peak of
    # training at 10M events, and the two diagonal products held two more copies of it
    sim.data *= inv[first_row + np.repeat(np.arange(sim.shape[0]), np.diff(sim.indptr))]
    sim.data *= inv[sim.indices]
    sim.setdiag(0, k=first_row)
    sim.eliminate_zeros()
    return top_n_per_row(sim, neighbours).astype(np.float32)


def row_blocks(pairs_per_row: np.ndarray, budget: int) -> list[slice]:
    """Consecutive row ranges holding at most ``budget`` pairs each (a heavier single row gets its own range)."""
    bounds, start, held = [], 0, 0
    for row, pairs in enumerate(pairs_per_row.tolist()):
        if held and held + pairs > budget:
            bounds.append(slice(start, row))
            start, held = row, 0
        held += pairs
    return [*bounds, slice(start, len(pairs_per_row))]


def _block_counts(history: PartedHistory, i: int, items: slice) -> sp.csr_matrix:
    """Co-occurrence counts of part ``i`` for the rows ``items`` (a task on a cluster)."""
    return cooccurrence_counts(history.part(i), items)


def _row_sizes(history: PartedHistory, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Part ``i``'s users per item and its co-occurrence entries per item row (at most: distinct items per user)."""
    x = history.part(i).seen
    users_per_item = np.asarray(x.sum(axis=0)).ravel()
    return users_per_item, np.asarray(x.T @ np.asarray(x.sum(axis=1)).ravel()).ravel()


class ItemCosine(ItemToItem):
    """Items that the same users interacted with, weighted towards the user's latest items."""

    name = "itemcos"

    def __init__(self, event_weights: dict[str, float] | None = None, history_len: int = 20, neighbours: int = 200):
        self.event_weights = event_weights or {}
        self.history_len = history_len
        self.neighbours = neighbours

    def fit_matrix(self, history: PartedHistory) -> sp.csr_matrix:
        """The cosine rows a block of items at a time: each block's co-occurrence counts are summed over the parts
        and pruned to the top neighbours before the next block, so memory holds ``PAIR_BUDGET`` entries, not the
        whole item x item product (which grows with users x items per user squared)."""
        sizes = map_parts(_row_sizes, [(history, i) for i in range(len(history))])
        norms = np.sum([u for u, _ in sizes], axis=0)
        blocks = []
        for items in row_blocks(np.sum([p for _, p in sizes], axis=0), PAIR_BUDGET):
            total = None
            for counts in imap_parts(_block_counts, [(history, i, items) for i in range(len(history))]):
                total = counts if total is None else total + counts
            blocks.append(cosine_from_counts(total, self.neighbours, norms, items.start))
        return sp.vstack(blocks).tocsr()

    def profile_weights(self, events: np.ndarray, steps_back: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return recent_weights(events, steps_back, self.event_weights, self.history_len)
