"""Item-to-item co-visitation: items that follow each other in users' histories, weighted by event type."""

from __future__ import annotations

from functools import partial

import numpy as np
import scipy.sparse as sp

from pipelines.features.interactions import Interactions, PartedHistory, event_weight_table
from pipelines.models.item_to_item import ItemToItem, summed_counts, top_n_per_row
from pipelines.models.popularity import popularity_prior, popularity_scores


def covisitation_counts(history: Interactions, event_weights: dict[str, float], window: int) -> sp.csr_matrix:
    """Raw C[a, b]: how strongly b follows a within ``window`` steps of the same user, closer steps weigh more.

    Pairs never cross users, so the counts of a history are the sum of the counts of its parts of whole users.
    """
    w = history.event_weights(event_weights)
    rows, cols, vals = [], [], []
    for step in range(1, window + 1):
        same_user = history.user[step:] == history.user[:-step]
        a, b = history.item[:-step][same_user], history.item[step:][same_user]
        weight = (w[:-step][same_user] * w[step:][same_user]) / step
        rows += [a, b]
        cols += [b, a]
        # forward transitions count fully, backward ones half: order carries signal in shopping sessions
        vals += [weight, 0.5 * weight]
    n = history.n_items
    if not rows:
        return sp.csr_matrix((n, n), dtype=np.float32)
    return sp.csr_matrix(
        (np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    )


def normalised_covisitation(counts: sp.csr_matrix) -> sp.csr_matrix:
    """Counts without self-pairs, each row scaled to sum 1 so that very popular source items do not drown the rest.

    Built from the kept entries' arrays: ``setdiag`` on a matrix of 100M+ entries goes through a COO copy and the
    diagonal product through another, ~3x the matrix in transients at Taobao's size."""
    c = counts.tocsr()
    rows = np.repeat(np.arange(c.shape[0], dtype=np.int32), np.diff(c.indptr))
    keep = (c.indices != rows) & (c.data != 0)
    rows = rows[keep]
    indptr = np.r_[0, np.cumsum(np.bincount(rows, minlength=c.shape[0]))].astype(c.indptr.dtype)
    kept = sp.csr_matrix((c.data[keep].astype(np.float32), c.indices[keep], indptr), shape=c.shape)
    del c, keep
    inverse = (1.0 / np.maximum(np.asarray(kept.sum(axis=1)).ravel(), 1e-9)).astype(np.float32)
    kept.data *= inverse[rows]
    return kept


def recent_weights(
    events: np.ndarray, steps_back: np.ndarray, event_weights: dict[str, float], history_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """The last ``history_len`` events of a user (mask) and their weights: event weight / (1 + steps back)."""
    keep = steps_back < history_len
    return keep, (event_weight_table(event_weights)[events[keep]] / (1.0 + steps_back[keep])).astype(np.float32)


class CoVisitation(ItemToItem):
    """Score = sum over the user's recent items of their co-visitation rows, popularity as a tie-breaker."""

    name = "covisit"

    def __init__(
        self,
        event_weights: dict[str, float] | None = None,
        window: int = 5,
        history_len: int = 20,
        half_life_days: float = 3.0,
        neighbours: int | None = None,
    ):
        self.event_weights = event_weights or {}
        self.window = window
        self.history_len = history_len
        self.half_life_days = half_life_days
        self.neighbours = neighbours  # None: every co-visited item

    def fit_matrix(self, history: PartedHistory) -> sp.csr_matrix:
        counts = partial(covisitation_counts, event_weights=self.event_weights, window=self.window)
        matrix = normalised_covisitation(summed_counts(history, counts))  # shares of the whole row, then pruned
        return matrix if self.neighbours is None else top_n_per_row(matrix, self.neighbours)

    def fit_items(self, history: PartedHistory) -> None:
        """Popularity scaled below any co-visitation signal, so it only orders the items the neighbours do not reach."""
        self.prior_ = popularity_prior(popularity_scores(history, self.event_weights, self.half_life_days))

    def adjust(self, scores: np.ndarray) -> np.ndarray:
        return scores + self.prior_

    def profile_weights(self, events: np.ndarray, steps_back: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return recent_weights(events, steps_back, self.event_weights, self.history_len)

