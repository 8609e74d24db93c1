"""Models whose score is a user vector times an item vector (SASRec, LightGCN): top lists from a ``VectorIndex``.

Below ``ann_min_items`` items such a model scores the catalogue exactly, as every dense source does (a matrix
product is cheap there). From that size on, fitting builds an approximate index of the item vectors
(pipelines/models/vector_index.py) that is pickled with the model; top lists then come from the index, with the
user's seen items excluded by the search, while the score of a given (user, item) pair (ranker features) stays the
exact inner product. Fitting tunes the index's ``n_probe`` on a sample of users' vectors and records its recall@100
against exact search on another sample.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

from pipelines.models.base import Recommender, SequenceScorer, UserScores, excluded_row
from pipelines.models.kernels import csr_pairs
from pipelines.models.vector_index import VectorIndex

RECALL_USERS = 512  # users whose vectors tune n_probe at fit, and as many others whose recall is recorded
RECALL_K = 100
# n_probe is the fewest lists reaching this recall@100 on the model's own user vectors: a barely trained model's
# vectors are far less clustered than the benchmark's (3,000 items: 0.58 at the default 1/8 of the lists)
TARGET_RECALL = 0.95


class VectorScores(UserScores):
    """Scores ``queries @ items.T`` of a batch of users: top lists searched in ``index``, pairs scored exactly."""

    def __init__(self, queries: np.ndarray, items: np.ndarray, index: VectorIndex, excluded: sp.csr_matrix | None):
        self.queries, self.items, self.index, self.excluded = queries, items, index, excluded

    def top(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        ex = self.excluded
        exclude = None if ex is None else np.split(ex.indices.astype(np.int64), ex.indptr[1:-1])
        return self.index.search(self.queries, min(n, len(self.index)), exclude)

    def at(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        values = np.einsum("ij,ij->i", self.queries[rows], self.items[items]).astype(np.float32)
        ex = self.excluded
        if ex is not None:
            hit = csr_pairs(ex.indptr, ex.indices, np.ones(ex.nnz, dtype=np.bool_), ex.shape[1], rows, items)
            values[hit] = -np.inf
        return values


class VectorRecommender(Recommender):
    """A recommender whose ``score(users)`` is ``user_vectors(users) @ item_vectors().T``.

    ``index_`` is the approximate index of the item vectors (None: exact scoring, the small-catalogue default) and
    ``ann_`` what its build measured; subclasses call ``index_items`` whenever their item vectors change.
    """

    index_: VectorIndex | None = None
    ann_: dict[str, Any] | None = None
    seed: int = 0

    @abstractmethod
    def user_vectors(self, users: np.ndarray) -> np.ndarray:
        """float32 (len(users), dim) query vectors of known users."""

    @abstractmethod
    def item_vectors(self) -> np.ndarray:
        """float32 (n_items, dim): row i is item code i's vector."""

    def sequence_vector(self, items: np.ndarray, events: np.ndarray) -> np.ndarray | None:
        """float32 (1, dim) query vector of a sequence (oldest first); None when the model has none for a sequence."""
        return None

    @property
    def sparse_scores(self) -> bool:  # type: ignore[override]
        """With an index no batch needs dense rows, so candidate batches need not shrink with the catalogue."""
        return self.index_ is not None

    @property
    def report(self) -> dict[str, Any]:
        """The index's build and its measured recall (empty when scoring is exact)."""
        return {"ann": self.ann_} if self.ann_ else {}

    def candidate_scorer(self, exclude_seen: bool = True) -> Callable[[np.ndarray], UserScores]:
        """Dense rows when exact; with an index, its searches, and exact inner products for given pairs."""
        index = self.index_
        if index is None:
            return super().candidate_scorer(exclude_seen)
        items = self.item_vectors()

        def indexed(users: np.ndarray) -> UserScores:
            excluded = self.history.seen[users] if exclude_seen else None
            return VectorScores(self.user_vectors(users), items, index, excluded)

        return indexed

    def sequence_scorer(self) -> SequenceScorer:
        """With an index, the sequence's vector searched in it (exact pair scores); else the dense row."""
        index = self.index_
        if index is None:
            return super().sequence_scorer()
        vectors = self.item_vectors()

        def indexed(items: np.ndarray, events: np.ndarray, exclude: np.ndarray | None) -> UserScores | None:
            query = self.sequence_vector(items, events)
            if query is None:
                return None
            return VectorScores(query, vectors, index, excluded_row(exclude, len(vectors)))

        return indexed

    def index_items(self, min_items: int) -> None:
        """Index the current item vectors if there are at least ``min_items`` (fewer drop any index: exact scoring).

        ``n_probe`` is tuned to recall@100 >= 0.95 against exact search on up to 512 users with history, and the
        recall is then measured on as many other users (seeded samples) and recorded in ``ann_``.
        """
        self.index_, self.ann_ = None, None
        if self.history.n_items < min_items:
            return
        vectors = self.item_vectors()
        index = VectorIndex.build(vectors, exact_below=min_items, seed=self.seed)
        active = np.flatnonzero(np.diff(self.history.user_bounds) > 0)
        sample = np.random.default_rng(self.seed).choice(active, min(2 * RECALL_USERS, len(active)), replace=False)
        tuning, measured = np.sort(sample[:len(sample) // 2]), np.sort(sample[len(sample) // 2:])
        tuned = index.tune(self.user_vectors(tuning), RECALL_K, TARGET_RECALL)
        self.ann_ = {"items": len(vectors), "n_lists": index.n_lists, "n_probe": index.n_probe,
                     "k_factor": index.k_factor, f"tuning_recall@{RECALL_K}": round(tuned, 4),
                     "recall_users": len(measured),
                     f"recall@{RECALL_K}": round(index.recall(self.user_vectors(measured), RECALL_K), 4)}
        self.index_ = index
