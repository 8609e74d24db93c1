"""Candidate generation: every source proposes its top items, the union is scored by all sources.

Each source answers a batch of users through its ``UserScores``: its top ``n`` items (the pool) and its score of
every pooled item, so the ranker sees complete score features. Sources with ``sparse_scores`` answer from sparse
rows and precomputed item orders, so catalogues of millions of items cost no dense users x items matrix; the others
hold one dense matrix per batch, and batches shrink with the catalogue for them only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipelines.evaluation.metrics import hit_rate_at_k
from pipelines.models.base import CELL_BUDGET, DenseScores, Recommender, UserScores, contains, distinct, pair_keys


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

    @classmethod
    def concat(cls, parts: list[Candidates], names: list[str]) -> Candidates:
        """The users of ``parts`` one after another (batches, or parts of users), for sources ``names``."""
        return cls(
            users=np.concatenate([p.users for p in parts]).astype(np.int64),
            group=np.concatenate([p.group for p in parts]).astype(np.int64),
            user=np.concatenate([p.user for p in parts]).astype(np.int64),
            item=np.concatenate([p.item for p in parts]).astype(np.int64),
            scores={n: np.concatenate([p.scores[n] for p in parts]) for n in names},
            proposed={n: np.concatenate([p.proposed[n] for p in parts]) for n in names},
            source_top={n: np.concatenate([p.source_top[n] for p in parts]) for n in names},
        )


def pool_candidates(users: np.ndarray, dense: dict[str, np.ndarray], n: int) -> Candidates:
    """The candidates of one batch from each source's dense (len(users) x items) scores.

    A source proposes its top ``n`` items of finite score: excluded items (seen ones, set to -inf) are never
    candidates, even where a tiny catalogue leaves fewer than ``n`` others (its list is then -1 padded).
    """
    return pool_scores(users, {name: DenseScores(d, None) for name, d in dense.items()}, n)


def pool_scores(users: np.ndarray, scores: dict[str, UserScores], n: int) -> Candidates:
    """The candidates of one batch from each source's ``UserScores``: the union of their top ``n`` lists in
    (user, item code) order, each pooled item with every source's score."""
    tops = {name: s.top(n)[0] for name, s in scores.items()}
    n_items = 1 + max(int(top.max(initial=0)) for top in tops.values())
    proposals = {}
    for name, top in tops.items():
        rows, cols = np.nonzero(top >= 0)
        proposals[name] = np.sort(pair_keys(rows, top[rows, cols], n_items))
    pooled = distinct(np.concatenate(list(proposals.values())))
    row, item = pooled // n_items, pooled % n_items
    return Candidates(
        users=users, group=np.bincount(row, minlength=len(users)).astype(np.int64),
        user=users[row].astype(np.int64), item=item.astype(np.int64),
        scores={name: s.at(row, item) for name, s in scores.items()},
        proposed={name: contains(keys, pooled) for name, keys in proposals.items()},
        source_top=tops,
    )


def generate_candidates(
    sources: dict[str, Recommender], users: np.ndarray, n_per_source: int, exclude_seen: bool = True,
    batch_size: int = 1024, scorers: dict[str, Callable[[np.ndarray], UserScores]] | None = None,
) -> Candidates:
    """The union of each source's top ``n_per_source`` items per user, with every source's score.

    A source without ``sparse_scores`` holds one dense (users x items) score matrix per batch, so with such a source
    large catalogues get smaller batches (at most ``CELL_BUDGET`` cells each); rows are independent, so the result
    does not depend on it. ``scorers``: the sources' ``candidate_scorer``s made beforehand (kept across calls).
    """
    n_items = next(iter(sources.values())).history.n_items
    if not all(model.sparse_scores for model in sources.values()):
        batch_size = max(1, min(batch_size, CELL_BUDGET // max(n_items, 1)))
    if scorers is None:
        scorers = {name: model.candidate_scorer(exclude_seen) for name, model in sources.items()}
    parts = [pool_scores(batch, {name: scorer(batch) for name, scorer in scorers.items()}, n_per_source)
             for batch in (users[start: start + batch_size] for start in range(0, len(users), batch_size))]
    if not parts:
        return pool_scores(users, {name: scorer(users) for name, scorer in scorers.items()}, n_per_source)
    return Candidates.concat(parts, list(sources))


def labels(cands: Candidates, targets: list[np.ndarray]) -> np.ndarray:
    """1.0 where the candidate is one of its user's targets (``targets`` aligned with ``cands.users``)."""
    width = int(max(cands.item.max(initial=0), max((t.max(initial=0) for t in targets), default=0))) + 1
    row_of_user = np.repeat(np.arange(len(cands.users)), cands.group)
    keys = row_of_user * width + cands.item
    tkeys = np.concatenate([np.full(len(t), r) * width + t for r, t in enumerate(targets)]) if targets else []
    return np.isin(keys, tkeys).astype(np.float32)


def has_target(group: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per user (``group``: candidates per user): whether any of its candidates is a target (``y`` from ``labels``)."""
    out = np.zeros(len(group), dtype=bool)
    nonempty = group > 0
    out[nonempty] = np.add.reduceat(y, np.r_[0, np.cumsum(group)[:-1]][nonempty]) > 0
    return out


def candidate_recall(cands: Candidates, targets: list[np.ndarray], ks: tuple[int, ...] = (10, 50, 100)) -> dict:
    """Recall of each source's own list at several depths, and of the merged pool: what each contributes."""
    out: dict[str, dict[str, float]] = {}
    for name, top in cands.source_top.items():
        out[name] = {f"recall@{k}": round(float(hit_rate_at_k(top, targets, k).mean()), 5)
                     for k in ks if k <= top.shape[1]}
    out["merged"] = {"recall": round(float(has_target(cands.group, labels(cands, targets)).mean()), 5),
                     "mean_candidates": round(float(cands.group.mean()), 1)}
    return out
