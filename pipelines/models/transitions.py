"""Sequential transitions: what users chose right after each item, scored from the user's last items."""

from __future__ import annotations

from typing import Self

import numpy as np
import scipy.sparse as sp

from pipelines.features.interactions import Interactions
from pipelines.models.base import Targets
from pipelines.models.item_to_item import ItemToItem


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


class Transitions(ItemToItem):
    """First-order Markov chain over items, mixing the last few items with geometric decay."""

    name = "transitions"

    def __init__(self, last_n: int = 3, decay: float = 0.5):
        self.last_n = last_n
        self.decay = decay

    def fit(self, history: Interactions, valid: Targets | None = None) -> Self:
        self._history = history
        self.matrix_ = transition_matrix(history)
        self.profile_ = self.user_profiles(history)
        return self

    def profile_weights(self, events: np.ndarray, steps_back: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The last ``last_n`` events, weighing ``decay ** steps back`` from the newest."""
        keep = steps_back < self.last_n
        return keep, np.power(self.decay, steps_back[keep]).astype(np.float32)
