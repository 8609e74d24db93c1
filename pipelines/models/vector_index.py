"""Top-k item retrieval by inner product: exact for small catalogues, an inverted-file (IVF) index for large ones.

A 4M-item catalogue scored exactly costs ~50 ms per query on one core (a 4M x 64 matrix-vector product and a
selection), over serving's 30 ms budget. The index files the vectors under ``n_lists`` k-means clusters and scans
only the ``n_probe`` clusters nearest to the query, comparing 4-bit product-quantised codes with SIMD (faiss's
"fast scan", about 5x quicker per vector than float vectors), then re-scores the best ``k_factor * k`` of them exactly
against the float vectors, so scores and order are exact among the candidates found.

IVF won the measurement against HNSW (faiss and usearch) on clustered vectors: the same recall at half the latency or
less, a build of seconds instead of minutes, deterministic, and new vectors are added without a rebuild; the fast
scan then cut IVF's latency at 4M items ~5x at the same recall (docs/BENCHMARKS.md, "Vector index (ANN)"). Below
``exact_below`` items the index stays exact: a matrix product is fast there and recall is 1.

Item codes are int64 and need not be dense: ``build`` numbers its rows 0..n-1 and ``add`` appends any new codes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Self

import faiss
import numpy as np

from pipelines.models.base import CELL_BUDGET, best_per_row, top_k

EXACT_BELOW = 50_000
QUERY_ROWS = 1024  # queries per step: bounds the score matrix, and keeps best_per_row's one-sort key in 64 bits
MIN_POINTS_PER_LIST = 39  # faiss warns (and k-means is poor) below 39 training points per centroid
BLOCK_VECTORS = 1 << 18  # stored vectors per step of an exact pass over the index (64 MB at 64 dimensions)
# k-means sample per list (faiss's default is 256): on 1M clustered vectors 64 builds in 40 s instead of 110 s for
# recall@100 0.973 instead of 0.978 at the same n_probe; the build runs at every training
TRAIN_POINTS_PER_LIST = 64
# candidates re-scored exactly per item asked for: the quantised scan's ranking caps recall whatever n_probe is. For
# queries between two clusters of 4M items, recall@100 at 2,048 probes is 0.75 / 0.93 / 0.96 / 0.97 with 4 / 16 / 32 /
# 64 (p50 4.3 / 4.8 / 5.8 / 6.7 ms); 32 lets tune() reach 0.95 without scanning a quarter of the lists
K_FACTOR = 32

# fewer queries than this search on one OpenMP thread: a single serving request on several threads waited for cores
# that TensorFlow and the event loop hold (one-user p50 15.8 ms at 2 threads vs 2.5 ms at 1 in a loaded API run);
# the result does not depend on the thread count
PARALLEL_QUERIES = 16
_THREADS = faiss.omp_get_max_threads()


@contextmanager
def _threads(n: int) -> Iterator[None]:
    """faiss's OpenMP thread count set to ``n`` for the block (process-wide: concurrent searches share it)."""
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(_THREADS)


def default_lists(n: int) -> int:
    """Number of IVF lists: the power of two nearest 4 sqrt(n) (the usual rule), with 39+ vectors per list."""
    lists = 2 ** max(0, round(math.log2(4 * math.sqrt(max(n, 1)))))
    while lists > 1 and lists * MIN_POINTS_PER_LIST > n:
        lists //= 2
    return lists


def _subquantizers(dim: int) -> int:
    """Product-quantiser parts: two dimensions each (4 bits per part: 1 byte per 4 dimensions), or one if dim is odd."""
    return dim // 2 if dim % 2 == 0 else dim


