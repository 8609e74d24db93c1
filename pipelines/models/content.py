"""Content similarity of items: what proposes a product nobody has interacted with yet.

Each item is a TF-IDF vector of its content tokens: its category, attributes and brand as whole tokens, and the
words of its title. Tokens are hashed (``HashingVectorizer``), so an item added after training with a category,
brand or word never seen before still gets a vector; inverse document frequencies come from the catalogue the
model was trained with, and an unseen token counts as the rarest. Cosine similarity over these vectors finds an
item's neighbours through an inverted index (token -> items), so a query touches only the items that share a
token with it, not the whole catalogue.

The trained catalogue is the ``base`` (fixed, indexed once); items added or updated later are the ``extra`` rows,
kept apart and small, so adding products does not rebuild the index.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer
from sklearn.preprocessing import normalize

from pipelines.models.base import contains

N_FEATURES = 1 << 20
CONTENT_FILE = "content.joblib"  # the index shipped in a model directory
WORD = re.compile(r"(?u)\b\w\w+\b")
CONTENT_COLUMNS = ("category_id", "attributes", "brand", "title")
DIRECT_MAX = 50_000  # candidate sets up to this size are scored by one sparse product instead of index walks
T = TypeVar("T")


def content_tokens(item: Mapping[str, Any]) -> list[str]:
    """An item's tokens: ``c:`` category, ``a:`` attributes, ``b:`` brand (whole values), ``t:`` title words."""
    tokens = []
    if _present(item.get("category_id")):
        tokens.append(f"c:{item['category_id']}")
    attributes = item.get("attributes")
    if attributes is not None and not isinstance(attributes, float):
        tokens.extend(f"a:{a}" for a in attributes)
    if _present(item.get("brand")):
        tokens.append(f"b:{item['brand']}")
    if _present(item.get("title")):
        tokens.extend(f"t:{w}" for w in WORD.findall(str(item["title"]).lower()))
    return tokens


def _as_tokens(tokens: list[str]) -> list[str]:
    """The hasher's analyzer: documents are token lists already (a named function, so the index pickles)."""
    return tokens


def explore_slots(k: int, share: float) -> int:
    """How many of a list's ``k`` slots go to new products: ``share`` of them, rounded half up."""
    return min(k, int(share * k + 0.5)) if share > 0 else 0


def explore_positions(length: int, n: int) -> list[int]:
    """0-based ranks of ``n`` exploration items in a list of ``length``, spread evenly (none at the top), in the
    order they are inserted into the list of the other items."""
    return [int((j + 1) * length / (n + 1)) for j in range(n)]


