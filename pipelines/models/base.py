"""The one shape every candidate source and two-stage model has: ``fit(history)``, ``score(users)``, ``rank(users, k)``.

``rank`` is the single path from a fitted model to top-k lists: evaluation scores it, the serving store precomputes
it and the API serves it, so the list the gate passed is the list users get. Everything a caller needs beyond the
lists is a public capability of the model (``score_sequence`` for session lists, ``pair_strength`` and ``related``
for explanations and similar items, ``component_lists`` and ``report`` for evaluation); a model that cannot do
something says so through that capability, never through the caller testing its type.
"""

from __future__ import annotations

import copy
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import numpy as np
import scipy.sparse as sp

from pipelines.features.interactions import Interactions, PartedHistory
from pipelines.models.kernels import csr_pairs, descending_bits, sparse_plus_prior_top, unpack

# Validation targets for early stopping: user codes and, per user, the target item codes.
Targets = tuple[np.ndarray, list[np.ndarray]]

RECENT_ITEMS = 10  # how far back an explanation ("because you viewed X") looks for the most related item

# users x items cells of one dense score matrix (128 MB of float32): at 10M events (250k items) 1024-user candidate
# batches held ~6 GB of dense scores across the sources.
CELL_BUDGET = 1 << 25


def top_k(scores: np.ndarray, k: int, block: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of each row's k largest (float32) scores, best first, the lower index first among equals.

    Exact, and several times faster than a row-wise argpartition over the whole catalogue: the top k values lie in
    the k blocks with the largest maxima, which give each row's k-th value; only blocks reaching it are read again
    to cut ties by index (so sparse candidate paths can reproduce the same lists).
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
    kth = -np.partition(-np.take_along_axis(padded, idx, axis=1), k - 1, axis=1)[:, k - 1]
    rows, reach = np.nonzero(block_max >= kth[:, None])
    vals = padded.reshape(-1, block)[rows * n_blocks + reach].ravel()
    idx = (reach[:, None] * block + np.arange(block)).ravel()
    rows = np.repeat(rows, block)
    keep = (vals >= kth[rows]) & (idx < n)
    return best_per_row(rows[keep], idx[keep], vals[keep], n_rows, k)


def best_per_row(rows: np.ndarray, items: np.ndarray, values: np.ndarray, n_rows: int,
                 width: int) -> tuple[np.ndarray, np.ndarray]:
    """(n_rows, width) the best ``width`` of candidate (row, item, value) triples per row: value descending, lower
    item first on ties, the order every top list follows; rows with fewer candidates are padded with -1 / -inf.

    The candidates must hold no repeated (row, item); where row, value and item fit in 64 bits (batches of up to
    1,024 rows and 4M items) one sort orders them, otherwise they must come in (row, item) order for a stable sort by
    (row, value). -0.0 counts as 0.0, as comparisons do.
    """
    if values.dtype != np.float32:
        raise TypeError(f"top lists order float32 scores, not {values.dtype}")
    bits = (values + np.float32(0.0)).view(np.uint32)
    descending = ~np.where(bits >> 31, ~bits, bits | np.uint32(1 << 31))  # unsigned order of the reversed float order
    item_bits = max(int(items.max(initial=0)).bit_length(), 1)
    if (max(n_rows - 1, 0)).bit_length() + 32 + item_bits <= 64:
        # one sort of (row, -value, item) packed in 64 bits: no argsort, no gathers, any input order
        key = np.sort((rows.astype(np.uint64) << np.uint64(32 + item_bits))
                      | (descending.astype(np.uint64) << np.uint64(item_bits)) | items.astype(np.uint64))
        rows = (key >> np.uint64(32 + item_bits)).astype(np.int64)
        items = (key & np.uint64((1 << item_bits) - 1)).astype(np.int64)
        up = ~(key >> np.uint64(item_bits)).astype(np.uint32)  # back to the float's unsigned order
        values = np.where(up >> 31, up & np.uint32(0x7FFFFFFF), ~up).view(np.float32)
    else:
        order = np.argsort((rows.astype(np.uint64) << np.uint64(32)) | descending.astype(np.uint64), kind="stable")
        rows, items, values = rows[order], items[order], values[order]
    counts = np.bincount(rows, minlength=n_rows)
    pos = np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)
    keep = pos < width
    out_items = np.full((n_rows, width), -1, dtype=np.int64)
    out_values = np.full((n_rows, width), -np.inf, dtype=values.dtype)
    out_items[rows[keep], pos[keep]] = items[keep]
    out_values[rows[keep], pos[keep]] = values[keep]
    return out_items, out_values


