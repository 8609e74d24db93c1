"""Item-to-item co-visitation: items that follow each other in users' histories, weighted by event type."""

from __future__ import annotations

from typing import Self

import numpy as np
import scipy.sparse as sp

from pipelines.features.interactions import Interactions, event_weight_table
from pipelines.models.base import Targets
from pipelines.models.item_to_item import ItemToItem
from pipelines.models.popularity import popularity_scores


def covisitation_matrix(history: Interactions, event_weights: dict[str, float], window: int) -> sp.csr_matrix:
    """C[a, b]: how strongly b follows a within ``window`` steps of the same user, closer steps weigh more."""
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
    c = sp.csr_matrix(
        (np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    )
    c.setdiag(0)
    c.eliminate_zeros()
    # Normalise each row so that very popular source items do not drown the rest.
    row_sum = np.asarray(c.sum(axis=1)).ravel()
    return sp.diags(1.0 / np.maximum(row_sum, 1e-9)).astype(np.float32) @ c


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
    ):
        self.event_weights = event_weights or {}
        self.window = window
        self.history_len = history_len
        self.half_life_days = half_life_days

    def fit(self, history: Interactions, valid: Targets | None = None) -> Self:
        self._history = history
        self.matrix_ = covisitation_matrix(history, self.event_weights, self.window)
        self.profile_ = self.user_profiles(history)
        pop = popularity_scores(history, self.event_weights, self.half_life_days)
        # Scaled below any co-visitation signal, so it only orders items the neighbours do not reach.
        self.prior_ = (1e-6 * pop / max(float(pop.max()), 1e-9)).astype(np.float32)
        return self

    def profile_weights(self, events: np.ndarray, steps_back: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return recent_weights(events, steps_back, self.event_weights, self.history_len)

    def adjust(self, scores: np.ndarray) -> np.ndarray:
        return scores + self.prior_
