"""Events encoded as dense integer ids: the one input shape every recommender's ``fit`` takes."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipelines.data.schema import EVENT_TYPES


def event_weight_table(weights: dict[str, float]) -> np.ndarray:
    """float32 weight per event type code (in ``EVENT_TYPES`` order); types not named weigh 1."""
    return np.array([weights.get(name, 1.0) for name in EVENT_TYPES], dtype=np.float32)


@dataclass
class Vocab:
    """Maps external string ids to dense codes; fixed for a run so all models rank the same catalogue."""

    users: np.ndarray
    items: np.ndarray

    @classmethod
    def build(cls, events: pd.DataFrame, items: pd.DataFrame | None = None) -> Vocab:
        item_ids = pd.Index(events["item_id"].unique())
        if items is not None:
            item_ids = item_ids.union(pd.Index(items["item_id"]))
        return cls(users=np.sort(events["user_id"].unique()).astype(object),
                   items=np.sort(item_ids.to_numpy()).astype(object))

    @cached_property
    def user_index(self) -> pd.Index:
        return pd.Index(self.users)

    @cached_property
    def item_index(self) -> pd.Index:
        return pd.Index(self.items)

    def user_codes(self, ids: pd.Series | np.ndarray) -> np.ndarray:
        return self.user_index.get_indexer(ids)

    def item_codes(self, ids: pd.Series | np.ndarray) -> np.ndarray:
        return self.item_index.get_indexer(ids)


@dataclass
class Interactions:
    """A history of events sorted by user then time, as integer arrays."""

    vocab: Vocab
    user: np.ndarray  # int32 user code
    item: np.ndarray  # int32 item code
    event: np.ndarray  # int8 index into EVENT_TYPES
    ts: np.ndarray  # int64 seconds since epoch

    @classmethod
    def from_events(cls, events: pd.DataFrame, vocab: Vocab) -> Interactions:
        ev = events.sort_values(["user_id", "ts"], kind="stable")
        ts = ev["ts"].astype("datetime64[us, UTC]").to_numpy(dtype="datetime64[us]").astype(np.int64) // 1_000_000
        return cls(
            vocab=vocab,
            user=vocab.user_codes(ev["user_id"]).astype(np.int32),
            item=vocab.item_codes(ev["item_id"]).astype(np.int32),
            event=pd.Categorical(ev["event_type"], categories=EVENT_TYPES).codes.astype(np.int8),
            ts=ts,
        )

    @property
    def n_users(self) -> int:
        return len(self.vocab.users)

    @property
    def n_items(self) -> int:
        return len(self.vocab.items)

    def __len__(self) -> int:
        return len(self.user)

    def event_weights(self, weights: dict[str, float]) -> np.ndarray:
        return event_weight_table(weights)[self.event]

    @cached_property
    def seen(self) -> sp.csr_matrix:
        """Binary user x item matrix of everything in the history (used to exclude seen items)."""
        data = np.ones(len(self.user), dtype=np.float32)
        m = sp.csr_matrix((data, (self.user, self.item)), shape=(self.n_users, self.n_items))
        m.data[:] = 1.0
        return m

    @cached_property
    def user_bounds(self) -> np.ndarray:
        """Events of user u are ``[user_bounds[u], user_bounds[u + 1])`` (events are sorted by user)."""
        return np.searchsorted(self.user, np.arange(self.n_users + 1))

    @cached_property
    def steps_back(self) -> np.ndarray:
        """Per event, how many later events its user has (0 = the user's newest event)."""
        return self.user_bounds[1:][self.user] - np.arange(len(self.user)) - 1

    def sequences(self) -> list[np.ndarray]:
        """Each user's item codes in time order (empty for users without history)."""
        bounds = self.user_bounds
        return [self.item[bounds[u]: bounds[u + 1]] for u in range(self.n_users)]
