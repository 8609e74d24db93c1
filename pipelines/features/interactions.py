"""Events encoded as dense integer ids: the one input shape every recommender's ``fit`` takes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd
import pyarrow as pa
import scipy.sparse as sp

from pipelines.data.schema import EVENT_TYPES


def event_weight_table(weights: dict[str, float]) -> np.ndarray:
    """float32 weight per event type code (in ``EVENT_TYPES`` order); types not named weigh 1."""
    return np.array([weights.get(name, 1.0) for name in EVENT_TYPES], dtype=np.float32)


class Vocab:
    """Maps external string ids to dense codes; fixed for a run so all models rank the same catalogue.

    Ids are held as Arrow string arrays (one buffer, no Python object per id: 4M item ids are ~60 MB, not ~300 MB
    of objects); the numpy object views and the hash indexes that map ids to codes are built on first use only,
    by the callers that need them (serving, reports), never by training on encoded parts.
    """

    def __init__(self, users: np.ndarray | pa.Array, items: np.ndarray | pa.Array):
        self.arrow_users, self.arrow_items = _strings(users), _strings(items)

    @classmethod
    def build(cls, events: pd.DataFrame, items: pd.DataFrame | None = None) -> Vocab:
        item_ids = pd.Index(events["item_id"].unique())
        if items is not None:
            item_ids = item_ids.union(pd.Index(items["item_id"]))
        return cls(users=np.sort(events["user_id"].unique()).astype(object),
                   items=np.sort(item_ids.to_numpy()).astype(object))

    @property
    def n_users(self) -> int:
        return len(self.arrow_users)

    @property
    def n_items(self) -> int:
        return len(self.arrow_items)

    @cached_property
    def users(self) -> np.ndarray:
        return self.arrow_users.to_numpy(zero_copy_only=False).astype(object)

    @cached_property
    def items(self) -> np.ndarray:
        return self.arrow_items.to_numpy(zero_copy_only=False).astype(object)

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

    def __getstate__(self) -> dict[str, pa.Array]:
        # the Arrow arrays only: views and indexes are rebuilt where they are used
        return {"arrow_users": self.arrow_users, "arrow_items": self.arrow_items}


def _strings(ids: np.ndarray | pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if isinstance(ids, pa.Array):
        return ids.cast(pa.string())
    return pa.array(np.asarray(ids, dtype=object), type=pa.string())


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

    @classmethod
    def empty(cls, vocab: Vocab) -> Interactions:
        """No events: the user state of a model fitted on parts before one is attached."""
        return cls(vocab, np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, np.int8), np.zeros(0, np.int64))

    @property
    def n_users(self) -> int:
        return self.vocab.n_users

    @property
    def n_items(self) -> int:
        return self.vocab.n_items

    def __len__(self) -> int:
        return len(self.user)

    def users_in(self, users: np.ndarray) -> np.ndarray:
        """The sorted ``users`` in this history's code range: a part's users, whose codes are one range."""
        if not len(self):
            return users[:0]
        return users[(users >= self.user[0]) & (users <= self.user[-1])]

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


class PartedHistory:
    """A history held as parts of whole users (global codes), loaded one part at a time.

    Item-side statistics (co-visitation, popularity, ...) are reductions over the parts; per-user work attaches one
    part at a time. A small history is one part (``PartedHistory.of``), so one code path serves every size.
    """

    def __init__(self, vocab: Vocab, load: Callable[[int], Interactions], n_parts: int):
        self.vocab, self._load, self.n_parts = vocab, load, n_parts

    @classmethod
    def of(cls, *histories: Interactions) -> PartedHistory:
        """In-memory histories as the parts (tests, benchmarks, small data)."""
        return cls(histories[0].vocab, lambda i: histories[i], len(histories))

    def __iter__(self) -> Iterator[Interactions]:
        return (self._load(i) for i in range(self.n_parts))

    def __len__(self) -> int:
        return self.n_parts

    def part(self, i: int) -> Interactions:
        return self._load(i)

    @property
    def n_users(self) -> int:
        return self.vocab.n_users

    @property
    def n_items(self) -> int:
        return self.vocab.n_items

    @cached_property
    def ts_range(self) -> tuple[int, int] | None:
        """Oldest and newest event (unix seconds) over all parts; None without events."""
        spans = [(int(p.ts.min()), int(p.ts.max())) for p in self if len(p)]
        return (min(s[0] for s in spans), max(s[1] for s in spans)) if spans else None

    def concat(self) -> Interactions:
        """Every part as one history (for models that need all users at once: memory grows with the log)."""
        parts = list(self)
        if len(parts) == 1:
            return parts[0]
        return Interactions(self.vocab, *(np.concatenate([getattr(p, f) for p in parts])
                                          for f in ("user", "item", "event", "ts")))
