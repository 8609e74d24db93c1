"""The one shape every candidate source and ranker has: ``fit(history)`` then ``score(users)``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Self

import numpy as np

from pipelines.interactions import Interactions

# Validation targets for early stopping: user codes and, per user, the target item codes.
Targets = tuple[np.ndarray, list[np.ndarray]]


class Recommender(ABC):
    """Scores the whole catalogue for a batch of users; ``recommend`` turns scores into top-k lists."""

    name: str = "recommender"

    @abstractmethod
    def fit(self, history: Interactions, valid: Targets | None = None) -> Self:
        """Learn from ``history``; ``valid`` targets may only be used for early stopping (never test targets)."""

    def with_history(self, history: Interactions) -> Self:
        """Score against a longer history (e.g. train + valid for test) without re-tuning; cheap models refit."""
        return self.fit(history)

    @abstractmethod
    def score(self, users: np.ndarray) -> np.ndarray:
        """Dense float32 scores (len(users), n_items); higher is better."""

    def recommend(
        self, users: np.ndarray, k: int, exclude_seen: bool = True, batch_size: int = 1024
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item codes and their scores per user, best first, full ranking over the catalogue."""
        history = self.history
        out_items = np.empty((len(users), k), dtype=np.int64)
        out_scores = np.empty((len(users), k), dtype=np.float32)
        for start in range(0, len(users), batch_size):
            batch = users[start: start + batch_size]
            scores = self.score(batch).astype(np.float32, copy=True)
            if exclude_seen:
                seen = history.seen[batch]
                rows = np.repeat(np.arange(len(batch)), np.diff(seen.indptr))
                scores[rows, seen.indices] = -np.inf
            top = np.argpartition(-scores, kth=min(k, scores.shape[1] - 1), axis=1)[:, :k]
            top_scores = np.take_along_axis(scores, top, axis=1)
            order = np.argsort(-top_scores, axis=1, kind="stable")
            out_items[start: start + len(batch)] = np.take_along_axis(top, order, axis=1)
            out_scores[start: start + len(batch)] = np.take_along_axis(top_scores, order, axis=1)
        return out_items, out_scores

    @property
    def history(self) -> Interactions:
        """The history the model was fitted on (needed to exclude seen items)."""
        fitted = getattr(self, "_history", None)
        if fitted is None:
            raise RuntimeError(f"{self.name}: call fit() before recommending")
        return fitted