class VectorIndex:
    """Item vectors searchable for the k largest inner products with a query, exact or approximate (IVF)."""

    def __init__(self, dim: int, codes: np.ndarray | None, vectors: np.ndarray | None, ann: Any | None,
                 n_probe: int, k_factor: int):
        self.dim = dim
        self._codes = codes  # exact mode: the codes of the rows of _vectors; ANN mode: None (the index maps them)
        self._vectors = vectors  # exact mode: (n, dim) float32; ANN mode: None (faiss holds them)
        self._ann = ann  # IndexIDMap2 over IndexRefineFlat over IndexIVFPQFastScan
        self._ivf = None if ann is None else faiss.extract_index_ivf(ann)
        self._n_probe = n_probe
        self._k_factor = k_factor

    @classmethod
    def build(cls, vectors: np.ndarray, exact_below: int = EXACT_BELOW, seed: int = 0, n_lists: int | None = None,
              n_probe: int | None = None, k_factor: int = K_FACTOR) -> Self:
        """Index rows of ``vectors`` as codes 0..n-1: exact when n < ``exact_below``, IVF otherwise.

        The same vectors and seed give the same index (the training sample and faiss's k-means are seeded, and the
        result does not depend on the number of threads). ``n_probe`` defaults to 1/8 of the lists: recall@100
        0.97-0.99 on 1M and 0.92-0.97 on 4M clustered vectors (docs/BENCHMARKS.md); ``tune`` fits it to real queries.
        """
        vectors = _matrix(vectors)
        n, dim = vectors.shape
        if n < exact_below:
            return cls(dim, np.arange(n, dtype=np.int64), vectors.copy(), None, 0, 0)
        if n == 0:
            raise ValueError("an approximate index needs at least one vector")
        n_lists = n_lists or default_lists(n)
        ann = faiss.index_factory(dim, f"IDMap2,IVF{n_lists},PQ{_subquantizers(dim)}x4fs,RFlat",
                                  faiss.METRIC_INNER_PRODUCT)
        ivf = faiss.downcast_index(faiss.extract_index_ivf(ann))
        ivf.cp.seed = ivf.pq.cp.seed = seed
        sample = np.random.default_rng(seed).choice(n, min(n, TRAIN_POINTS_PER_LIST * n_lists), replace=False)
        ann.train(vectors[np.sort(sample)])
        ann.add_with_ids(vectors, np.arange(n, dtype=np.int64))
        return cls(dim, None, None, ann, n_probe or max(1, n_lists // 8), k_factor)

    @property
    def exact(self) -> bool:
        return self._ann is None

    def __len__(self) -> int:
        return len(self._codes) if self.exact else int(self._ann.ntotal)

    @property
    def n_lists(self) -> int:
        """IVF lists (k-means clusters) the vectors are filed under (0 in exact mode)."""
        return 0 if self.exact else int(self._ivf.nlist)

    @property
    def k_factor(self) -> int:
        """Candidates re-scored exactly per item asked for (0 in exact mode)."""
        return self._k_factor

    @k_factor.setter
    def k_factor(self, value: int) -> None:
        if not self.exact:
            self._k_factor = max(1, int(value))

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

        An IVF index files each one under its nearest list and encodes it with the trained quantiser, without
        retraining; while the new items are few their distribution does not matter, and the next training rebuilds.
        """
        codes = np.asarray(codes, dtype=np.int64).ravel()
        vectors = _matrix(vectors, self.dim)
        if len(codes) != len(vectors):
            raise ValueError(f"{len(codes)} codes for {len(vectors)} vectors")
        if codes.min(initial=0) < 0:
            raise ValueError("item codes must be non-negative (-1 pads the lists)")
        if len(np.unique(codes)) != len(codes) or np.isin(codes, self._stored_codes()).any():
            raise ValueError("codes must be new and distinct: an item's vector is stored once")
        if self.exact:
            self._vectors = np.concatenate([self._vectors, vectors])
            self._codes = np.concatenate([self._codes, codes])
        else:
            self._ann.add_with_ids(vectors, codes)

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
        probe = faiss.SearchParametersIVF(nprobe=self._n_probe)  # kept referenced while the search runs
        params = faiss.IndexRefineSearchParameters(k_factor=self._k_factor, base_index_params=probe)
        with _threads(1 if len(queries) < PARALLEL_QUERIES else _THREADS):
            scores, items = self._ann.search(queries, width, params=params)
        rows = np.broadcast_to(np.arange(len(queries))[:, None], items.shape)
        keep = items >= 0
        return rows[keep], items[keep], scores[keep]

    def _exact(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top k over the stored vectors: ``search`` itself in exact mode, a full pass over the float vectors
        the index re-scores with otherwise."""
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

    def _stored_codes(self) -> np.ndarray:
        if self.exact:
            return self._codes
        id_map = self._ann.id_map
        return faiss.rev_swig_ptr(id_map.data(), id_map.size()) if id_map.size() else np.empty(0, dtype=np.int64)

    def _blocks(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(codes, vectors) views of the float vectors the index re-scores with, ~256k at a time (no copies)."""
        flat = faiss.downcast_index(faiss.downcast_index(self._ann.index).refine_index)
        vectors = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * self.dim).reshape(-1, self.dim)
        codes = self._stored_codes()
        for start in range(0, len(codes), BLOCK_VECTORS):
            yield codes[start:start + BLOCK_VECTORS], vectors[start:start + BLOCK_VECTORS]

    # -- pickling: the models are saved with joblib -----------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        ann = None if self.exact else faiss.serialize_index(self._ann)  # uint8 array: joblib stores it as is
        return {"dim": self.dim, "codes": self._codes, "vectors": self._vectors, "ann": ann,
                "n_probe": self._n_probe, "k_factor": self._k_factor}

    def __setstate__(self, state: dict[str, Any]) -> None:
        ann = None if state["ann"] is None else faiss.deserialize_index(state["ann"])
        VectorIndex.__init__(self, state["dim"], state["codes"], state["vectors"], ann, state["n_probe"],
                             state["k_factor"])


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
