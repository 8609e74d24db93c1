"""Sequential transitions: what users chose right after each item, scored from the user's last items."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from pipelines.features.interactions import Interactions, PartedHistory
from pipelines.models.item_to_item import ItemToItem, summed_counts, top_n_per_row


def transition_counts(history: Interactions) -> sp.csr_matrix:
    """T[a, b]: how often a user's next distinct step after a was b (consecutive events of the same user; the
    counts of a history are the sum of those of its parts of whole users)."""
    same_user = history.user[1:] == history.user[:-1]
    moved = history.item[1:] != history.item[:-1]
    keep = same_user & moved
    a, b = history.item[:-1][keep], history.item[1:][keep]
    n = history.n_items
    return sp.csr_matrix((np.ones(len(a), dtype=np.float32), (a, b)), shape=(n, n))


def transition_shares(counts: sp.csr_matrix) -> sp.csr_matrix:
    """Each row of the counts as shares of the item's next steps."""
    out_deg = np.asarray(counts.sum(axis=1)).ravel()
    return (sp.diags(1.0 / np.maximum(out_deg, 1.0)).astype(np.float32) @ counts).tocsr()


class Transitions(ItemToItem):
    """First-order Markov chain over items, mixing the last few items with geometric decay."""

    name = "transitions"

    def __init__(self, last_n: int = 3, decay: float = 0.5, neighbours: int | None = None):
        self.last_n = last_n
        self.decay = decay
        self.neighbours = neighbours  # None: every next step seen

    def fit_matrix(self, history: PartedHistory) -> sp.csr_matrix:
        matrix = transition_shares(summed_counts(history, transition_counts))  # shares of all next steps, then pruned
        return matrix if self.neighbours is None else top_n_per_row(matrix, self.neighbours)

    def profile_weights(self, events: np.ndarray, steps_back: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The last ``last_n`` events, weighing ``decay ** steps back`` from the newest."""
        keep = steps_back < self.last_n
        return keep, np.power(self.decay, steps_back[keep]).astype(np.float32)
