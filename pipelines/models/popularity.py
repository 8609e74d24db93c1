"""Recency-weighted popularity: the baseline every model must beat, and the cold-start fallback."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Self

import numpy as np
import scipy.sparse as sp

from pipelines.features.interactions import Interactions, PartedHistory, event_weight_table
from pipelines.models.base import (
    DenseScores,
    Prior,
    PriorPlusSparse,
    Recommender,
    SequenceScorer,
    Targets,
    UserScores,
    best_per_row,
    contains,
    csr_keys,
    csr_lookup,
    denser_than_sparse,
    distinct,
    excluded_row,
    item_order,
    pair_keys,
    prepared,
)

DAY = 86_400.0


def popularity_scores(history: Interactions | PartedHistory, event_weights: dict[str, float],
                      half_life_days: float) -> np.ndarray:
    """Event-weighted counts per item, each event decayed by its age relative to the newest event (of all parts)."""
    parts = history if isinstance(history, PartedHistory) else PartedHistory.of(history)
    total = np.zeros(parts.n_items, dtype=np.float64)
    if parts.ts_range is None:
        return total.astype(np.float32)
    newest = parts.ts_range[1]
    for part in parts:
        age_days = (newest - part.ts) / DAY
        w = part.event_weights(event_weights) * np.power(0.5, age_days / half_life_days)
        total += np.bincount(part.item, weights=w, minlength=parts.n_items)
    return total.astype(np.float32)


def popularity_prior(pop: np.ndarray) -> np.ndarray:
    """float32 ``pop`` scaled to at most 1e-6: below any real signal, so it only breaks ties and orders the rest."""
    return (1e-6 * pop / max(float(pop.max(initial=0.0)), 1e-9)).astype(np.float32)


class Popularity(Recommender):
    """Everyone gets the same list: the most popular items lately."""

    name = "popularity"
    sparse_scores = True

    def __init__(self, event_weights: dict[str, float] | None = None, half_life_days: float = 3.0):
        self.event_weights = event_weights or {}
        self.half_life_days = half_life_days

    def fit(self, history: Interactions, valid: Targets | None = None) -> Self:
        self.fit_parts(PartedHistory.of(history))._history = history
        return self

    def fit_parts(self, history: PartedHistory, valid: Targets | None = None) -> Self:
        self.item_scores_ = popularity_scores(history, self.event_weights, self.half_life_days)
        self._history = Interactions.empty(history.vocab)
        return self

    def with_parts(self, history: PartedHistory) -> Self:
        return self.fit_parts(history)

    def attach(self, part: Interactions) -> Self:
        """The same list for a part's users; their own history only decides what they have seen."""
        other = copy.copy(self)
        other._history = part
        return other

    def score(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.item_scores_, (len(users), len(self.item_scores_)))

    def candidate_scorer(self, exclude_seen: bool = True) -> Callable[[np.ndarray], UserScores]:
        """One order for everyone, sorted once; a user's list skips their seen items in it."""
        prior = Prior.of(np.array(self.item_scores_, dtype=np.float32))  # what every dense row holds

        def sparse(users: np.ndarray) -> UserScores:
            excluded = self.history.seen[users] if exclude_seen else None
            return PriorPlusSparse(sp.csr_matrix((len(users), len(prior.values)), dtype=np.float32), prior, excluded)

        return sparse

    def sequence_scorer(self) -> SequenceScorer:
        """The popular items for any sequence, its excluded ones skipped."""
        prior = Prior.of(np.array(self.item_scores_, dtype=np.float32))

        def sparse(items: np.ndarray, events: np.ndarray, exclude: np.ndarray | None) -> UserScores:
            n_items = len(prior.values)
            return PriorPlusSparse(sp.csr_matrix((1, n_items), dtype=np.float32), prior, excluded_row(exclude, n_items))

        return sparse

    def score_sequence(self, items: np.ndarray, events: np.ndarray) -> np.ndarray:
        """The same list for any sequence: the popular items."""
        return self.item_scores_


