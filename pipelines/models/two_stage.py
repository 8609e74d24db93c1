"""Two-stage recommendation: candidate sources propose, a learned ranker orders.

Protocol (no leakage): sources are fitted on the history before the validation targets; rankers learn to
put the validation targets on top; a held-out share of validation users picks the best ranker. For test,
the same sources and ranker score against the longer history (train + valid); test targets are never seen.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Self

import numpy as np

from pipelines.evaluation.metrics import per_user_metrics
from pipelines.features.interactions import Interactions
from pipelines.features.ranking import FeatureContext, ItemInfo
from pipelines.models.base import Recommender, Targets, top_k
from pipelines.models.candidates import Candidates, candidate_recall, generate_candidates, labels
from pipelines.rankers import Ranker
from pipelines.rankers.base import RankingData

log = logging.getLogger(__name__)

# Runs a group of independent jobs (name -> thunk) and returns their results by name, e.g. as parallel tasks.
RunJobs = Callable[[dict[str, Callable[[], Any]]], dict[str, Any]]


@dataclass
class Scored:
    """Candidates of a batch of users with their features and each ranker's scores."""

    cands: Candidates
    data: RankingData
    scores: dict[str, np.ndarray] = field(default_factory=dict)


def ranked_lists(cands: Candidates, row_scores: np.ndarray, k: int) -> np.ndarray:
    """Each user's top-k candidate items by ``row_scores`` (padded with -1 when fewer candidates)."""
    width = int(cands.group.max(initial=0))
    table = np.full((len(cands.users), max(width, 1)), -np.inf, dtype=np.float32)
    items = np.full(table.shape, -1, dtype=np.int64)
    row_user = np.repeat(np.arange(len(cands.users)), cands.group)
    pos = np.arange(len(cands.item)) - np.repeat(np.r_[0, np.cumsum(cands.group)[:-1]], cands.group)
    table[row_user, pos] = row_scores
    items[row_user, pos] = cands.item
    idx, vals = top_k(table, k)
    out = np.take_along_axis(items, idx, axis=1)
    out[~np.isfinite(vals)] = -1
    return out


