"""Features of (user, candidate) pairs for the learned rankers, computed from a history only.

All features are relative to the history they are given (never to targets) and carry no dataset-specific
constants: time windows are quantiles of the history's own time span.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp
from numba import njit

from pipelines.data.schema import EVENT_TYPES
from pipelines.features.interactions import Interactions, PartedHistory, Vocab

if TYPE_CHECKING:  # models import these features (item_to_item): a runtime import would be circular
    from pipelines.models.candidates import Candidates

MAX_ATTRIBUTES = 16  # per item; more are truncated (keeps the gather table small)
RECENT_ITEMS = 10  # the user's recent items whose attributes form the user's taste profile


@dataclass
class ItemInfo:
    """Per item code: category code (-1 unknown) and up to MAX_ATTRIBUTES attribute codes (-1 padding)."""

    category: np.ndarray
    attributes: np.ndarray
    n_categories: int
    n_attributes: int

    @classmethod
    def build(cls, vocab: Vocab, items: pd.DataFrame | None, category: pd.Series) -> ItemInfo:
        """``category``: the category id of each item code (NaN unknown), as the features stage found it."""
        n = vocab.n_items
        table = np.full((n, MAX_ATTRIBUTES), -1, dtype=np.int64)
        codes = pd.Categorical([])
        if items is not None and "attributes" in items:
            present = items.set_index("item_id")["attributes"].dropna()
            item_codes = vocab.item_codes(present.index)
            listed = [list(a)[:MAX_ATTRIBUTES] for a in present[item_codes >= 0]]
            lengths = np.array([len(a) for a in listed], dtype=np.int64)
            codes = pd.Categorical([a for row in listed for a in row])
            rows = np.repeat(item_codes[item_codes >= 0], lengths)
            cols = np.concatenate([np.arange(k) for k in lengths]) if lengths.sum() else np.array([], dtype=int)
            table[rows, cols] = codes.codes
        cats = pd.Categorical(np.asarray(category, dtype=object))
        return cls(category=np.asarray(cats.codes, dtype=np.int64), attributes=table,
                   n_categories=len(cats.categories), n_attributes=len(codes.categories))


def item_categories(item_ids: np.ndarray, items: pd.DataFrame | None, events: pd.DataFrame) -> pd.Series:
    """The category of each of ``item_ids`` (NaN unknown): the catalogue's, else that of the item's latest event.

    An item that moved category is shown under the new one, so the latest event (by ``ts``) wins. The ranking
    features (``ItemInfo``) and the model's catalogue for serving filters both take categories from here.
    """
    category = latest_categories(events)["category_id"]
    if items is not None:
        category = items.set_index("item_id")["category_id"].dropna().combine_first(category)
    return category.reindex(item_ids)


def latest_categories(events: pd.DataFrame) -> pd.DataFrame:
    """Per ``item_id`` of ``events``: the category of its latest event with one (later rows win ties) and its ``ts``.

    Also the partial result of one part of a data set: the latest of the parts' latest is the data set's.
    """
    latest = events.dropna(subset=["category_id"]).sort_values("ts", kind="stable")
    return latest.drop_duplicates("item_id", keep="last").set_index("item_id")[["category_id", "ts"]]


def pair_values(matrix: sp.csr_matrix, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """matrix[rows[i], cols[i]] for many pairs, as a dense float32 vector (negative codes give 0)."""
    ok = (rows >= 0) & (cols >= 0)
    out = np.zeros(len(rows), dtype=np.float32)
    if ok.any():
        out[ok] = np.asarray(matrix[rows[ok], cols[ok]]).ravel()
    return out


def item_popularity(history: PartedHistory) -> dict[str, np.ndarray]:
    """Log counts per item: overall, per event type, and in the latest 10% / 1% of the history's time span.

    Counts add up over parts, and the windows are those of the whole history, so parts give the whole's features.
    """
    n, span = history.n_items, history.ts_range
    counts: dict[str, np.ndarray] = {}
    for part in history:
        windows = {"item_pop_all": np.ones(len(part), dtype=bool)}
        if span is not None:
            lo, hi = span
            for share in (0.1, 0.01):
                windows[f"item_pop_last{int(share * 100)}pct"] = part.ts >= hi - share * (hi - lo)
        for code, name in enumerate(EVENT_TYPES[1:], start=1):
            windows[f"item_{name}s"] = part.event == code
        for name, keep in windows.items():
            counts[name] = counts.get(name, 0) + np.bincount(part.item[keep], minlength=n)
    return {k: np.log1p(v).astype(np.float32) for k, v in counts.items()}


class _Profiles:
    """Per-user summaries of one history that the per-candidate features look up (built once per history)."""

    def __init__(self, history: Interactions, info: ItemInfo, steps: np.ndarray):
        cat = info.category[history.item]
        known = cat >= 0
        shape = (history.n_users, max(info.n_categories, 1))
        self.user_events = np.maximum(np.bincount(history.user, minlength=history.n_users), 1)
        self.category_counts = {}
        for code, name in [(None, "all"), *enumerate(EVENT_TYPES)]:
            sel = known if code is None else known & (history.event == code)
            self.category_counts[name] = sp.csr_matrix(
                (np.ones(sel.sum(), np.float32), (history.user[sel], cat[sel])), shape=shape)
        self.category_latest = _latest(history.user[known], cat[known], steps[known])
        self.item_latest = _latest(history.user, history.item, steps)
        recent = steps < RECENT_ITEMS
        attrs = info.attributes[history.item[recent]]  # (n_recent, MAX_ATTRIBUTES)
        users, flat = np.repeat(history.user[recent], attrs.shape[1]), attrs.ravel()
        ok = flat >= 0
        n_attr = max(info.n_attributes, 1)
        profile = sp.csr_matrix((np.ones(ok.sum(), np.float32), (users[ok], flat[ok])), shape=(history.n_users, n_attr))
        self.attributes: np.ndarray | sp.csr_matrix = (
            profile.toarray() if history.n_users * n_attr <= 50_000_000 else profile)
        self.n_recent = np.maximum(np.bincount(history.user[recent], minlength=history.n_users), 1)
        self.last_item = np.full(history.n_users, -1, dtype=np.int64)
        newest = steps == 0
        self.last_item[history.user[newest]] = history.item[newest]


def _latest(users: np.ndarray, keys: np.ndarray, steps: np.ndarray) -> pd.Series:
    """Fewest steps back at which each (user, key) pair of the history occurred."""
    return pd.DataFrame({"u": users, "k": keys, "s": steps}).groupby(["u", "k"])["s"].min()


def _steps_since(latest: pd.Series, q_users: np.ndarray, q_keys: np.ndarray) -> np.ndarray:
    """``latest`` looked up for many (user, key) pairs; NaN where the user never touched the key."""
    return latest.reindex(pd.MultiIndex.from_arrays([q_users, q_keys])).to_numpy(dtype=np.float32)


def _category_features(p: _Profiles, info: ItemInfo, cands: Candidates) -> dict:
    """User x category affinity by event type, and how many steps ago the user touched the category/item."""
    cand_cat = info.category[cands.item]
    out = {f"user_cat_share_{name}": pair_values(m, cands.user, cand_cat) / p.user_events[cands.user]
           for name, m in p.category_counts.items()}
    out["steps_since_category"] = _steps_since(p.category_latest, cands.user, cand_cat)
    out["steps_since_item"] = _steps_since(p.item_latest, cands.user, cands.item)
    return out


def _attribute_features(p: _Profiles, info: ItemInfo, cands: Candidates) -> dict:
    """Overlap of the candidate's attributes with the user's recent items and with the last item."""
    last = p.last_item[cands.user]
    has_last = last >= 0
    cand_cat = info.category[cands.item]
    same_category = ((cand_cat >= 0) & (cand_cat == info.category[np.maximum(last, 0)]) & has_last).astype(np.float32)
    if info.n_attributes == 0:  # a catalogue without attributes (e.g. Taobao): no overlap, nothing to gather
        zero = np.zeros(len(cands.item), dtype=np.float32)
        return {"attr_overlap_recent": zero, "attr_any_recent": zero, "attr_shared_with_last": zero,
                "same_category_as_last": same_category}
    cand_attrs = info.attributes[cands.item]
    valid = cand_attrs >= 0
    n_valid = np.maximum(valid.sum(axis=1), 1)
    if isinstance(p.attributes, np.ndarray):
        gathered = np.where(valid, p.attributes[cands.user[:, None], np.maximum(cand_attrs, 0)], 0.0)
    else:
        gathered = np.stack([pair_values(p.attributes, cands.user, cand_attrs[:, j])
                             for j in range(cand_attrs.shape[1])], 1)
    shared_last = _shared_counts(cand_attrs, info.attributes[np.maximum(last, 0)], has_last)
    return {
        "attr_overlap_recent": (gathered.sum(axis=1) / (n_valid * p.n_recent[cands.user])).astype(np.float32),
        "attr_any_recent": (gathered > 0).sum(axis=1).astype(np.float32) / n_valid,
        "attr_shared_with_last": shared_last.astype(np.float32) / n_valid,
        "same_category_as_last": same_category,
    }


@njit(cache=True, nogil=True)
def _shared_counts(cand_attrs: np.ndarray, last_attrs: np.ndarray, has_last: np.ndarray) -> np.ndarray:
    """Per row: how many of the candidate's attributes (-1: none) the last item also has (0 without a last item).

    A loop per row: the vectorised (rows x 16 x 16) comparison was ~20x slower and most of the features' time.
    """
    out = np.zeros(cand_attrs.shape[0], dtype=np.int64)
    for row in range(cand_attrs.shape[0]):
        if not has_last[row]:
            continue
        for a in cand_attrs[row]:
            if a >= 0:
                for b in last_attrs[row]:
                    if a == b:
                        out[row] += 1
                        break
    return out


@njit(cache=True, nogil=True)
def _ranks_in_groups(values: np.ndarray, starts: np.ndarray, group: np.ndarray) -> np.ndarray:
    """float32 rank of each value within its user's group, highest first, ties in row order (a sort per group:
    one lexsort of every row was most of the source features' time)."""
    rank = np.empty(len(values), dtype=np.float32)
    for g in range(len(group)):
        begin = starts[g]
        order = np.argsort(-values[begin: begin + group[g]], kind="mergesort")
        for position in range(len(order)):
            rank[begin + order[position]] = position
    return rank


