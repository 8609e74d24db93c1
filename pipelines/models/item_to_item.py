"""What the item-to-item sources (co-visitation, item cosine, transitions) share: profile x item-item matrix.

Each source fits an item x item matrix ``matrix_`` and weighs a user's recent events into a profile in its own way
(``profile_weights``); the score is profile @ matrix. The same weighting builds the profile of any sequence, so
session lists, explanations ("because you viewed X") and similar items come from the source itself. Profiles and
rows are sparse, so candidates come from the sparse product and the head of the prior's order, never a dense row.
"""

from __future__ import annotations

import copy
from abc import abstractmethod
from collections.abc import Callable
from typing import Self

import numpy as np
import scipy.sparse as sp

from pipelines.core.engine import imap_parts
from pipelines.features.interactions import Interactions, PartedHistory
from pipelines.features.ranking import pair_values
from pipelines.models.base import (
    Prior,
    PriorPlusSparse,
    Recommender,
    SequenceScorer,
    Targets,
    UserScores,
    excluded_row,
)
from pipelines.models.kernels import descending_bits, top_per_row_mask


class ItemToItem(Recommender):
    """A source scoring ``profile @ matrix_``; subclasses fit ``matrix_`` and say how events weigh in a profile."""

    relates_items = True
    sparse_scores = True
    matrix_: sp.csr_matrix
    profile_: sp.csr_matrix

    @abstractmethod
    def fit_matrix(self, history: PartedHistory) -> sp.csr_matrix:
        """The item x item matrix of the whole history, as a reduction over its parts (see ``summed_counts``)."""

    def fit(self, history: Interactions, valid: Targets | None = None) -> Self:
        return self.fit_parts(PartedHistory.of(history), valid)._attach(history)

    def fit_parts(self, history: PartedHistory, valid: Targets | None = None) -> Self:
        """``matrix_`` as a reduction over the parts, one part in memory at a time; no user state."""
        self.matrix_ = self.fit_matrix(history)
        self.fit_items(history)
        return self._attach(Interactions.empty(history.vocab))

    def fit_items(self, history: PartedHistory) -> None:
        """Further item-side state of the whole history (a prior); none by default."""

    def with_parts(self, history: PartedHistory) -> Self:
        return self.fit_parts(history)

    def released(self) -> Self:
        """A copy without the fitted item-item state (the ``*_`` attributes): ``with_parts`` rebuilds all of it."""
        other = copy.copy(self)
        for name in [name for name in vars(other) if name.endswith("_")]:
            delattr(other, name)
        return other

    def attach(self, part: Interactions) -> Self:
        return copy.copy(self)._attach(part)

    def _attach(self, part: Interactions) -> Self:
        self._history, self.profile_ = part, self.user_profiles(part)
        return self

    @abstractmethod
    def profile_weights(self, events: np.ndarray, steps_back: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which events of a history count in the profile (bool mask) and their float32 weights, from each event's
        type code and how many later events its user has (0 = the newest)."""

    def user_profiles(self, history: Interactions) -> sp.csr_matrix:
        """User x item profile weights of every user of ``history``."""
        keep, weights = self.profile_weights(history.event, history.steps_back)
        return sp.csr_matrix((weights, (history.user[keep], history.item[keep])),
                             shape=(history.n_users, history.n_items))

    def adjust(self, scores: np.ndarray) -> np.ndarray:
        """Scores after profile @ matrix; unchanged by default. A source may add a per-item prior, the same for
        every user (``adjust(s) == s + adjust(0)``): candidate generation relies on it to skip dense rows."""
        return scores

    def score(self, users: np.ndarray) -> np.ndarray:
        return self.adjust((self.profile_[users] @ self.matrix_).toarray())

    def candidate_scorer(self, exclude_seen: bool = True) -> Callable[[np.ndarray], UserScores]:
        """The sparse rows of profile @ matrix plus the prior ``adjust`` adds, whose order is sorted once."""
        prior = self._prior()

        def sparse(users: np.ndarray) -> UserScores:
            excluded = self.history.seen[users] if exclude_seen else None
            return PriorPlusSparse((self.profile_[users] @ self.matrix_).tocsr(), prior, excluded)

        return sparse

    def sequence_scorer(self) -> SequenceScorer:
        """A sequence's sparse row of profile @ matrix plus the prior, as ``candidate_scorer`` gives a user."""
        prior = self._prior()

        def sparse(items: np.ndarray, events: np.ndarray, exclude: np.ndarray | None) -> UserScores:
            product = (self._sequence_profile(items, events) @ self.matrix_).tocsr()
            return PriorPlusSparse(product, prior, excluded_row(exclude, len(prior.values)))

        return sparse

    def score_sequence(self, items: np.ndarray, events: np.ndarray) -> np.ndarray:
        """The source's own profile of the sequence (its recency weighting) times its item x item matrix."""
        return self.adjust((self._sequence_profile(items, events) @ self.matrix_).toarray())[0]

    def _sequence_profile(self, items: np.ndarray, events: np.ndarray) -> sp.csr_matrix:
        """(1, n_items) profile weights of a sequence (oldest first), as ``user_profiles`` weighs a user's history."""
        items = np.asarray(items, dtype=np.int64)
        keep, weights = self.profile_weights(np.asarray(events), np.arange(len(items))[::-1])
        return sp.csr_matrix((weights, (np.zeros(int(keep.sum()), dtype=np.int64), items[keep])),
                             shape=(1, self.matrix_.shape[1]))

    def _prior(self) -> Prior:
        """The per-item prior ``adjust`` adds (in the dtype of profile @ matrix), its order sorted once."""
        n_items = self.matrix_.shape[1]
        return Prior.of(self.adjust(np.zeros((1, n_items), dtype=(self.profile_[:0] @ self.matrix_).dtype))[0])

    def pair_strength(self, anchors: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """``matrix_[anchor, target]``: how strongly the source leads from the anchor item to the target item."""
        return pair_values(self.matrix_, anchors, targets)

    def related(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """The row of ``item`` in ``matrix_``: its neighbours by strength, strongest first (ties in code order)."""
        row = self.matrix_.getrow(item)
        order = np.argsort(-row.data, kind="stable")
        order = order[row.data[order] > 0]
        return row.indices[order].astype(np.int64), row.data[order].astype(np.float32)


def summed_counts(history: PartedHistory, pair_counts: Callable[[Interactions], sp.csr_matrix]) -> sp.csr_matrix:
    """``pair_counts`` of every part (item x item counts that never cross users), summed: the counts of the whole
    history. The parts are tasks on a cluster when one is configured.

    Sums pair up like a binary counter (parts 1+2, 3+4, then (1+2)+(3+4), ...), so each part's entries are merged
    about log2(parts) times; adding each part to one running total merges the growing total once per part, which
    grows with the square of the log. The order is fixed, so the sum does not depend on where the parts ran.
    """
    pending: list[tuple[int, sp.csr_matrix]] = []  # (level, sum of 2**level consecutive parts)
    for counts in imap_parts(_part_counts, [(pair_counts, history, i) for i in range(len(history))]):
        level = 0
        while pending and pending[-1][0] == level:
            counts, level = pending.pop()[1] + counts, level + 1
        pending.append((level, counts))
    total = pending.pop()[1]
    while pending:
        total = pending.pop()[1] + total
    return total


def _part_counts(pair_counts: Callable[[Interactions], sp.csr_matrix], history: PartedHistory,
                 i: int) -> sp.csr_matrix:
    return pair_counts(history.part(i))


def top_n_per_row(m: sp.csr_matrix, n: int) -> sp.csr_matrix:
    """Keep the ``n`` largest entries of each row (the lower column first among equals): item-item rows of bounded
    size, so memory and the cost of a user's candidates do not grow with how popular the user's items are."""
    m = m.tocsr()
    keep = top_per_row_mask(m.indptr, m.indices, descending_bits(m.data), n)
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))[keep]
    return sp.csr_matrix((m.data[keep], (rows, m.indices[keep])), shape=m.shape)