class CategoryPopularity(Recommender):
    """Popular items of the categories the user engages with: popularity within category x user affinity."""

    name = "category_popularity"

    def __init__(self, item_category: np.ndarray, event_weights: dict[str, float] | None = None,
                 half_life_days: float = 3.0):
        self.item_category = item_category  # category code per item code, -1 unknown
        self.event_weights = event_weights or {}
        self.half_life_days = half_life_days

    def fit(self, history: Interactions, valid: Targets | None = None) -> Self:
        return self.fit_parts(PartedHistory.of(history))._attach(history)

    def fit_parts(self, history: PartedHistory, valid: Targets | None = None) -> Self:
        """Item shares of their category from the whole history; user affinities come with ``attach``."""
        pop = popularity_scores(history, self.event_weights, self.half_life_days)
        cat = self.item_category
        n_cat = int(cat.max(initial=-1)) + 2  # last slot collects unknown categories
        cat_slot = np.where(cat >= 0, cat, n_cat - 1)
        cat_total = np.bincount(cat_slot, weights=pop, minlength=n_cat)
        self.item_share_ = (pop / np.maximum(cat_total[cat_slot], 1e-9)).astype(np.float32)
        self.cat_slot_, self.n_slots_ = cat_slot, n_cat
        self.prior_ = popularity_prior(pop)
        return self._attach(Interactions.empty(history.vocab))

    def with_parts(self, history: PartedHistory) -> Self:
        return self.fit_parts(history)

    def attach(self, part: Interactions) -> Self:
        return copy.copy(self)._attach(part)

    def _attach(self, part: Interactions) -> Self:
        self._history = part
        self.affinity_ = self._affinity(part.user, part.item, part.event, part.n_users)
        self.__dict__.pop("_sparse_ok", None)
        return self

    def _affinity(self, users: np.ndarray, items: np.ndarray, events: np.ndarray, n_users: int) -> sp.csr_matrix:
        """User x category-slot shares of the users' event weights (rows sum to 1, or 0 without known categories)."""
        n_cat = self.__dict__.get("n_slots_")  # as in fit: the last slot is "unknown"
        if n_cat is None:  # a model pickled before fit kept it: counted once (a pass over the catalogue)
            n_cat = self.n_slots_ = int(self.item_category.max(initial=-1)) + 2
        table = event_weight_table(self.event_weights)
        slot = self.cat_slot_[items]
        known = slot != n_cat - 1  # an unknown category says nothing about taste
        affinity = sp.csr_matrix((table[events][known], (users[known], slot[known])), shape=(n_users, n_cat))
        row_sum = np.asarray(affinity.sum(axis=1)).ravel()
        return (sp.diags(1.0 / np.maximum(row_sum, 1e-9)) @ affinity).tocsr().astype(np.float32)

    def _scores(self, affinity: sp.csr_matrix) -> np.ndarray:
        return affinity.toarray()[:, self.cat_slot_] * self.item_share_ + self.prior_

    def score(self, users: np.ndarray) -> np.ndarray:
        return self._scores(self.affinity_[users])

    @property
    def sparse_scores(self) -> bool:  # type: ignore[override]
        """Exact without dense rows when affinities, shares and priors are finite float32 >= 0 (an item then scores
        at least its prior, and more share means no less score); negative event weights fall back to dense rows."""
        ok = self.__dict__.get("_sparse_ok")
        if ok is None:  # checked once per fitted / attached state: at 4M items a check costs milliseconds
            parts = (self.affinity_.data, self.item_share_, self.prior_)
            ok = self._sparse_ok = all(p.dtype == np.float32 and np.isfinite(p).all() and not (p < 0).any()
                                       for p in parts)
        return ok

    def candidate_scorer(self, exclude_seen: bool = True) -> Callable[[np.ndarray], UserScores]:
        """Per category its items by share (sorted once), and the prior order for the items of other categories."""
        if not self.sparse_scores:
            return super().candidate_scorer(exclude_seen)
        index = self._index()

        def sparse(users: np.ndarray) -> UserScores:
            excluded = self.history.seen[users] if exclude_seen else None
            return CategoryScores(index, self.affinity_[users], excluded)

        return sparse

    def sequence_scorer(self) -> SequenceScorer:
        """The sequence's category affinities through ``CategoryScores``, as ``candidate_scorer`` scores a user
        (dense rows when the weights are not all >= 0)."""
        if not self.sparse_scores:
            return super().sequence_scorer()
        index, dense = self._index(), super().sequence_scorer()

        def sparse(items: np.ndarray, events: np.ndarray, exclude: np.ndarray | None) -> UserScores | None:
            affinity = self._sequence_affinity(items, events)
            if (affinity.data < 0).any():
                return dense(items, events, exclude)
            return CategoryScores(index, affinity, excluded_row(exclude, len(self.cat_slot_)))

        return sparse

    def score_sequence(self, items: np.ndarray, events: np.ndarray) -> np.ndarray:
        """Category shares of the sequence's own events, as for a fitted user with that history."""
        return self._scores(self._sequence_affinity(items, events))[0]

    def _sequence_affinity(self, items: np.ndarray, events: np.ndarray) -> sp.csr_matrix:
        items = np.asarray(items, dtype=np.int64)
        return self._affinity(np.zeros(len(items), dtype=np.int64), items, np.asarray(events), 1)

    def _index(self) -> CategoryIndex:
        """Each category's items by share and the prior's order, sorted once per fitted state (kept)."""
        n_slots, dtype = self.affinity_.shape[1], self.affinity_.dtype
        return prepared(f"category {n_slots} {dtype}", (self.cat_slot_, self.item_share_, self.prior_),
                        lambda: CategoryIndex(self.cat_slot_, self.item_share_, self.prior_, n_slots, dtype))


