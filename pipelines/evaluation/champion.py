"""The current champion scored on the candidate's test split, so the gate can compare the two on the same users.

The champion was trained on its own data version, so its user and item codes differ from the candidate's:
users are looked up by id in the champion's vocabulary, its lists are mapped back by item id, and users or
items it never saw count as misses (that is what serving the champion would have given them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.features.interactions import Vocab
from pipelines.models.base import Recommender
from pipelines.models.train import load_model


@dataclass
class Champion:
    version: str
    model: Recommender

    @classmethod
    def load(cls, version: str, model_dir: str | Path) -> Champion:
        """The champion's evaluation model (fitted on its train + valid history, never on its test targets)."""
        return cls(version, load_model(model_dir, "candidate"))

    def lists(self, vocab: Vocab, users: np.ndarray, k: int, exclude_seen: bool) -> np.ndarray:
        """Top-k item codes in ``vocab`` for ``users`` (codes in ``vocab``); -1 where the champion has nothing."""
        own = self.model.history.vocab
        codes = own.user_codes(vocab.users[users])
        known = codes >= 0
        out = np.full((len(users), k), -1, dtype=np.int64)
        if not known.any():
            return out
        recs = self.model.rank(codes[known], k, exclude_seen).items
        mapped = np.full(recs.shape, -1, dtype=np.int64)
        valid = recs >= 0
        mapped[valid] = vocab.item_codes(own.items[recs[valid]])
        out[known, : mapped.shape[1]] = mapped
        return out
