"""Top-k item retrieval by inner product: exact for small catalogues, an inverted-file (IVF) index for large ones.

A 4M-item catalogue scored exactly costs ~45 ms per query on one core (a 4M x 64 matrix-vector product and a
selection), over serving's 30 ms budget; faiss's ``IndexIVFFlat`` scans only the ``n_probe`` clusters nearest to the
query, in a few ms. IVF won the measurement against HNSW (faiss and usearch) on clustered vectors: the same recall at
half the latency or less, a build of seconds instead of minutes, deterministic, and new vectors are added without a
rebuild (docs/BENCHMARKS.md, "Vector index (ANN)"). Below ``exact_below`` items the index stays exact: a matrix
product is fast there and recall is 1.

Item codes are int64 and need not be dense: ``build`` numbers its rows 0..n-1 and ``add`` appends any new codes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Self

import faiss
import numpy as np

from pipelines.models.base import CELL_BUDGET, best_per_row, top_k

EXACT_BELOW = 50_000
QUERY_ROWS = 1024  # queries per step: bounds the score matrix, and keeps best_per_row's one-sort key in 64 bits
MIN_POINTS_PER_LIST = 39  # faiss warns (and k-means is poor) below 39 training points per centroid
BLOCK_VECTORS = 1 << 18  # stored vectors per exact pass over an IVF index (64 MB at 64 dimensions)
# k-means sample per list (faiss's default is 256): on 1M clustered vectors 64 builds in 40 s instead of 110 s for
# recall@100 0.973 instead of 0.978 at the default n_probe; the build runs at every training
TRAIN_POINTS_PER_LIST = 64


def default_lists(n: int) -> int:
    """Number of IVF lists: the power of two nearest 4 sqrt(n) (the usual rule), with 39+ vectors per list."""
    lists = 2 ** max(0, round(math.log2(4 * math.sqrt(max(n, 1)))))
    while lists > 1 and lists * MIN_POINTS_PER_LIST > n:
        lists //= 2
    return lists


class VectorIndex:
    """Item vectors searchable for the k largest inner products with a query, exact or approximate (IVF)."""

    def __init__(self, dim: int, codes: np.ndarray, vectors: np.ndarray | None, ivf: Any | None, n_probe: int):
        self.dim = dim
        self._codes = codes  # every stored code, in insertion order (ANN: only for the duplicate check)
        self._vectors = vectors  # exact mode: (n, dim) float32 rows of _codes; ANN mode: None (faiss holds them)
        self._ivf = ivf
        self._n_probe = n_probe

    @classmethod
    def build(cls, vectors: np.ndarray, exact_below: int = EXACT_BELOW, seed: int = 0, n_lists: int | None = None,
              n_probe: int | None = None) -> Self:
        """Index rows of ``vectors`` as codes 0..n-1: exact when n < ``exact_below``, IVF otherwise.

        The same vectors and seed give the same index (faiss's k-means is seeded and its result does not depend on
        the number of threads). ``n_probe`` defaults to 1/16 of the lists: recall@100 ~0.96 on 1M clustered vectors;
        ``tune`` fits it to real queries.
        """
        vectors = _matrix(vectors)
        n, dim = vectors.shape
        codes = np.arange(n, dtype=np.int64)
        if n < exact_below:
            return cls(dim, codes, vectors.copy(), None, 0)
        if n == 0:
            raise ValueError("an approximate index needs at least one vector")
        n_lists = n_lists or default_lists(n)
        quantizer = faiss.IndexFlatIP(dim)
        ivf = faiss.IndexIVFFlat(quantizer, dim, n_lists, faiss.METRIC_INNER_PRODUCT)
        ivf.own_fields = True  # the index frees its quantizer, also after a round trip through bytes
        quantizer.this.disown()
        ivf.cp.seed = seed
        ivf.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST
        ivf.train(vectors)
        ivf.add_with_ids(vectors, codes)
        return cls(dim, codes, None, ivf, n_probe or max(1, n_lists // 16))

    @property
    def exact(self) -> bool:
        return self._ivf is None

    def __len__(self) -> int:
        return len(self._codes)

    @property
    def n_lists(self) -> int:
        """IVF lists (k-means clusters) the vectors are filed under (0 in exact mode)."""
        return 0 if self.exact else int(self._ivf.nlist)

    @property
    def n_probe(self) -> int:
        """IVF lists scanned per query: recall and latency both grow with it (0 in exact mode)."""
        return self._n_probe

    @n_probe.setter
    def n_probe(self, value: int) -> None:
        if not self.exact:
            self._n_probe = int(min(max(1, value), self.n_lists))

    def search(self, queries: np.ndarray, k: int,
               exclude: Sequence[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(m, k) item codes (int64, -1 padded) and scores (float32, -inf padded) of each query's best k, best first.

        Ties go to the lower code. ``exclude[i]`` holds codes row i must not return (items already bought); the search
        over-fetches by the longest of them, so k items remain whenever the catalogue has them.
        """
        queries = _matrix(queries, self.dim)
        if self.exact:
            codes, vectors = self._codes, self._vectors
            return _best(queries, k, exclude, lambda q, width: _block_top(q, width, codes, vectors),
                         len(self), _score_rows(len(self)))
        return _best(queries, k, exclude, self._ann_candidates, len(self), QUERY_ROWS)

    def add(self, codes: np.ndarray, vectors: np.ndarray) -> None:
        """Store vectors of new items (added to the catalogue after training) under new codes.

        An IVF index files each one under its nearest list without retraining; while the new items are few their
        distribution does not matter, and the next training rebuilds the lists anyway.
        """
        codes = np.asarray(codes, dtype=np.int64).ravel()
        vectors = _matrix(vectors, self.dim)
        if len(codes) != len(vectors):
            raise ValueError(f"{len(codes)} codes for {len(vectors)} vectors")
        if codes.min(initial=0) < 0:
            raise ValueError("item codes must be non-negative (-1 pads the lists)")
        if len(np.unique(codes)) != len(codes) or np.isin(codes, self._codes).any():
            raise ValueError("codes must be new and distinct: an item's vector is stored once")
        if self.exact:
            self._vectors = np.concatenate([self._vectors, vectors])
        else:
            self._ivf.add_with_ids(vectors, codes)
        self._codes = np.concatenate([self._codes, codes])

    def recall(self, queries: np.ndarray, k: int) -> float:
        """Mean share of each query's exact top k (by the same vectors) that ``search`` returns: 1.0 when exact."""
        queries = _matrix(queries, self.dim)
        if self.exact or len(queries) == 0:
            return 1.0
        return overlap(self.search(queries, k)[0], self._exact(queries, k)[0])

    def tune(self, queries: np.ndarray, k: int, target: float = 0.95) -> float:
        """Set ``n_probe`` to the smallest power of two whose recall@k on ``queries`` reaches ``target``; its recall.

        For training, with held-out users' query vectors: the recall to record, and the cheapest setting giving it.
        The exact lists are computed once; each probe count then costs one approximate search.
        """
        queries = _matrix(queries, self.dim)
        if self.exact or len(queries) == 0:
            return 1.0
        truth = self._exact(queries, k)[0]
        probe = 1
        while True:
            self.n_probe = probe
            value = overlap(self.search(queries, k)[0], truth)
            if value >= target or probe >= self.n_lists:
                return value
            probe *= 2

    def _ann_candidates(self, queries: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        scores, items = self._ivf.search(queries, width, params=faiss.SearchParametersIVF(nprobe=self._n_probe))
        rows = np.broadcast_to(np.arange(len(queries))[:, None], items.shape)
        keep = items >= 0
        return rows[keep], items[keep], scores[keep]

    def _exact(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top k over the stored vectors: ``search`` itself in exact mode, the IVF lists scanned in full else."""
        if self.exact:
            return self.search(queries, k)

        def candidates(chunk: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            parts = []
            for codes, vectors in self._blocks():
                step = _score_rows(len(codes))
                for start in range(0, len(chunk), step):
                    rows, found, values = _block_top(chunk[start:start + step], width, codes, vectors)
                    parts.append((rows + start, found, values))
            return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))  # type: ignore[return-value]

        return _best(queries, k, None, candidates, len(self), QUERY_ROWS)

    def _blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(codes, vectors) copies of the IVF lists, a group of lists (~256k vectors) at a time."""
        lists = self._ivf.invlists
        group: list[tuple[np.ndarray, np.ndarray]] = []
        size = 0
        for number in range(lists.nlist):
            count = lists.list_size(number)
            if count:
                ids = faiss.rev_swig_ptr(lists.get_ids(number), count)
                raw = faiss.rev_swig_ptr(lists.get_codes(number), count * self.dim * 4)
                group.append((ids, raw.view(np.float32).reshape(count, self.dim)))
                size += count
            if group and (size >= BLOCK_VECTORS or number == lists.nlist - 1):
                yield np.concatenate([g[0] for g in group]), np.concatenate([g[1] for g in group])
                group, size = [], 0

    # -- pickling: the models are saved with joblib -----------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        ivf = None if self.exact else faiss.serialize_index(self._ivf)  # uint8 array: joblib stores it as is
        return {"dim": self.dim, "codes": self._codes, "vectors": self._vectors, "ivf": ivf, "n_probe": self._n_probe}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.dim, self._codes, self._vectors = state["dim"], state["codes"], state["vectors"]
        self._ivf = None if state["ivf"] is None else faiss.deserialize_index(state["ivf"])
        self._n_probe = state["n_probe"]


def overlap(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over rows of the share of ``truth``'s codes (-1 padding aside) that ``found`` holds: recall@k."""
    shares = [np.intersect1d(f[f >= 0], t[t >= 0]).size / max(1, int((t >= 0).sum()))
              for f, t in zip(found, truth, strict=True)]
    return float(np.mean(shares)) if shares else 1.0


def _matrix(values: np.ndarray, dim: int | None = None) -> np.ndarray:
    """C-contiguous float32 (n, d): the layout faiss and the matrix products take without another copy."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if values.ndim != 2 or (dim is not None and values.shape[1] != dim):
        raise ValueError(f"expected an (n, {dim or 'd'}) matrix, got shape {values.shape}")
    return values


def _score_rows(n: int) -> int:
    """Queries per matrix product against n vectors: the (rows, n) float32 scores stay within CELL_BUDGET."""
    return max(1, min(QUERY_ROWS, CELL_BUDGET // max(1, n)))


def _best(queries: np.ndarray, k: int, exclude: Sequence[np.ndarray] | None, candidates: Any, n: int,
          step: int) -> tuple[np.ndarray, np.ndarray]:
    """Best k per query among ``candidates(chunk, width) -> (rows, codes, scores)``, excluded codes left out."""
    m = len(queries)
    if exclude is not None and len(exclude) != m:
        raise ValueError(f"exclude has {len(exclude)} rows for {m} queries")
    k = max(k, 0)
    if k == 0 or m == 0 or n == 0:
        return np.full((m, k), -1, dtype=np.int64), np.full((m, k), -np.inf, dtype=np.float32)
    items, scores = [], []
    for start in range(0, m, step):
        chunk = queries[start:start + step]
        banned = None if exclude is None else [np.asarray(e, dtype=np.int64).ravel()
                                               for e in exclude[start:start + step]]
        extra = max(len(b) for b in banned) if banned else 0
        rows, codes, values = candidates(chunk, min(k + extra, n))
        if extra:
            ban = _pair(np.repeat(np.arange(len(banned)), [len(b) for b in banned]), np.concatenate(banned))
            keep = ~np.isin(_pair(rows, codes), ban)
            rows, codes, values = rows[keep], codes[keep], values[keep]
        if (len(chunk) - 1).bit_length() + 32 + max(int(codes.max(initial=0)).bit_length(), 1) > 64:
            order = np.lexsort((codes, rows))  # best_per_row's wide-key path breaks ties by input order
            rows, codes, values = rows[order], codes[order], values[order]
        top_items, top_scores = best_per_row(rows, codes, values.astype(np.float32, copy=False), len(chunk), k)
        items.append(top_items)
        scores.append(top_scores)
    return np.vstack(items), np.vstack(scores)


def _pair(rows: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """One int64 per (query row, item code): rows < 1,024 and codes < 2^53 fit."""
    return (rows.astype(np.int64) << 53) | codes.astype(np.int64)


def _block_top(queries: np.ndarray, width: int, codes: np.ndarray,
               vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, codes, scores) of each query's best ``width`` in one block of stored vectors, exactly."""
    positions, values = top_k(queries @ vectors.T, width)
    rows = np.broadcast_to(np.arange(len(queries))[:, None], positions.shape)
    return rows.ravel(), codes[positions].ravel(), values.ravel()
