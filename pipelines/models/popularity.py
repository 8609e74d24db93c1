"""Recency-weighted popularity: the baseline every model must beat, and the cold-start fallback."""

from __future__ import annotations

from typing import Self

import numpy as np
import scipy.sparse as sp

from pipelines.features.interactions import Interactions, event_weight_table
from pipelines.models.base import Recommender, Targets

DAY = 86_400.0


def popularity_scores(history: Interactions, event_weights: dict[str, float], half_life_days: float) -> np.ndarray:
    """Event-weighted counts per item, each event decayed by its age relative to the newest event."""
    if len(history) == 0:
        return np.zeros(history.n_items, dtype=np.float32)
    age_days = (history.ts.max() - history.ts) / DAY
    w = history.event_weights(event_weights) * np.power(0.5, age_days / half_life_days)
    return np.bincount(history.item, weights=w, minlength=history.n_items).astype(np.float32)


class Popularity(Recommender):
    """Everyone gets the same list: the most popular items lately."""

    name = "popularity"

    def __init__(self, event_weights: dict[str, float] | None = None, half_life_days: float = 3.0):
        self.event_weights = event_weights or {}
        self.half_life_days = half_life_days

    def fit(self, history: Interactions, valid: Targets | None = None) -> Self:
        self._history = history
        self.item_scores_ = popularity_scores(history, self.event_weights, self.half_life_days)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.item_scores_, (len(users), len(self.item_scores_)))

    def score_sequence(self, items: np.ndarray, events: np.ndarray) -> np.ndarray:
        """The same list for any sequence: the popular items."""
        return self.item_scores_


class CategoryPopularity(Recommender):
    """Popular items of the categories the user engages with: popularity within category x user affinity."""

    name = "category_popularity"

    def __init__(self, item_category: np.ndarray, event_weights: dict[str, float] | None = None,
                 half_life_days: float = 3.0):
        self.item_category = item_category  # category code per item code, -1 unknown
        self.event_weights = event_weights or {}
        self.half_life_days = half_life_days

    def fit(self, history: Interactions, valid: Targets | None = None) -> Self:
        self._history = history
        pop = popularity_scores(history, self.event_weights, self.half_life_days)
        cat = self.item_category
        n_cat = int(cat.max(initial=-1)) + 2  # last slot collects unknown categories
        cat_slot = np.where(cat >= 0, cat, n_cat - 1)
        cat_total = np.bincount(cat_slot, weights=pop, minlength=n_cat)
        self.item_share_ = (pop / np.maximum(cat_total[cat_slot], 1e-9)).astype(np.float32)
        self.cat_slot_ = cat_slot
        self.affinity_ = self._affinity(history.user, history.item, history.event, history.n_users)
        self.prior_ = (1e-6 * pop / max(float(pop.max(initial=0.0)), 1e-9)).astype(np.float32)
        return self

    def _affinity(self, users: np.ndarray, items: np.ndarray, events: np.ndarray, n_users: int) -> sp.csr_matrix:
        """User x category-slot shares of the users' event weights (rows sum to 1, or 0 without known categories)."""
        n_cat = int(self.item_category.max(initial=-1)) + 2  # as in fit: the last slot is "unknown"
        table = event_weight_table(self.event_weights)
        slot = self.cat_slot_[items]
        known = slot != n_cat - 1  # an unknown category says nothing about taste
        affinity = sp.csr_matrix((table[events][known], (users[known], slot[known])), shape=(n_users, n_cat))
        row_sum = np.asarray(affinity.sum(axis=1)).ravel()
        return (sp.diags(1.0 / np.maximum(row_sum, 1e-9)) @ affinity).tocsr().astype(np.float32)

    def _scores(self, affinity: sp.csr_matrix) -> np.ndarray:
        return affinity.toarray()[:, self.cat_slot_] * self.item_share_ + self.prior_

    def score(self, users: np.ndarray) -> np.ndarray:
        return self._scores(self.affinity_[users])

    def score_sequence(self, items: np.ndarray, events: np.ndarray) -> np.ndarray:
        """Category shares of the sequence's own events, as for a fitted user with that history."""
        items = np.asarray(items, dtype=np.int64)
        return self._scores(self._affinity(np.zeros(len(items), dtype=np.int64), items, np.asarray(events), 1))[0]
