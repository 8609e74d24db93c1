"""Recency-weighted popularity: the baseline every model must beat, and the cold-start fallback."""

from __future__ import annotations

from typing import Self

import numpy as np

from pipelines.interactions import Interactions
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
