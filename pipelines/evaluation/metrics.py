"""Ranking metrics as plain functions over (recommended item codes, target sets).

``recs`` is an int array (n_users, K) of item codes, best first; ``targets`` a list with one array of
target item codes per user. Per-user arrays are returned so that bootstrap intervals can pair users.
"""

from __future__ import annotations

import numpy as np


def _hits(recs: np.ndarray, targets: list[np.ndarray], k: int) -> np.ndarray:
    """Boolean (n_users, k): is the item at each rank one of that user's targets (vectorised lookup)."""
    top = np.asarray(recs)[:, :k].astype(np.int64)
    lengths = np.array([len(t) for t in targets], dtype=np.int64)
    flat = np.concatenate([np.asarray(t, dtype=np.int64) for t in targets]) if len(targets) else np.array([], np.int64)
    width = int(max(top.max(initial=0), flat.max(initial=0))) + 1
    target_keys = np.repeat(np.arange(len(targets)), lengths) * width + flat
    rec_keys = np.arange(len(top))[:, None] * width + top
    return np.isin(rec_keys, target_keys) & (top >= 0)


def hit_rate_at_k(recs: np.ndarray, targets: list[np.ndarray], k: int) -> np.ndarray:
    """1 if any target is in the top k."""
    return _hits(recs, targets, k).any(axis=1).astype(float)


def recall_at_k(recs: np.ndarray, targets: list[np.ndarray], k: int) -> np.ndarray:
    """Share of the user's targets found in the top k (equals HR@k with one target per user)."""
    n_targets = np.array([len(t) for t in targets], dtype=float)
    return _hits(recs, targets, k).sum(axis=1) / np.maximum(n_targets, 1)


def ndcg_at_k(recs: np.ndarray, targets: list[np.ndarray], k: int) -> np.ndarray:
    """Binary-relevance NDCG: DCG of the top k over the DCG of an ideal ranking of the targets."""
    hits = _hits(recs, targets, k)
    discounts = 1.0 / np.log2(np.arange(2, hits.shape[1] + 2))
    dcg = (hits * discounts).sum(axis=1)
    ideal_len = np.minimum([len(t) for t in targets], hits.shape[1])
    idcg = np.concatenate([[0.0], np.cumsum(discounts)])[ideal_len]
    return np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)


def mrr_at_k(recs: np.ndarray, targets: list[np.ndarray], k: int) -> np.ndarray:
    """Reciprocal rank of the first target in the top k, 0 when none."""
    hits = _hits(recs, targets, k)
    first = hits.argmax(axis=1)
    return np.where(hits.any(axis=1), 1.0 / (first + 1), 0.0)


def coverage(recs: np.ndarray, n_items: int) -> float:
    """Share of the catalogue that appears in anyone's list."""
    return float(len(np.unique(recs[recs >= 0])) / max(n_items, 1))


def novelty(recs: np.ndarray, item_popularity: np.ndarray) -> float:
    """Mean self-information -log2(p(item)) of recommended items; higher means less obvious items."""
    p = item_popularity / max(item_popularity.sum(), 1e-12)
    p = np.clip(p, 1e-12, None)
    listed = recs[recs >= 0]  # -1 pads lists (and stands for users a champion never saw)
    return float(-np.log2(p[listed]).mean()) if listed.size else 0.0


METRICS = {"hr": hit_rate_at_k, "recall": recall_at_k, "ndcg": ndcg_at_k, "mrr": mrr_at_k}


def per_user_metrics(recs: np.ndarray, targets: list[np.ndarray], ks: list[int]) -> dict[str, np.ndarray]:
    """``{"ndcg@10": array over users, ...}`` for every metric and k."""
    return {f"{name}@{k}": fn(recs, targets, k) for name, fn in METRICS.items() for k in ks}


BOOTSTRAP_CELLS = 1 << 24  # resampled values held at once (~0.25 GB with their indices), whatever the users


def paired_bootstrap_ci(
    a: np.ndarray, b: np.ndarray, samples: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """Mean of ``a - b`` over users and its (1 - alpha) percentile bootstrap interval, resampling users."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if len(diff) == 0:
        return 0.0, 0.0, 0.0
    if samples == 0:
        return float(diff.mean()), float(diff.mean()), float(diff.mean())
    rng = np.random.default_rng(seed)
    # resamples drawn a block at a time: one (samples x users) index matrix is 16 GB with its gather at 1M users
    block = max(1, BOOTSTRAP_CELLS // len(diff))
    means = np.concatenate([diff[rng.integers(0, len(diff), size=(min(block, samples - start), len(diff)))].mean(axis=1)
                            for start in range(0, samples, block)])
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(diff.mean()), float(lo), float(hi)