class CategoryIndex:
    """What category popularity's sparse top lists read, sorted once per use: each category's items by share (then
    prior, then code), the running bound on the prior past every position, and the order of the prior alone."""

    def __init__(self, slot: np.ndarray, share: np.ndarray, prior: np.ndarray, n_slots: int,
                 affinity_dtype: np.dtype):
        self.slot, self.share, self.prior = slot, share, prior
        n_items = len(slot)
        self.floor_order = item_order(self.values(np.zeros(n_items, dtype=affinity_dtype), np.arange(n_items)))
        # float32 >= 0 orders as its bits: one stable sort by (category, share descending), ties in code order
        share_bits = np.asarray(share, dtype=np.float32).view(np.uint32).astype(np.uint64)
        self.by_slot = np.argsort((slot.astype(np.uint64) << np.uint64(32)) | (np.uint64(0xFFFFFFFF) - share_bits),
                                  kind="stable")
        self.size = np.bincount(slot, minlength=n_slots)
        self.start = np.cumsum(self.size) - self.size
        # the largest prior from each position to the end of its category: a key whose category part decreases
        # along the array makes one running maximum (from the end) stay within each category
        prior_bits = np.asarray(prior, dtype=np.float32)[self.by_slot].view(np.uint32).astype(np.uint64)
        key = ((n_slots - slot[self.by_slot]).astype(np.uint64) << np.uint64(32)) | prior_bits
        after = np.maximum.accumulate(key[::-1])[::-1] & np.uint64(0xFFFFFFFF)
        self.prior_after = after.astype(np.uint32).view(np.float32).astype(prior.dtype)

    def values(self, affinity: np.ndarray, items: np.ndarray) -> np.ndarray:
        """float32 scores of items given the user's affinity to each one's category, as the dense rows compute them."""
        return (affinity * self.share[items] + self.prior[items]).astype(np.float32)

    def dense(self, affinity: sp.csr_matrix) -> np.ndarray:
        """The dense score rows of users with these affinities (``CategoryPopularity.score``)."""
        return affinity.toarray()[:, self.slot] * self.share + self.prior