def closest_new(content: ContentIndex, recents: Sequence[np.ndarray], new_items: np.ndarray,
                k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The exploration candidates of a list of ``k`` for each of ``recents`` (a user's or session's recent item
    codes): the new items closest in content to those items together, best first with their cosine, never one of
    them. Serving (one row) and the evaluation's new-item slice (a batch of users) both take their exploration
    items from here."""
    return content.neighbours_many(content.profiles(recents), 4 * k + 50, among=new_items, excludes=recents)


def interleave(rows: list[T], fresh: list[T]) -> list[T]:
    """``rows`` with the exploration items ``fresh`` inserted at their ``explore_positions``."""
    out = list(rows)
    for position, row in zip(explore_positions(len(out) + len(fresh), len(fresh)), fresh, strict=True):
        out.insert(position, row)
    return out


def explore_list(plain: np.ndarray, candidates: np.ndarray, k: int, share: float) -> np.ndarray:
    """A list of ``k`` as the API serves it with exploration: ``explore_slots(k, share)`` of the ``candidates``
    (from ``closest_new``) at their positions among the first items of ``plain`` (a model's list, -1 padded)
    that are not one of them; -1 padded to ``k``."""
    fresh = [int(i) for i in candidates[: explore_slots(k, share)]]
    rows = [int(i) for i in plain if i >= 0 and int(i) not in fresh][: k - len(fresh)]
    listed = interleave(rows, fresh)
    return np.array(listed + [-1] * (k - len(listed)), dtype=np.int64)


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and np.isnan(value)) and str(value) != ""


WALK_POSTINGS = 50_000  # postings of q's rarest tokens walked before the bound may stop the walk


class ContentIndex:
    """Cosine neighbours of items by content; ``ContentIndex.fit(catalogue)``, then ``add`` new or changed items."""

    def __init__(self, hasher: HashingVectorizer, idf: TfidfTransformer, base: sp.csr_matrix):
        self.hasher, self.idf = hasher, idf
        self.base = base  # (n_base, N_FEATURES) l2-normalised rows of the trained catalogue, in code order
        self.base_index = base.T.tocsr()  # token -> base items, the inverted index queries walk
        self.extra = sp.csr_matrix((0, N_FEATURES), dtype=np.float32)
        self.extra_codes = np.zeros(0, dtype=np.int64)  # the item code of each extra row

    @classmethod
    def fit(cls, catalogue: pd.DataFrame) -> ContentIndex:
        """The index of a catalogue with any of ``CONTENT_COLUMNS`` (row i is item code i)."""
        hasher = HashingVectorizer(n_features=N_FEATURES, analyzer=_as_tokens, alternate_sign=False,
                                   norm=None, dtype=np.float32)
        counts = hasher.transform(_token_lists(catalogue))
        idf = TfidfTransformer(sublinear_tf=True).fit(counts)
        return cls(hasher, idf, cls._weigh(idf, counts))

    @staticmethod
    def _weigh(idf: TfidfTransformer, counts: sp.csr_matrix) -> sp.csr_matrix:
        return normalize(idf.transform(counts), copy=False).astype(np.float32).tocsr()

    def vectors(self, items: Sequence[Mapping[str, Any]]) -> sp.csr_matrix:
        """l2-normalised TF-IDF rows of items given as mappings of their content fields."""
        return self._weigh(self.idf, self.hasher.transform([content_tokens(item) for item in items]))

    def add(self, codes: np.ndarray, items: Sequence[Mapping[str, Any]]) -> None:
        """Set the content of items ``codes`` (new codes, or trained items whose content changed)."""
        codes = np.asarray(codes, dtype=np.int64)
        keep = ~np.isin(self.extra_codes, codes)
        self.extra = sp.vstack([self.extra[keep], self.vectors(items)], format="csr")
        self.extra_codes = np.r_[self.extra_codes[keep], codes]
        self.__dict__.pop("_among_rows", None)  # gathered before these rows changed

    def neighbours(self, query: sp.csr_matrix, k: int, among: np.ndarray | None = None,
                   exclude: Iterable[int] = ()) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` item codes most similar to ``query`` (one row, or several rows that are summed) with their
        cosine, best first, lower code first on ties; only codes in ``among`` (sorted, distinct) when given, never
        ``exclude``. ``among`` is searched, not scanned: in a large catalogue most items may be new (millions)."""
        q = sp.csr_matrix(query.sum(axis=0), dtype=np.float32) if query.shape[0] != 1 else query
        return self.neighbours_many(q, k, among, [np.fromiter(exclude, dtype=np.int64)])[0]

    def neighbours_many(self, queries: sp.csr_matrix, k: int, among: np.ndarray | None,
                        excludes: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """``neighbours`` of each row of ``queries`` (never its ``excludes`` row). Up to ``DIRECT_MAX`` codes in
        ``among`` are scored for every query by one sparse product (their rows are gathered once per ``among``);
        otherwise each query walks the inverted index."""
        if among is not None:
            among = np.asarray(among, dtype=np.int64)
        out = []
        if among is not None and len(among) <= DIRECT_MAX:
            product = (queries @ self._rows_of(among).T).tocsr()
            for row, exclude in enumerate(excludes):
                cells = slice(product.indptr[row], product.indptr[row + 1])
                values = product.data[cells].astype(np.float32)
                hit = values > 0
                out.append(self._best(among[product.indices[cells]][hit], values[hit], among, exclude, k))
            return out
        for row, exclude in enumerate(excludes):
            codes, values = self._walk(queries[row], among, k + len(exclude))
            out.append(self._best(codes, values, among, exclude, k))
        return out

    @staticmethod
    def _best(codes: np.ndarray, values: np.ndarray, among: np.ndarray | None, exclude: np.ndarray,
              k: int) -> tuple[np.ndarray, np.ndarray]:
        """The top ``k`` of scored ``codes`` by value (lower code first on ties), in ``among``, not in ``exclude``."""
        keep = ~np.isin(codes, exclude)
        if among is not None:
            keep &= contains(among, codes)
        codes, values = codes[keep], values[keep]
        order = np.lexsort((codes, -values))[:k]
        return codes[order], values[order]

    def _rows_of(self, among: np.ndarray) -> sp.csr_matrix:
        """``item_vectors(among)``, kept for the last ``among`` asked (evaluation and serving ask the same set of new
        items for every user until the catalogue changes)."""
        kept = self.__dict__.get("_among_rows")
        if kept is None or kept[0] is not among:
            kept = self._among_rows = (among, self.item_vectors(among))
        return kept[1]

    def profiles(self, recents: Sequence[np.ndarray]) -> sp.csr_matrix:
        """One content row per item list: the sum of its items' rows (the query of ``closest_new``)."""
        codes = np.concatenate([np.asarray(r, dtype=np.int64) for r in recents]) if len(recents) else np.zeros(0,
                                                                                                              np.int64)
        lengths = np.array([len(r) for r in recents], dtype=np.int64)
        owner = sp.csr_matrix((np.ones(len(codes), dtype=np.float32), np.arange(len(codes)),
                               np.r_[0, np.cumsum(lengths)]), shape=(len(recents), len(codes)))
        return (owner @ self.item_vectors(codes)).tocsr()

    def _walk(self, q: sp.csr_matrix, among: np.ndarray | None, need: int) -> tuple[np.ndarray, np.ndarray]:
        """Items sharing a token with ``q`` and their cosine, through the inverted index and the extra rows: every
        such item, or (``_rare_walk``) a subset that surely holds the ``need`` best of ``among``."""
        if among is None or (len(among) and among[0] < self.base.shape[0]):
            base_codes, base_values = self._rare_walk(q, among, need)
        else:  # only added products asked for: the trained catalogue's index is not walked
            base_codes, base_values = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        unchanged = ~np.isin(base_codes, self.extra_codes)  # a changed item answers with its extra row
        extra = (self.extra @ q.T).toarray().ravel() if len(self.extra_codes) else np.zeros(0, np.float32)
        hit = extra > 0
        codes = np.r_[base_codes[unchanged].astype(np.int64), self.extra_codes[hit]]
        return codes, np.r_[base_values[unchanged], extra[hit]].astype(np.float32)

    def _rare_walk(self, q: sp.csr_matrix, among: np.ndarray | None, need: int) -> tuple[np.ndarray, np.ndarray]:
        """Base items sharing a token with ``q`` and their cosine, walking q's rarest tokens first.

        A token every item has (a catalogue-wide attribute) makes a full walk touch the whole catalogue: 0.8 s per
        query at 4M items. So the rare tokens are walked first (up to ``WALK_POSTINGS`` postings) and their items
        scored exactly; an item reached by none of them scores at most what the other tokens can add (q's weight
        times the token's largest weight in any item), so when the ``need``-th best found (of ``among``) beats that
        bound, the found items hold the top ``need`` and the walk stops. Otherwise every token is walked.
        """
        index = self.base_index
        tokens, weights = q.indices, q.data
        postings = np.diff(index.indptr)[tokens]
        order = np.argsort(postings, kind="stable")
        tokens, weights, postings = tokens[order], weights[order], postings[order]
        walked = int(np.searchsorted(np.cumsum(postings), WALK_POSTINGS, side="right"))
        if 0 < walked < len(tokens):
            bound = float(np.sum(weights[walked:] * self._token_max()[tokens[walked:]]))
            found = np.unique(np.concatenate([index.indices[index.indptr[t]: index.indptr[t + 1]]
                                              for t in tokens[:walked]])).astype(np.int64)
            if among is not None:
                found = found[contains(among, found)]
            if len(found) >= need:
                values = (self.base[found] @ q.T).toarray().ravel().astype(np.float32)
                if np.partition(values, len(values) - need)[len(values) - need] > bound:
                    return found, values
        base = (q @ index).tocsr()
        return base.indices.astype(np.int64), base.data

    def _token_max(self) -> np.ndarray:
        """float32 per token: its largest weight in any base item (0 for tokens no item has); built once."""
        kept = self.__dict__.get("_token_maxima")
        if kept is None:
            index = self.base_index
            kept = np.zeros(index.shape[0], dtype=np.float32)
            rows = np.flatnonzero(np.diff(index.indptr))
            if len(rows):
                kept[rows] = np.maximum.reduceat(index.data, index.indptr[rows])
            self._token_maxima = kept
        return kept

    def item_vectors(self, codes: np.ndarray) -> sp.csr_matrix:
        """The current content rows of item ``codes`` (extra rows override base rows; unknown codes are empty)."""
        codes = np.asarray(codes, dtype=np.int64)
        order = np.argsort(self.extra_codes, kind="stable")
        in_extra = contains(self.extra_codes[order], codes)
        in_base = ~in_extra & (codes >= 0) & (codes < self.base.shape[0])
        extra_rows = order[np.searchsorted(self.extra_codes[order], codes[in_extra])]
        rows = sp.vstack([self.base[codes[in_base]], self.extra[extra_rows],
                          sp.csr_matrix((int((~in_base & ~in_extra).sum()), N_FEATURES), dtype=np.float32)],
                         format="csr")
        position = np.empty(len(codes), dtype=np.int64)  # row of each code in ``rows``
        for mask, start in ((in_base, 0), (in_extra, int(in_base.sum())),
                            (~in_base & ~in_extra, int(in_base.sum() + in_extra.sum()))):
            position[mask] = start + np.arange(int(mask.sum()))
        return rows[position]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_among_rows", None)
        return state


def _token_lists(catalogue: pd.DataFrame) -> list[list[str]]:
    """``content_tokens`` of every row, reading only the content columns the catalogue has."""
    columns = [c for c in CONTENT_COLUMNS if c in catalogue]
    return [content_tokens(dict(zip(columns, row, strict=True)))
            for row in catalogue[columns].itertuples(index=False, name=None)]
