"""Candidate generation: every source proposes its top items, the union is scored by all sources.

One pass of dense scoring per source and user batch yields both the pool (each source's top ``n``) and
every source's score for every pooled item, so the ranker sees complete score features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.evaluation.metrics import hit_rate_at_k
from pipelines.models.base import Recommender, top_k


@dataclass
class Candidates:
    """Rows of (user, item), grouped by user in the order of ``users``."""

    users: np.ndarray  # int64 (n_users,) the query users
    group: np.ndarray  # int64 (n_users,) candidates per user
    user: np.ndarray  # int64 (n_rows,)
    item: np.ndarray  # int64 (n_rows,)
    scores: dict[str, np.ndarray]  # source -> float32 (n_rows,) that source's score of the item
    proposed: dict[str, np.ndarray]  # source -> bool (n_rows,) the item is in that source's top n
    source_top: dict[str, np.ndarray]  # source -> int64 (n_users, n) that source's own list, -1 padded

    def __len__(self) -> int:
        return len(self.item)


# users x items cells per dense score matrix in one candidate batch (128 MB of float32): at 10M events (250k items)
# 1024-user batches held ~6 GB of dense scores across the sources.
CELL_BUDGET = 1 << 25


def pool_candidates(users: np.ndarray, dense: dict[str, np.ndarray], n: int) -> Candidates:
    """The candidates of one batch from each source's dense (len(users) x items) scores.

    A source proposes its top ``n`` items of finite score: excluded items (seen ones, set to -inf) are never
    candidates, even where a tiny catalogue leaves fewer than ``n`` others (its list is then -1 padded).
    """
    tops = {}
    for name, scores in dense.items():
        top, values = top_k(scores, n)
        tops[name] = np.where(np.isfinite(values), top, -1)
    n_items = next(iter(dense.values())).shape[1]
    proposed_by = np.zeros((len(users), n_items), dtype=np.uint32)  # bit per source
    for bit, top in enumerate(tops.values()):
        rows, cols = np.nonzero(top >= 0)
        np.bitwise_or.at(proposed_by, (rows, top[rows, cols]), 1 << bit)
    row, item = np.nonzero(proposed_by)
    bits = proposed_by[row, item]
    return Candidates(
        users=users, group=np.bincount(row, minlength=len(users)).astype(np.int64),
        user=users[row].astype(np.int64), item=item.astype(np.int64),
        scores={name: d[row, item] for name, d in dense.items()},
        proposed={name: (bits & (1 << b)) > 0 for b, name in enumerate(tops)},
        source_top=tops,
    )


def generate_candidates(
    sources: dict[str, Recommender], users: np.ndarray, n_per_source: int, exclude_seen: bool = True,
    batch_size: int = 1024,
) -> Candidates:
    """The union of each source's top ``n_per_source`` items per user, with every source's score.

    A batch holds one dense (users x items) score matrix per source at once, so large catalogues get smaller
    batches (at most ``CELL_BUDGET`` cells each); rows are independent, so the result does not depend on it.
    """
    n_items = next(iter(sources.values())).history.n_items if sources else 1
    batch_size = max(1, min(batch_size, CELL_BUDGET // max(n_items, 1)))
    parts = []
    for start in range(0, len(users), batch_size):
        batch = users[start: start + batch_size]
        dense = {}
        for name, model in sources.items():
            scores = np.array(model.score(batch), dtype=np.float32, copy=True)
            if exclude_seen:
                seen = model.history.seen[batch]
                scores[np.repeat(np.arange(len(batch)), np.diff(seen.indptr)), seen.indices] = -np.inf
            dense[name] = scores
        parts.append(pool_candidates(batch, dense, n_per_source))
    names = list(sources)
    return Candidates(
        users=users,
        group=np.concatenate([p.group for p in parts]).astype(np.int64),
        user=np.concatenate([p.user for p in parts]).astype(np.int64),
        item=np.concatenate([p.item for p in parts]).astype(np.int64),
        scores={n: np.concatenate([p.scores[n] for p in parts]) for n in names},
        proposed={n: np.concatenate([p.proposed[n] for p in parts]) for n in names},
        source_top={n: np.concatenate([p.source_top[n] for p in parts]) for n in names},
    )


def labels(cands: Candidates, targets: list[np.ndarray]) -> np.ndarray:
    """1.0 where the candidate is one of its user's targets (``targets`` aligned with ``cands.users``)."""
    width = int(max(cands.item.max(initial=0), max((t.max(initial=0) for t in targets), default=0))) + 1
    row_of_user = np.repeat(np.arange(len(cands.users)), cands.group)
    keys = row_of_user * width + cands.item
    tkeys = np.concatenate([np.full(len(t), r) * width + t for r, t in enumerate(targets)]) if targets else []
    return np.isin(keys, tkeys).astype(np.float32)


def candidate_recall(cands: Candidates, targets: list[np.ndarray], ks: tuple[int, ...] = (10, 50, 100)) -> dict:
    """Recall of each source's own list at several depths, and of the merged pool: what each contributes."""
    out: dict[str, dict[str, float]] = {}
    for name, top in cands.source_top.items():
        out[name] = {f"recall@{k}": round(float(hit_rate_at_k(top, targets, k).mean()), 5)
                     for k in ks if k <= top.shape[1]}
    y = labels(cands, targets)
    hit_users = np.add.reduceat(y, np.r_[0, np.cumsum(cands.group)[:-1]]) if len(y) else np.zeros(0)
    hit_users = np.where(cands.group > 0, hit_users, 0)
    out["merged"] = {"recall": round(float((hit_users > 0).mean()), 5),
                     "mean_candidates": round(float(cands.group.mean()), 1)}
    return out
