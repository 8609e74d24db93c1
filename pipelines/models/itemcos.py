"""Item-item cosine similarity over who-interacted-with-what, scored from the user's recent items."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from pipelines.core.engine import map_parts
from pipelines.features.interactions import Interactions, PartedHistory
from pipelines.models.covisit import recent_weights
from pipelines.models.item_to_item import ItemToItem
from pipelines.models.kernels import cosine_top_rows

# co-occurrence entries of one block of item rows (~12 bytes each, plus the product's temporaries): the item x item
# product is built a block of rows at a time, each block pruned to its top neighbours before it is kept
PAIR_BUDGET = 40_000_000


def cooccurrence_counts(history: Interactions, items: slice = slice(None)) -> sp.csr_matrix:
    """Users who interacted with both items, for the item pairs whose first item is in ``items`` (rows) and any
    second item (columns); the diagonal is the users per item."""
    x = history.seen.astype(np.float32)
    return (x[:, items].T @ x).tocsr()


def cosine_from_counts(counts: sp.csr_matrix, neighbours: int, norms: np.ndarray | None = None,
                       first_row: int = 0) -> sp.csr_matrix:
    """Cosine between item columns of the binary user x item matrix, diagonal removed, top ``neighbours`` per row.

    ``counts`` may be a block of rows (items ``first_row`` on) when ``norms`` gives every item's user count.
    """
    counts = counts.tocsr()
    norms = counts.diagonal() if norms is None else norms
    inv = (1.0 / np.maximum(np.sqrt(norms), 1e-9)).astype(np.float32)
    indptr, indices, data = cosine_top_rows(counts.indptr, counts.indices, np.asarray(counts.data, np.float32), inv,
                                            first_row, neighbours)
    return sp.csr_matrix((data, indices, indptr), shape=counts.shape)


def row_blocks(pairs_per_row: np.ndarray, budget: int) -> list[slice]:
    """Consecutive row ranges holding at most ``budget`` pairs each (a heavier single row gets its own range)."""
    bounds, start, held = [], 0, 0
    for row, pairs in enumerate(pairs_per_row.tolist()):
        if held and held + pairs > budget:
            bounds.append(slice(start, row))
            start, held = row, 0
        held += pairs
    return [*bounds, slice(start, len(pairs_per_row))]


def seen_matrix(history: PartedHistory) -> sp.csr_matrix:
    """The binary user x item matrix of the whole history, from each part's distinct (user, item) pairs.

    Held whole (~8 bytes per distinct pair: ~0.7 GB at 100M events), so that each block of item rows is one product
    over every user; summing per-part products instead costs blocks x parts additions, which grows with the
    square of the log."""
    pairs = map_parts(_seen_pairs, [(history, i) for i in range(len(history))])
    users = np.concatenate([u for u, _ in pairs]) if pairs else np.zeros(0, dtype=np.int32)
    items = np.concatenate([i for _, i in pairs]) if pairs else np.zeros(0, dtype=np.int32)
    return sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)),
                         shape=(history.n_users, history.n_items))


def _seen_pairs(history: PartedHistory, i: int) -> tuple[np.ndarray, np.ndarray]:
    """Part ``i``'s distinct (user, item) pairs as int32 codes (a task on a cluster)."""
    seen = history.part(i).seen
    return np.repeat(np.arange(seen.shape[0], dtype=np.int32), np.diff(seen.indptr)), seen.indices.astype(np.int32)


def _block_cosine(by_item: sp.csr_matrix, seen: sp.csr_matrix, items: slice, norms: np.ndarray,
                  neighbours: int) -> sp.csr_matrix:
    """The pruned cosine rows of ``items`` (a task on a cluster; ``by_item`` = ``seen`` transposed, as rows)."""
    return cosine_from_counts((by_item[items] @ seen).tocsr(), neighbours, norms, items.start)


class ItemCosine(ItemToItem):
    """Items that the same users interacted with, weighted towards the user's latest items."""

    name = "itemcos"

    def __init__(self, event_weights: dict[str, float] | None = None, history_len: int = 20, neighbours: int = 200):
        self.event_weights = event_weights or {}
        self.history_len = history_len
        self.neighbours = neighbours

    def fit_matrix(self, history: PartedHistory) -> sp.csr_matrix:
        """The cosine rows a block of items at a time, each block pruned to the top neighbours as it is built, so
        memory holds the binary user x item matrix and ``PAIR_BUDGET`` entries, not the whole item x item product
        (which grows with users x items per user squared). Blocks are tasks on a cluster when one is configured."""
        seen = seen_matrix(history)
        by_item = seen.T.tocsr()
        norms = np.diff(by_item.indptr).astype(np.float32)  # users per item
        pairs = by_item @ np.diff(seen.indptr)  # co-occurrence entries per item row, at most
        jobs = [(by_item, seen, items, norms, self.neighbours) for items in row_blocks(pairs, PAIR_BUDGET)]
        return sp.vstack(map_parts(_block_cosine, jobs), format="csr")

    def profile_weights(self, events: np.ndarray, steps_back: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return recent_weights(events, steps_back, self.event_weights, self.history_len)