def pad_columns(values: np.ndarray, k: int, fill: float) -> np.ndarray:
    """``values`` cut or padded with ``fill`` to exactly k columns (lists of tiny catalogues or pools are shorter)."""
    if values.shape[1] >= k:
        return values[:, :k]
    return np.pad(values, ((0, 0), (0, k - values.shape[1])), constant_values=fill)


_PREPARED: list[tuple[str, tuple[np.ndarray, ...], Any]] = []  # newest last
_PREPARED_KEPT = 16  # two per source of a model (item order, its key bits) and a few more
_PREPARED_LOCK = threading.Lock()


def prepared(kind: str, inputs: tuple[np.ndarray, ...], build: Callable[[], Any]) -> Any:
    """``build()`` of a ``kind``, reused while ``inputs`` (the fitted arrays it derives from) hold the same values.

    Candidate generation makes a scorer per call (two-stage ranking: per 2,048 users), and sorting 4M items costs
    ~0.5 s, so item orders are kept across calls, whatever model object (or copy of one) holds the arrays. Parts
    ranked on several threads share the kept values (one lock: a value is built once).
    """
    with _PREPARED_LOCK:
        for index, (kept_kind, kept, value) in enumerate(_PREPARED):
            if kept_kind == kind and len(kept) == len(inputs) and all(
                    a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)
                    for a, b in zip(kept, inputs, strict=True)):
                _PREPARED.append(_PREPARED.pop(index))
                return value
        value = build()
        _PREPARED.append((kind, tuple(np.array(a, copy=True) for a in inputs), value))
        del _PREPARED[:-_PREPARED_KEPT]
        return value


def item_order(values: np.ndarray) -> np.ndarray:
    """Item codes by ``values``, best first, the lower code first on ties: the order of a top list of ``values``."""
    return np.argsort(-values, kind="stable")


def pair_keys(rows: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
    """int64 row * n_items + item: (row, item) pairs as sortable, searchable keys."""
    return rows.astype(np.int64) * n_items + items


def distinct(keys: np.ndarray) -> np.ndarray:
    """The sorted distinct values of ``keys`` (by sorting: numpy's hashing ``unique`` is far slower on pair keys)."""
    keys = np.sort(keys)
    return keys[np.r_[True, keys[1:] != keys[:-1]]] if len(keys) else keys


def contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """bool per element of ``keys``: whether it is in ``sorted_keys`` (ascending)."""
    if not len(sorted_keys):
        return np.zeros(len(keys), dtype=bool)
    return sorted_keys[np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)] == keys


def csr_keys(matrix: sp.csr_matrix) -> np.ndarray:
    """``pair_keys`` of the stored entries of ``matrix``, in storage order."""
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    return pair_keys(rows, matrix.indices, matrix.shape[1])


