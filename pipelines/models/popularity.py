"""Recency-weighted popularity: the baseline every model must beat, and the cold-start fallback."""

from __future__ import annotations

from typing import Self

import numpy as np
import scipy.sparse as sp

from pipelines.features.interactions import Interactions
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
        w = history.event_weights(self.event_weights)
        slot = cat_slot[history.item]
        known = slot != n_cat - 1  # an unknown category says nothing about taste
        affinity = sp.csr_matrix((w[known], (history.user[known], slot[known])), shape=(history.n_users, n_cat))
        row_sum = np.asarray(affinity.sum(axis=1)).ravel()
        self.affinity_ = (sp.diags(1.0 / np.maximum(row_sum, 1e-9)) @ affinity).tocsr().astype(np.float32)
        self.cat_slot_ = cat_slot
        self.prior_ = (1e-6 * pop / max(float(pop.max(initial=0.0)), 1e-9)).astype(np.float32)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        per_category = self.affinity_[users].toarray()
        return per_category[:, self.cat_slot_] * self.item_share_ + self.prior_