class CategoryScores(UserScores):
    """Category popularity of a batch of users without dense rows.

    An item scores ``affinity[user, category] * share + prior``, at least its prior, so a user's best items lie in
    the heads of their categories (by share) and the head of the prior order. A category cut after its head is
    safe when its next share with the largest prior after it scores below the user's last listed item; users for
    whom that fails (ties at the cut) are listed again from their whole categories.
    """

    def __init__(self, index: CategoryIndex, affinity: sp.csr_matrix, excluded: sp.csr_matrix | None):
        self.index, self.excluded = index, excluded
        self.affinity = affinity if affinity.has_sorted_indices else affinity.sorted_indices()

    def top(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        n_rows, n_items = self.affinity.shape[0], len(self.index.slot)
        width = min(n, n_items)
        items, values, unsure = self._best(np.arange(n_rows), width, whole=False)
        if len(unsure):
            items[unsure], values[unsure], _ = self._best(unsure, width, whole=True)
        return items, values

    def _best(self, rows: np.ndarray, width: int, whole: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The best ``width`` items of the batch rows ``rows`` from the heads of their categories (the whole
        categories if ``whole``) and of the prior order, and the rows (of the batch) a cut category may beat."""
        index, n_items = self.index, len(self.index.slot)
        affinity = self.affinity[rows]
        excluded = distinct(csr_keys(self.excluded[rows])) if self.excluded is not None else np.zeros(0, dtype=np.int64)
        n_excluded = np.bincount(excluded // n_items, minlength=len(rows))
        a_row = np.repeat(np.arange(len(rows)), np.diff(affinity.indptr))
        liked = affinity.data > 0
        a_row, a_slot, a_value = a_row[liked], affinity.indices[liked], affinity.data[liked]
        size = index.size[a_slot]
        head = size if whole else np.minimum(width + self._excluded_in(excluded, a_row, a_slot), size)
        reach = np.minimum(width + n_excluded, n_items)
        if denser_than_sparse(int(head.sum() + reach.sum()), len(rows), n_items):
            dense = DenseScores(index.dense(affinity), self.excluded[rows] if self.excluded is not None else None)
            return *dense.top(width), rows[:0]
        cand_rows = np.concatenate([np.repeat(a_row, head), np.repeat(np.arange(len(rows)), reach)])
        cand_items = np.concatenate([index.by_slot[_ranges(index.start[a_slot], head)],
                                     index.floor_order[_ranges(np.zeros(len(rows), dtype=np.int64), reach)]])
        keys = distinct(pair_keys(cand_rows, cand_items, n_items))
        keys = keys[~contains(excluded, keys)]
        c_rows, c_items = keys // n_items, keys % n_items
        c_values = index.values(csr_lookup(affinity, c_rows, index.slot[c_items]), c_items)
        items, values = best_per_row(c_rows, c_items, c_values, len(rows), width)
        cut = head < size
        nxt = index.start[a_slot[cut]] + head[cut]
        bound = (a_value[cut] * index.share[index.by_slot[nxt]] + index.prior_after[nxt]).astype(np.float32)
        unsure = np.unique(a_row[cut][bound >= values[a_row[cut], width - 1]])
        return items, values, rows[unsure]

    def _excluded_in(self, excluded: np.ndarray, a_row: np.ndarray, a_slot: np.ndarray) -> np.ndarray:
        """How many of the ``excluded`` keys (row * items + item) lie in each (row, category slot): the head a
        category needs is ``width`` plus its own excluded items, not plus all of the user's (a user with a hundred
        seen items would otherwise read a hundred extra items of every category they like)."""
        n_items, n_slots = len(self.index.slot), int(self.index.size.shape[0])
        keys, counts = np.unique(pair_keys(excluded // n_items, self.index.slot[excluded % n_items], n_slots),
                                 return_counts=True)
        wanted = pair_keys(a_row, a_slot, n_slots)
        found = contains(keys, wanted)
        out = np.zeros(len(wanted), dtype=np.int64)
        out[found] = counts[np.searchsorted(keys, wanted[found])]
        return out

    def at(self, rows: np.ndarray, items: np.ndarray) -> np.ndarray:
        values = self.index.values(csr_lookup(self.affinity, rows, self.index.slot[items]), items)
        if self.excluded is not None:
            excluded = distinct(csr_keys(self.excluded))
            values[contains(excluded, pair_keys(rows, items, len(self.index.slot)))] = -np.inf
        return values


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The concatenated ranges [starts[i], starts[i] + lengths[i])."""
    return np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))