def csr_lookup(matrix: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``matrix[rows[i], cols[i]]`` in the matrix's own dtype (0 where nothing is stored; no duplicates stored)."""
    matrix = matrix if matrix.has_sorted_indices else matrix.sorted_indices()
    keys = csr_keys(matrix)  # sorted: row-major with sorted columns
    wanted = pair_keys(rows, cols, matrix.shape[1])
    if not len(keys):
        return np.zeros(len(wanted), dtype=matrix.dtype)
    pos = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    return np.where(keys[pos] == wanted, matrix.data[pos], 0).astype(matrix.dtype)


class UserScores(ABC):
    """A batch of users' scores as the source's dense score matrix holds them, excluded items at -inf, without
    necessarily holding that matrix: what candidate generation asks of a source."""

    @abstractmethod
    def top(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(len(users), min(n, n_items)) item codes and float32 scores of each user's best items, the lower code
        first on ties (what ``top_k`` of the dense matrix gives), -1 / -inf past the items of finite score."""

    @abstractmethod
    def at(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        """float32 scores of the pairs (users[rows[i]], items[i]): the dense matrix at those cells."""


# (items, events, exclude) of a sequence -> its one-row scores, None if the model cannot score one (``sequence_scorer``)
SequenceScorer = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], "UserScores | None"]


class DenseScores(UserScores):
    """The default: the dense matrix itself (one float32 row per user, so batches must respect ``CELL_BUDGET``)."""

    def __init__(self, scores: np.ndarray, excluded: sp.csr_matrix | None):
        self.scores = np.array(scores, dtype=np.float32, copy=True)
        if excluded is not None:
            self.scores[np.repeat(np.arange(len(self.scores)), np.diff(excluded.indptr)), excluded.indices] = -np.inf

    def top(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        items, values = top_k(self.scores, n)
        return np.where(np.isfinite(values), items, -1), values

    def at(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self.scores[rows, items]


@dataclass(frozen=True)
class Prior:
    """A per-item prior with what sparse top lists read of it: its item order and its descending key bits."""

    values: np.ndarray
    order: np.ndarray
    bits: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray) -> Prior:
        """The prior ``values`` with its order and bits, each sorted once and kept across calls (``prepared``)."""
        order = prepared("order", (values,), lambda: item_order(values.astype(np.float32)))
        bits = prepared("prior-bits", (values,), lambda: descending_bits(values.astype(np.float32)))
        return cls(values, order, bits)


class PriorPlusSparse(UserScores):
    """Scores that are ``raw`` (a sparse users x items product, 0 where nothing is stored) plus a per-item ``prior``:
    the dense row is ``(raw.toarray() + prior.values).astype(float32)``, yet the top lists need only the stored
    entries and the head of the prior's order, since every item not stored scores just its prior."""

    def __init__(self, raw: sp.csr_matrix, prior: Prior, excluded: sp.csr_matrix | None):
        self.raw, self.prior = raw, prior
        self.excluded = excluded if excluded is not None else sp.csr_matrix(raw.shape, dtype=np.float32)

    def top(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        n_rows, n_items = self.raw.shape
        width = min(n, n_items)
        prior = self.prior.values
        if denser_than_sparse(self.raw.nnz + self.excluded.nnz + n_rows * width, n_rows, n_items):
            scores = DenseScores(self.raw.toarray() + prior, self.excluded)
            return scores.top(n)
        stored = descending_bits((self.raw.data + prior[self.raw.indices]).astype(np.float32))
        keys = sparse_plus_prior_top(self.raw.indptr, self.raw.indices, stored, self.prior.bits, self.prior.order,
                                     self.excluded.indptr, self.excluded.indices, width)
        return unpack(keys)

    def at(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        raw = csr_pairs(self.raw.indptr, self.raw.indices, self.raw.data, self.raw.shape[1], rows, items)
        values = (raw + self.prior.values[items]).astype(np.float32)
        ex = self.excluded
        values[csr_pairs(ex.indptr, ex.indices, np.ones(ex.nnz, dtype=np.bool_), ex.shape[1], rows, items)] = -np.inf
        return values


class Excluding(UserScores):
    """``inner`` with the item codes ``exclude`` also at -inf in every row (e.g. a session's items on top of what
    the user's fitted history excludes)."""

    def __init__(self, inner: UserScores, exclude: np.ndarray | None):
        self.inner = inner
        self.exclude = np.unique(np.asarray(exclude if exclude is not None else [], dtype=np.int64))

    def top(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        items, values = self.inner.top(n + len(self.exclude))
        width = min(n, items.shape[1])
        keep = (items >= 0) & ~np.isin(items, self.exclude)
        order = np.argsort(~keep, axis=1, kind="stable")[:, :width]  # kept ones first, in the inner order
        kept = np.take_along_axis(keep, order, axis=1)
        return (np.where(kept, np.take_along_axis(items, order, axis=1), -1),
                np.where(kept, np.take_along_axis(values, order, axis=1), -np.inf).astype(np.float32))

    def at(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        values = self.inner.at(rows, items)
        values[np.isin(items, self.exclude)] = -np.inf
        return values


class NoScores(UserScores):
    """What a source answers for users it knows nothing of (an anonymous session it cannot score): no finite score."""

    def __init__(self, n_rows: int, n_items: int):
        self.n_rows, self.n_items = n_rows, n_items

    def top(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        shape = (self.n_rows, min(n, self.n_items))
        return np.full(shape, -1, dtype=np.int64), np.full(shape, -np.inf, dtype=np.float32)

    def at(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.full(len(items), -np.inf, dtype=np.float32)


def excluded_row(items: np.ndarray | None, n_items: int) -> sp.csr_matrix | None:
    """The one-row (1 x n_items) matrix of the item codes ``items`` that ``UserScores`` take as excluded."""
    if items is None:
        return None
    cols = np.unique(np.asarray(items, dtype=np.int64))
    return sp.csr_matrix((np.ones(len(cols), dtype=np.bool_), cols, np.array([0, len(cols)])), shape=(1, n_items))


def denser_than_sparse(sparse_cells: int, n_rows: int, n_items: int) -> bool:
    """Whether a dense (n_rows x n_items) score matrix is the cheaper way to top lists that a sparse path would
    build from ``sparse_cells`` candidates (a sparse candidate costs a few sorts and look-ups, a dense cell a pass)."""
    return 4 * sparse_cells >= n_rows * n_items


@dataclass
class Ranked:
    """Top-k lists of a batch of users, best first, each item with the component that proposed it and why."""

    items: np.ndarray  # int64 (n, k) item codes; -1 pads rows with fewer than k rankable items
    scores: np.ndarray  # float32 (n, k) the score that ordered the list; -inf at padding
    sources: np.ndarray  # int16 (n, k) index into the model's ``source_names`` of the proposer; -1 at padding
    related: np.ndarray  # int64 (n, k) the user's recent item that explains the item (item-to-item sources), else -1

    @classmethod
    def concat(cls, parts: list[Ranked], k: int) -> Ranked:
        """The rows of ``parts`` in order (an empty batch of k columns when there are none)."""
        if not parts:
            return cls(np.full((0, k), -1, dtype=np.int64), np.full((0, k), -np.inf, dtype=np.float32),
                       np.full((0, k), -1, dtype=np.int16), np.full((0, k), -1, dtype=np.int64))
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("items", "scores", "sources", "related")))


def recent_items(history: Interactions, users: np.ndarray, n: int = RECENT_ITEMS) -> np.ndarray:
    """(len(users), n) each user's latest item codes in ``history``, newest first, -1 padded."""
    bounds, items = history.user_bounds, history.item
    back = bounds[users + 1][:, None] - 1 - np.arange(n)[None]
    valid = back >= bounds[users][:, None]
    if not len(items):
        return np.full(back.shape, -1, dtype=np.int64)
    return np.where(valid, items[np.clip(back, 0, len(items) - 1)], -1).astype(np.int64)


def sequence_recent(items: np.ndarray, n: int = RECENT_ITEMS) -> np.ndarray:
    """(1, n) the latest item codes of one sequence (oldest first in ``items``), newest first, -1 padded."""
    out = np.full((1, n), -1, dtype=np.int64)
    tail = np.asarray(items, dtype=np.int64)[::-1][:n]
    out[0, : len(tail)] = tail
    return out


def explain(components: list[Recommender], recent: np.ndarray, items: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """For items proposed by a component that relates items, the recent item (row of ``recent``) most related to it.

    ``sources`` index ``components``; the result is -1 where no recent item relates to the listed item at all.
    """
    related = np.full(items.shape, -1, dtype=np.int64)
    for index, component in enumerate(components):
        if not component.relates_items:
            continue
        rows, cols = np.nonzero(sources == index)
        if not len(rows):
            continue
        anchors = recent[rows]  # (m, RECENT_ITEMS)
        targets = np.repeat(items[rows, cols][:, None], anchors.shape[1], axis=1)
        strength = component.pair_strength(anchors.ravel(), targets.ravel()).reshape(anchors.shape)
        best = strength.argmax(axis=1)
        found = strength[np.arange(len(rows)), best] > 0
        related[rows[found], cols[found]] = anchors[found, best[found]]
    return related


class Recommender(ABC):
    """Scores the whole catalogue for a batch of users; ``rank`` turns that into explained top-k lists.

    Capabilities (class attributes and methods with a documented "cannot" answer):

    - ``score_sequence``: scores for an arbitrary ordered sequence of items (session lists); None when the model
      only knows the users it was fitted on (popularity answers for everyone, LightGCN cannot);
    - ``relates_items``: ``pair_strength`` and ``related`` describe an item-to-item relation (explanations,
      similar items); without it they answer "not related";
    - ``exclude_seen``: True when the model never proposes an item the user has seen, whatever ``rank`` is asked;
    - ``sparse_scores``: ``candidate_scorer`` answers top lists and pair scores without a dense users x items
      matrix (``top_candidates``, ``score_pairs``), so candidate batches need not shrink with the catalogue.
    """

    name: str = "recommender"
    relates_items: ClassVar[bool] = False
    sparse_scores: ClassVar[bool] = False
    exclude_seen: bool = False

    @abstractmethod
    def fit(self, history: Interactions, valid: Targets | None = None) -> Self:
        """Learn from ``history``; ``valid`` targets may only be used for early stopping (never test targets)."""

    def with_history(self, history: Interactions) -> Self:
        """Score against a longer history (e.g. train + valid for test) without re-tuning; cheap models refit."""
        return self.fit(history)

    # -- histories held as parts of whole users (``PartedHistory``): item-side reductions, one part attached at a time
    def fit_parts(self, history: PartedHistory, valid: Targets | None = None) -> Self:
        """``fit`` on a history held as parts. Models whose fit is a reduction over users override it and keep no
        user state (``attach`` adds it); by default every part is joined into one history (memory grows with it)."""
        return self.fit(history.concat(), valid)

    def with_parts(self, history: PartedHistory) -> Self:
        """``with_history`` for a history held as parts (item-side state of the whole, no user state)."""
        return self.with_history(history.concat())

    def released(self) -> Self:
        """A copy for ``with_parts`` to refit, without the state that refit rebuilds from scratch, so a refit
        need not hold the old item statistics beside the new ones. By default a plain copy (trained weights stay)."""
        return copy.copy(self)

    def attach(self, part: Interactions) -> Self:
        """A copy that scores the users of ``part`` (one part of the history it was fitted on) with the same
        item-side state: rank one part's users at a time. By default the copy swaps its history for ``part``."""
        return copy.copy(self).with_history(part)

    @abstractmethod
    def score(self, users: np.ndarray) -> np.ndarray:
        """Dense float32 scores (len(users), n_items); higher is better."""

    def candidate_scorer(self, exclude_seen: bool = True) -> Callable[[np.ndarray], UserScores]:
        """``UserScores`` of batches of users (seen items excluded on request), what candidate generation reads.

        The callable holds what the source prepares once per use (e.g. item orders), so callers keep it across
        batches. By default it holds the dense ``score`` rows; ``sparse_scores`` sources never build them.
        """
        def dense(users: np.ndarray) -> UserScores:
            return DenseScores(self.score(users), self.history.seen[users] if exclude_seen else None)

        return dense

    def sequence_scorer(self) -> SequenceScorer:
        """A function of (items, events, exclude) giving the ``UserScores`` (one row) of a user whose history is
        the sequence ``items`` / ``events``, with the item codes ``exclude`` at -inf (None: none); it answers None
        when the model cannot score a sequence. Like ``candidate_scorer`` it holds what the source prepares once
        per use; by default it holds the dense ``score_sequence`` row, ``sparse_scores`` sources never build it."""
        def dense(items: np.ndarray, events: np.ndarray, exclude: np.ndarray | None) -> UserScores | None:
            scores = self.score_sequence(items, events)
            if scores is None:
                return None
            return DenseScores(np.asarray(scores)[None], excluded_row(exclude, len(scores)))

        return dense

    def top_candidates(self, users: np.ndarray, n: int, exclude_seen: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Each user's best ``n`` items and scores, -1 / -inf padded: ``top_k`` of the (seen-excluded) dense scores."""
        return self.candidate_scorer(exclude_seen)(np.asarray(users, dtype=np.int64)).top(n)

    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """float32 scores of the pairs (users[i], items[i]): what ``score(users)`` holds at those cells."""
        distinct, rows = np.unique(np.asarray(users, dtype=np.int64), return_inverse=True)
        items = np.asarray(items, dtype=np.int64)
        scorer = self.candidate_scorer(exclude_seen=False)
        step = len(distinct) if self.sparse_scores else max(1, CELL_BUDGET // max(self.history.n_items, 1))
        out = np.empty(len(items), dtype=np.float32)
        for start in range(0, len(distinct), step):
            part = (rows >= start) & (rows < start + step)
            out[part] = scorer(distinct[start: start + step]).at(rows[part] - start, items[part])
        return out

    def recommend(
        self, users: np.ndarray, k: int, exclude_seen: bool = True, batch_size: int = 1024
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k item codes and their scores per user, best first, full ranking over the catalogue (k <= n_items);
        -1 / -inf past the items of finite score.

        Through ``candidate_scorer``, so a ``sparse_scores`` model never builds dense rows (at 4M items a batch of
        1,024 dense rows is 16 GB) and a dense one holds at most ``CELL_BUDGET`` cells at a time.
        """
        k = min(k, self.history.n_items)
        if not self.sparse_scores:
            batch_size = max(1, min(batch_size, CELL_BUDGET // max(self.history.n_items, 1)))
        scorer = self.candidate_scorer(exclude_seen)
        out_items = np.full((len(users), k), -1, dtype=np.int64)
        out_scores = np.full((len(users), k), -np.inf, dtype=np.float32)
        for start in range(0, len(users), batch_size):
            items, values = scorer(users[start: start + batch_size]).top(k)
            out_items[start: start + len(items), : items.shape[1]] = items
            out_scores[start: start + len(items), : items.shape[1]] = values
        return out_items, out_scores

    def rank(self, users: np.ndarray, k: int, exclude_seen: bool = True) -> Ranked:
        """The model's top-k lists for known ``users``: what evaluation scores, the store keeps and the API serves.

        Seen items are left out when ``exclude_seen`` asks for it or the model never proposes them.
        """
        users = np.asarray(users, dtype=np.int64)
        items, scores = self.recommend(users, k, exclude_seen=exclude_seen or self.exclude_seen)
        return self._own_lists(items, scores, k, recent_items(self.history, users))

    def rank_sequence(self, items: np.ndarray, events: np.ndarray, k: int, exclude_seen: bool = True,
                      user: int = -1) -> Ranked | None:
        """The top-k list (one row) of a user whose history is the sequence ``items`` / ``events`` (e.g. a known
        user's history followed by the session's events); the sequence's items count as seen.

        ``user`` is the known user the sequence extends (-1: anonymous). None when the model cannot score a
        sequence (see ``score_sequence``).
        """
        exclude = np.asarray(items, dtype=np.int64) if exclude_seen or self.exclude_seen else None
        scores = self.sequence_scorer()(items, events, exclude)
        if scores is None:
            return None
        top, values = scores.top(k)
        return self._own_lists(top, values, k, sequence_recent(items))

    def _own_lists(self, items: np.ndarray, scores: np.ndarray, k: int, recent: np.ndarray) -> Ranked:
        """Lists of a single source: every item is its own, explained from ``recent`` when it relates items."""
        scores = pad_columns(scores.astype(np.float32), k, -np.inf)
        items = np.where(np.isfinite(scores), pad_columns(items.astype(np.int64), k, -1), -1)
        sources = np.where(items >= 0, 0, -1).astype(np.int16)
        return Ranked(items, scores, sources, explain([self], recent, items, sources))

    def component_lists(self, users: np.ndarray, k: int, exclude_seen: bool = True) -> dict[str, np.ndarray]:
        """Top-k item codes (-1 padded) of every building block on its own, for evaluation.

        Keys are ``source:NAME`` per candidate source and ``ranker:NAME`` per ranker; a single source has just
        its own list, the one ``rank`` gives.
        """
        return {f"source:{self.name}": self.rank(users, k, exclude_seen).items}

    @property
    def components(self) -> dict[str, Recommender]:
        """The candidate sources by name, in the order ``Ranked.sources`` indexes them (a single source: itself)."""
        return {self.name: self}

    @property
    def source_names(self) -> list[str]:
        return list(self.components)

    @property
    def ranker_name(self) -> str | None:
        """The learned ranker that orders the lists (None: the model's own scores do)."""
        return None

    @property
    def report(self) -> dict[str, Any]:
        """What fitting measured and decided (e.g. a two-stage model's ranker selection); {} when nothing."""
        return {}

    def score_sequence(self, items: np.ndarray, events: np.ndarray) -> np.ndarray | None:
        """float32 (n_items,) scores for a user whose whole history is ``items`` (item codes, oldest first) with
        ``events`` (event type codes); the same as ``score`` gives a fitted user with that history.

        None when the model cannot score a sequence it was not fitted on.
        """
        return None

    def pair_strength(self, anchors: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """float32 strength of the relation from ``anchors[i]`` to ``targets[i]`` (0: none, also for codes < 0).

        All 0 unless ``relates_items``.
        """
        return np.zeros(len(anchors), dtype=np.float32)

    def related(self, item: int) -> tuple[np.ndarray, np.ndarray]:
        """Item codes related to ``item`` and their strength (> 0), strongest first; empty unless ``relates_items``."""
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)

    @property
    def history(self) -> Interactions:
        """The history the model was fitted on (needed to exclude seen items)."""
        fitted = getattr(self, "_history", None)
        if fitted is None:
            raise RuntimeError(f"{self.name}: call fit() before recommending")
        return fitted