class TwoStage(Recommender):
    """Sources + rankers behind the Recommender shape; ``ranker_`` is the one chosen on validation."""

    name = "two_stage"

    def __init__(
        self, sources: dict[str, Recommender], rankers: dict[str, Ranker], info: ItemInfo,
        n_per_source: int = 50, holdout_share: float = 0.2, seed: int = 0, exclude_seen: bool = True,
        max_ranker_users: int | None = None,
    ):
        self.sources, self.rankers, self.info = sources, rankers, info
        self.max_ranker_users = max_ranker_users  # bounds ranker-training memory at scale (seeded sample)
        self.exclude_seen = exclude_seen  # False where repeat purchases are real: seen items may be candidates
        self.n_per_source, self.holdout_share, self.seed = n_per_source, holdout_share, seed
        self.report_: dict[str, Any] = {}

    # -- fitting -------------------------------------------------------------------------------------------
    def fit(self, history: Interactions, valid: Targets | None = None, run_jobs: RunJobs | None = None) -> Self:
        """Fit the sources, then the rankers on the sources' candidates for the validation targets.

        ``run_jobs`` runs each group of independent fits (all sources, then all rankers); the default runs
        them one after another here, the Prefect flow as parallel tasks. Either way the fitted models are the
        returned ones, so a runner may fit copies in other processes.
        """
        if valid is None:
            raise ValueError("TwoStage.fit needs validation targets: the rankers learn from them")
        run_jobs = run_jobs or run_sequentially
        self._history = history
        timings: dict[str, float] = {}
        fitted = run_jobs({f"source-{name}": partial(_timed_fit, source, history, valid)
                           for name, source in self.sources.items()})
        for name in self.sources:
            self.sources[name], timings[f"fit_{name}"] = fitted[f"source-{name}"]
            log.info("source fitted name=%s seconds=%.1f", name, timings[f"fit_{name}"])
        users, targets = sample_users(*valid, self.max_ranker_users, self.seed)
        start = time.perf_counter()
        scored = self._score_batch(users, FeatureContext(history, self.info))
        timings["candidates_and_features"] = round(time.perf_counter() - start, 2)
        y = labels(scored.cands, targets)
        self.report_ = {"valid_candidate_recall": candidate_recall(scored.cands, targets), "timings": timings}
        fit_mask, hold_mask = self._holdout(len(users), scored.cands.group, y)
        train, hold = _subset(scored, y, fit_mask), _subset(scored, y, hold_mask)
        fitted = run_jobs({f"ranker-{name}": partial(_timed_fit, ranker, train, hold)
                           for name, ranker in self.rankers.items()})
        for name in self.rankers:
            self.rankers[name], timings[f"fit_ranker_{name}"] = fitted[f"ranker-{name}"]
            log.info("ranker fitted name=%s seconds=%.1f", name, timings[f"fit_ranker_{name}"])
        self._select(scored, [t for t, keep in zip(targets, hold_mask, strict=True) if keep], hold_mask)
        return self

    def _holdout(self, n_users: int, group: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Users whose groups train the rankers (those with a positive) and held-out users for selection."""
        rng = np.random.default_rng(self.seed)
        hold = rng.random(n_users) < self.holdout_share
        starts = np.r_[0, np.cumsum(group)[:-1]]
        has_pos = np.zeros(n_users, dtype=bool)
        nonempty = group > 0
        has_pos[nonempty] = np.add.reduceat(y, starts[nonempty]) > 0
        return ~hold & has_pos, hold

    def _select(self, scored: Scored, hold_targets: list[np.ndarray], hold_mask: np.ndarray) -> None:
        """Pick the ranker with the best NDCG@10 over all held-out users (misses of the pool count as 0)."""
        keep = hold_mask[np.repeat(np.arange(len(hold_mask)), scored.cands.group)]
        cands = _cands_subset(scored.cands, hold_mask)
        results = {}
        for name, ranker in self.rankers.items():
            recs = ranked_lists(cands, ranker.predict(_rows(scored.data, keep)), 20)
            results[name] = {m: round(float(v.mean()), 5) for m, v in
                             per_user_metrics(recs, hold_targets, [10, 20]).items() if m.startswith(("ndcg", "hr"))}
        for name, top in cands.source_top.items():
            results[f"source:{name}"] = {m: round(float(v.mean()), 5) for m, v in
                                         per_user_metrics(top, hold_targets, [10, 20]).items()
                                         if m.startswith(("ndcg", "hr"))}
        self.ranker_name_ = max(self.rankers, key=lambda n: results[n]["ndcg@10"])
        self.report_["selection"] = {
            "metric": "ndcg@10 on held-out validation users",
            "held_out_users": int(hold_mask.sum()),
            "results": results,
            "chosen": self.ranker_name_,
        }
        log.info("ranker chosen name=%s ndcg@10=%.4f", self.ranker_name_, results[self.ranker_name_]["ndcg@10"])

    # -- scoring -------------------------------------------------------------------------------------------
    def with_history(self, history: Interactions) -> Self:
        """A copy whose sources score against ``history``; rankers and their choice stay as trained."""
        other = copy.copy(self)
        other.sources = {name: copy.deepcopy(s).with_history(history) for name, s in self.sources.items()}
        other._history = history
        other.__dict__.pop("_context", None)
        return other

    @property
    def context(self) -> FeatureContext:
        if getattr(self, "_context", None) is None:
            self._context = FeatureContext(self.history, self.info)
        return self._context

    def _score_batch(self, users: np.ndarray, context: FeatureContext) -> Scored:
        cands = generate_candidates(self.sources, users, self.n_per_source, self.exclude_seen)
        X, names = context.features(cands)
        nonempty = cands.group[cands.group > 0]
        data = RankingData(X=X, group=nonempty, y=None, feature_names=names, item_codes=cands.item,
                           user_codes=cands.user)
        return Scored(cands, data)

    def score_all(self, users: np.ndarray) -> Scored:
        """Candidates, features and every ranker's scores for ``users`` (for evaluation of all rankers)."""
        scored = self._score_batch(users, self.context)
        scored.scores = {name: r.predict(scored.data) for name, r in self.rankers.items()}
        return scored

    def recommend_all(self, users: np.ndarray, k: int, batch_size: int = 2048) -> dict[str, np.ndarray]:
        """Top-k lists of every ranker (``ranker:NAME``) and every source (``source:NAME``), in one pass."""
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(users), batch_size):
            scored = self.score_all(users[start: start + batch_size])
            for name, row_scores in scored.scores.items():
                parts.setdefault(f"ranker:{name}", []).append(ranked_lists(scored.cands, row_scores, k))
            for name, top in scored.cands.source_top.items():
                parts.setdefault(f"source:{name}", []).append(_pad(top[:, :k], k))
        return {name: np.concatenate(p) for name, p in parts.items()}

    def score(self, users: np.ndarray) -> np.ndarray:
        """Ranker scores on the candidates; every other item below them, ordered by the first source."""
        scored = self._score_batch(users, self.context)
        row_scores = self.rankers[self.ranker_name_].predict(scored.data)
        # Non-candidates rank below every candidate, in popularity order, so the ranking stays total.
        floor = float(row_scores.min(initial=0.0)) - 1.0
        prior = self.context.popularity["item_pop_all"]
        dense = np.tile((floor - 1.0 + prior / (prior.max(initial=0.0) + 1.0)).astype(np.float32), (len(users), 1))
        row_user = np.repeat(np.arange(len(users)), scored.cands.group)
        dense[row_user, scored.cands.item] = row_scores
        return dense

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_context", None)
        return state


