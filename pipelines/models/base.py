"""The one shape every candidate source and ranker has: ``fit(history)`` then ``score(users)``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Self

import numpy as np

from pipelines.features.interactions import Interactions

# Validation targets for early stopping: user codes and, per user, the target item codes.
Targets = tuple[np.ndarray, list[np.ndarray]]


def top_k(scores: np.ndarray, k: int, block: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of each row's k largest scores, best first.

    Exact, and several times faster than a row-wise argpartition over the whole catalogue: the top k
    values lie in the k blocks with the largest maxima, so only those blocks are partitioned.
    """
    n_rows, n = scores.shape
    k = min(k, n)
    pad = (-n) % block
    padded = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf) if pad else scores
    block_max = padded.reshape(n_rows, -1, block).max(axis=2)
    n_blocks = block_max.shape[1]
    if k < n_blocks:
        blocks = np.argpartition(-block_max, k - 1, axis=1)[:, :k]
    else:
        blocks = np.broadcast_to(np.arange(n_blocks), (n_rows, n_blocks))
    idx = (blocks[:, :, None] * block + np.arange(block)).reshape(n_rows, -1)
    vals = np.take_along_axis(padded, idx, axis=1)
    sel = np.argpartition(-vals, k - 1, axis=1)[:, :k]
    idx, vals = np.take_along_axis(idx, sel, axis=1), np.take_along_axis(vals, sel, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(idx, order, axis=1), np.take_along_axis(vals, order, axis=1)


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
            items, values = top_k(scores, k)
            out_items[start: start + len(batch)] = items
            out_scores[start: start + len(batch)] = values
        return out_items, out_scores

    @property
    def history(self) -> Interactions:
        """The history the model was fitted on (needed to exclude seen items)."""
        fitted = getattr(self, "_history", None)
        if fitted is None:
            raise RuntimeError(f"{self.name}: call fit() before recommending")
        return fitted
