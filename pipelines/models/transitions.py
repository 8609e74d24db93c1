"""Sequential transitions: what users chose right after each item, scored from the user's last items."""

from __future__ import annotations

from typing import Self

import numpy as np
import scipy.sparse as sp

from pipelines.features.interactions import Interactions
from pipelines.models.base import Recommender, Targets


def transition_matrix(history: Interactions) -> sp.csr_matrix:
    """T[a, b]: share of a's next distinct steps (same user, consecutive events) that went to b."""
    same_user = history.user[1:] == history.user[:-1]
    moved = history.item[1:] != history.item[:-1]
    keep = same_user & moved
    a, b = history.item[:-1][keep], history.item[1:][keep]
    n = history.n_items
    t = sp.csr_matrix((np.ones(len(a), dtype=np.float32), (a, b)), shape=(n, n))
    out_deg = np.asarray(t.sum(axis=1)).ravel()
    return (sp.diags(1.0 / np.maximum(out_deg, 1.0)).astype(np.float32) @ t).tocsr()


def last_items_profile(history: Interactions, last_n: int, decay: float) -> sp.csr_matrix:
    """User x item weights of the user's last ``last_n`` events: decay ** steps back from the newest."""
    steps_back = history.steps_back
    keep = steps_back < last_n
    w = np.power(decay, steps_back[keep]).astype(np.float32)
    return sp.csr_matrix((w, (history.user[keep], history.item[keep])), shape=(history.n_users, history.n_items))


class Transitions(Recommender):
    """First-order Markov chain over items, mixing the last few items with geometric decay."""

    name = "transitions"

    def __init__(self, last_n: int = 3, decay: float = 0.5):
        self.last_n = last_n
        self.decay = decay

    def fit(self, history: Interactions, valid: Targets | None = None) -> Self:
        self._history = history
        self.matrix_ = transition_matrix(history)
        self.profile_ = last_items_profile(history, self.last_n, self.decay)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        return (self.profile_[users] @ self.matrix_).toarray()