def run_sequentially(jobs: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """The default job runner: each job in turn, in this process (what ``dvc repro`` and the CLI do)."""
    return {name: job() for name, job in jobs.items()}


def _timed_fit(model: Any, *data: Any) -> tuple[Any, float]:
    """Fit ``model`` on ``data``; return it with the seconds it took (a job for ``run_jobs``)."""
    start = time.perf_counter()
    model.fit(*data)
    return model, round(time.perf_counter() - start, 2)


def sample_users(users: np.ndarray, targets: list[np.ndarray], max_users: int | None, seed: int) -> Targets:
    """A seeded sample of ``max_users`` users (kept in their sorted order) with their targets; all when None."""
    if max_users is None or len(users) <= max_users:
        return users, targets
    keep = np.sort(np.random.default_rng([seed, len(users)]).choice(len(users), max_users, replace=False))
    return users[keep], [targets[i] for i in keep]


def _pad(recs: np.ndarray, k: int) -> np.ndarray:
    """Pad lists shorter than k (tiny catalogues) with -1."""
    return recs if recs.shape[1] >= k else np.pad(recs, ((0, 0), (0, k - recs.shape[1])), constant_values=-1)


def _rows(data: RankingData, keep_rows: np.ndarray, y: np.ndarray | None = None) -> RankingData:
    """The rows ``keep_rows`` of ``data`` as ranking data of their own (whole groups only)."""
    return RankingData(
        X=data.X[keep_rows], group=_group_sizes(data, keep_rows), y=None if y is None else y[keep_rows],
        feature_names=data.feature_names,
        item_codes=None if data.item_codes is None else data.item_codes[keep_rows],
        user_codes=None if data.user_codes is None else data.user_codes[keep_rows],
    )


def _group_sizes(data: RankingData, keep_rows: np.ndarray) -> np.ndarray:
    qid = data.qid[keep_rows]
    return np.bincount(qid)[np.unique(qid)] if len(qid) else np.zeros(0, dtype=np.int64)


def _subset(scored: Scored, y: np.ndarray, user_mask: np.ndarray) -> RankingData:
    keep = user_mask[np.repeat(np.arange(len(user_mask)), scored.cands.group)]
    return _rows(scored.data, keep, y)


def _cands_subset(cands: Candidates, user_mask: np.ndarray) -> Candidates:
    keep = user_mask[np.repeat(np.arange(len(user_mask)), cands.group)]
    return Candidates(
        users=cands.users[user_mask], group=cands.group[user_mask], user=cands.user[keep], item=cands.item[keep],
        scores={n: s[keep] for n, s in cands.scores.items()},
        proposed={n: p[keep] for n, p in cands.proposed.items()},
        source_top={n: t[user_mask] for n, t in cands.source_top.items()},
    )