def _source_features(cands: Candidates) -> dict[str, np.ndarray]:
    """Each source's score, score relative to the user's best candidate, rank among candidates, proposal flag."""
    out = {}
    starts = np.r_[0, np.cumsum(cands.group)[:-1]]
    row_user = np.repeat(np.arange(len(cands.group)), cands.group)
    for name, score in cands.scores.items():
        s = np.where(np.isfinite(score), score, np.nan).astype(np.float32)
        filled = np.nan_to_num(s, nan=-np.inf)
        user_max = np.maximum.reduceat(filled, starts) if len(filled) else filled
        user_max = np.where(np.isfinite(user_max), user_max, np.nan)
        out[f"{name}_score"] = s
        out[f"{name}_score_rel"] = (s / np.where(np.abs(user_max) > 0, user_max, np.nan)[row_user]).astype(np.float32)
        out[f"{name}_rank"] = _ranks_in_groups(filled, starts, cands.group)
        out[f"{name}_proposed"] = cands.proposed[name].astype(np.float32)
    out["n_sources_proposing"] = np.sum([p for p in cands.proposed.values()], axis=0).astype(np.float32)
    return out


class FeatureContext:
    """Everything about one history that features need, computed once and reused for every user batch."""

    def __init__(self, history: Interactions, info: ItemInfo, popularity: dict[str, np.ndarray] | None = None):
        """``popularity``: the item features of the whole history when ``history`` is one part of it."""
        self.info = info
        self.steps, self.counts = history.steps_back, np.diff(history.user_bounds)
        self.popularity = item_popularity(PartedHistory.of(history)) if popularity is None else popularity
        self.distinct = np.asarray((history.seen > 0).sum(axis=1)).ravel()
        self.profiles = _Profiles(history, info, self.steps)

    def features(self, cands: Candidates) -> tuple[np.ndarray, list[str]]:
        """The (n_rows, n_features) float32 matrix for ``cands`` and the feature names, NaN for missing."""
        feats = _source_features(cands)
        feats |= {name: values[cands.item] for name, values in self.popularity.items()}
        feats["user_events"] = np.log1p(self.counts[cands.user]).astype(np.float32)
        feats["user_distinct_items"] = np.log1p(self.distinct[cands.user]).astype(np.float32)
        feats |= _category_features(self.profiles, self.info, cands)
        feats |= _attribute_features(self.profiles, self.info, cands)
        names = list(feats)
        X = np.empty((len(cands.item), len(names)), dtype=np.float32, order="F")  # column writes stay contiguous:
        for j, name in enumerate(names):  # ~15x faster than column_stack's strided ones
            X[:, j] = feats[name]
        return np.ascontiguousarray(X), names
