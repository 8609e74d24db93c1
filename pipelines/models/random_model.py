"""Uniformly random scores: the floor every model must clear, and the degraded model the gate tests reject."""

from __future__ import annotations

from typing import Self

import numpy as np

from pipelines.features.interactions import Interactions
from pipelines.models.base import Recommender, Targets


class RandomRecommender(Recommender):
    """Scores are seeded per user, so one user's list is the same in every call (reproducible evaluations)."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, history: Interactions, valid: Targets | None = None) -> Self:
        self._history = history
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        n_items = self.history.n_items
        return np.stack([np.random.default_rng([self.seed, int(u)]).random(n_items, dtype=np.float32)
                         for u in users]) if len(users) else np.zeros((0, n_items), dtype=np.float32)
