"""Two-stage recommendation: candidate sources propose, a learned ranker orders.

Protocol (no leakage): sources are fitted on the history before the validation targets; rankers learn to
put the validation targets on top; a held-out share of validation users picks the best ranker. For test,
the same sources and ranker score against the longer history (train + valid); test targets are never seen.

``rank`` is the one path to lists (evaluation, the serving store and the API all use it): the sources' candidate
pool ordered by the chosen ranker, each item credited to the source that ranked it best. ``rank_sequence`` runs the
same path for a sequence no history holds (a session): every source that can score a sequence proposes, features
describe the sequence, the chosen ranker orders.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Self

import numpy as np

from pipelines.core.config import ValidationRolesParams
from pipelines.evaluation.metrics import per_user_metrics
from pipelines.features.interactions import Interactions, PartedHistory, Vocab
from pipelines.features.ranking import FeatureContext, ItemInfo, item_popularity
from pipelines.models.base import (
    Excluding,
    NoScores,
    Ranked,
    Recommender,
    Targets,
    explain,
    pad_columns,
    recent_items,
    sequence_recent,
    top_k,
)
from pipelines.models.candidates import (
    Candidates,
    candidate_recall,
    generate_candidates,
    has_target,
    labels,
    pool_scores,
)
from pipelines.rankers import Ranker
from pipelines.rankers.base import RankingData

log = logging.getLogger(__name__)

# Runs a group of independent jobs (name -> thunk) and returns their results by name, e.g. as parallel tasks.
RunJobs = Callable[[dict[str, Callable[[], Any]]], dict[str, Any]]
RANK_BATCH = 2048  # users whose candidates and features are held at once when ranking


@dataclass
class Scored:
    """Candidates of a batch of users with their features and each ranker's scores."""

    cands: Candidates
    data: RankingData
    scores: dict[str, np.ndarray] = field(default_factory=dict)


RANKER_FIT, SOURCE_STOP, RANKER_STOP, SELECTION = range(4)
ROLE_NAMES = {RANKER_FIT: "ranker_fit", RANKER_STOP: "ranker_stop", SELECTION: "selection"}


def assign_roles(shares: ValidationRolesParams, n_users: int, seed: int) -> np.ndarray:
    """A seeded role per validation user (``RANKER_FIT``, ``SOURCE_STOP``, ``RANKER_STOP`` or ``SELECTION``) in
    the disjoint ``shares``, so that no score is read on users it was fitted or stopped on; the selection score
    is then an unbiased estimate of the chosen ranker but for the choice among a few."""
    draw = np.random.default_rng(seed).random(n_users)
    edges = np.cumsum([shares.source_stop, shares.ranker_stop, shares.selection])
    role = np.searchsorted(edges, draw, side="right") + 1
    return np.where(role > SELECTION, RANKER_FIT, role)


def ranked_lists(cands: Candidates, row_scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each user's top-k candidate items by ``row_scores`` and those scores (-1 / -inf padded to k columns)."""
    width = max(int(cands.group.max(initial=0)), 1)
    table = np.full((len(cands.users), width), -np.inf, dtype=np.float32)
    items = np.full(table.shape, -1, dtype=np.int64)
    row_user = np.repeat(np.arange(len(cands.users)), cands.group)
    pos = np.arange(len(cands.item)) - np.repeat(np.r_[0, np.cumsum(cands.group)[:-1]], cands.group)
    table[row_user, pos] = row_scores
    items[row_user, pos] = cands.item
    idx, vals = top_k(table, k)
    out = np.take_along_axis(items, idx, axis=1)
    out[~np.isfinite(vals)] = -1
    return pad_columns(out, k, -1), pad_columns(vals, k, -np.inf)


def best_source(items: np.ndarray, tops: list[np.ndarray], n_items: int) -> np.ndarray:
    """int16 per item: the index in ``tops`` of the source whose own list ranks it highest (first on ties), else -1."""
    rows = np.arange(len(items))[:, None]
    query = (rows * n_items + items).ravel()
    never = np.iinfo(np.int64).max
    best_rank = np.full(query.shape, never)
    best = np.full(query.shape, -1, dtype=np.int16)
    for index, top in enumerate(tops):
        listed = top >= 0
        keys = (rows * n_items + top)[listed]
        ranks = np.broadcast_to(np.arange(top.shape[1]), top.shape)[listed]
        order = np.argsort(keys, kind="stable")
        keys, ranks = keys[order], ranks[order]
        if not len(keys):
            continue
        pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
        rank = np.where(keys[pos] == query, ranks[pos], never)
        better = rank < best_rank
        best_rank[better], best[better] = rank[better], index
    best[items.ravel() < 0] = -1
    return best.reshape(items.shape)


class TwoStage(Recommender):
    """Sources + rankers behind the Recommender shape; ``ranker_name_`` is the one chosen on validation."""

    name = "two_stage"

    def __init__(
        self, sources: dict[str, Recommender], rankers: dict[str, Ranker], info: ItemInfo,
        n_per_source: int = 50, roles: ValidationRolesParams | None = None, seed: int = 0, exclude_seen: bool = True,
        max_ranker_users: int | None = None,
    ):
        self.sources, self.rankers, self.info = sources, rankers, info
        self.max_ranker_users = max_ranker_users  # bounds ranker-training memory at scale (seeded sample)
        self.exclude_seen = exclude_seen  # False where repeat purchases are real: seen items may be candidates
        self.n_per_source, self.roles, self.seed = n_per_source, roles or ValidationRolesParams(), seed
        self.report_: dict[str, Any] = {}

    # -- fitting -------------------------------------------------------------------------------------------
    def fit(self, history: Interactions, valid: Targets | None = None, run_jobs: RunJobs | None = None) -> Self:
        """``fit_parts`` on one history, which is then the one the model scores."""
        return self.fit_parts(PartedHistory.of(history), valid, run_jobs)._attach(history)

    def fit_parts(self, history: PartedHistory, valid: Targets | None = None, run_jobs: RunJobs | None = None) -> Self:
        """Fit the sources, then the rankers on the sources' candidates for the validation targets.

        The sources reduce over the history's parts; the rankers' candidates and features are computed one part
        at a time (each part's users against that part, item features of the whole history). ``run_jobs`` runs
        each group of independent fits (all sources, then all rankers); the default runs them one after another
        here, the Prefect flow as parallel tasks. Either way the fitted models are the returned ones, so a runner
        may fit copies in other processes. No user state is kept: ``attach`` a part to rank its users.
        """
        if valid is None:
            raise ValueError("TwoStage.fit needs validation targets: the rankers learn from them")
        run_jobs = run_jobs or run_sequentially
        timings: dict[str, float] = {}
        role = assign_roles(self.roles, len(valid[0]), self.seed)
        source_valid = _targets_of(valid, np.flatnonzero(role == SOURCE_STOP))
        stopping = source_valid if len(source_valid[0]) else None  # without users: the sources train max_epochs
        fitted = run_jobs({f"source-{name}": partial(_timed_fit, source.fit_parts, history, stopping)
                           for name, source in self.sources.items()})
        for name in self.sources:
            self.sources[name], timings[f"fit_{name}"] = fitted[f"source-{name}"]
            log.info("source fitted name=%s seconds=%.1f", name, timings[f"fit_{name}"])
        self.popularity_ = item_popularity(history)
        self._attach(Interactions.empty(history.vocab))
        rows = np.flatnonzero(role != SOURCE_STOP)
        rows = rows[sample_index(len(rows), self.max_ranker_users, self.seed)]
        (users, targets), role = _targets_of(valid, rows), role[rows]
        start = time.perf_counter()
        cands, (train, stop, selected) = self._role_data(history, users, targets, role)
        timings["candidates_and_features"] = round(time.perf_counter() - start, 2)
        self.report_ = {"valid_candidate_recall": candidate_recall(cands, targets), "timings": timings,
                        "validation_users": {name: int((role == code).sum()) for code, name in ROLE_NAMES.items()}
                        | {"source_stop": len(source_valid[0])}}
        fitted = run_jobs({f"ranker-{name}": partial(_timed_fit, ranker.fit, train, stop)
                           for name, ranker in self.rankers.items()})
        for name in self.rankers:
            self.rankers[name], timings[f"fit_ranker_{name}"] = fitted[f"ranker-{name}"]
            log.info("ranker fitted name=%s seconds=%.1f", name, timings[f"fit_ranker_{name}"])
        self._select(selected, [t for t, r in zip(targets, role, strict=True) if r == SELECTION])
        return self

    def _select(self, selected: Scored, targets: list[np.ndarray]) -> None:
        """Pick the ranker with the best NDCG@10 over the selection users (misses of the pool count as 0)."""
        results = {}
        for name, ranker in self.rankers.items():
            recs = ranked_lists(selected.cands, _predict(ranker, selected), 20)[0]
            results[name] = {m: round(float(v.mean()), 5) for m, v in
                             per_user_metrics(recs, targets, [10, 20]).items() if m.startswith(("ndcg", "hr"))}
        for name, top in selected.cands.source_top.items():
            results[f"source:{name}"] = {m: round(float(v.mean()), 5) for m, v in
                                         per_user_metrics(top, targets, [10, 20]).items()
                                         if m.startswith(("ndcg", "hr"))}
        self.ranker_name_ = max(self.rankers, key=lambda n: results[n]["ndcg@10"])
        self.report_["selection"] = {
            "metric": "ndcg@10 on the selection users (no source or ranker stopped or trained on them)",
            "held_out_users": len(targets),
            "results": results,
            "chosen": self.ranker_name_,
        }
        log.info("ranker chosen name=%s ndcg@10=%.4f", self.ranker_name_, results[self.ranker_name_]["ndcg@10"])

    # -- the Recommender interface ------------------------------------------------------------------------
    @property
    def components(self) -> dict[str, Recommender]:
        return self.sources

    @property
    def ranker_name(self) -> str:
        return self.ranker_name_

    @property
    def report(self) -> dict[str, Any]:
        """Validation candidate recall, fit timings and the ranker selection (every ranker's held-out metrics), and
        what fitting the sources and rankers measured where they say (an item index's recall against exact
        search, how an iterative fit stopped)."""
        sources = {name: source.report for name, source in self.sources.items() if source.report}
        rankers = {name: ranker.report for name, ranker in self.rankers.items() if ranker.report}
        return self.report_ | ({"sources": sources} if sources else {}) | ({"rankers": rankers} if rankers else {})

    def with_history(self, history: Interactions) -> Self:
        """A copy whose sources score against ``history``; rankers and their choice stay as trained."""
        return self.with_parts(PartedHistory.of(history))._attach(history)

    def with_parts(self, history: PartedHistory) -> Self:
        """A copy whose sources and item features are those of ``history`` (rankers as trained), no user state."""
        return copy.copy(self).move_to(history)

    def move_to(self, history: PartedHistory) -> Self:
        """``with_parts`` in place. Every source first lets go of the state its refit rebuilds (``released``), so
        memory holds the new sources and one fit's working set, not the old model beside them (at scale a model
        is GBs of item-item rows). ``sources`` becomes a new dict: a copy taken before keeps the old sources."""
        self.__dict__.pop("_context", None)
        self.__dict__.pop("_kept_scorers", None)
        self.sources = {name: source.released() for name, source in self.sources.items()}
        for name, source in self.sources.items():
            self.sources[name] = source.with_parts(history)
        self.popularity_ = item_popularity(history)
        return self._attach(Interactions.empty(history.vocab))

    def attach(self, part: Interactions) -> Self:
        """A copy ranking the users of ``part`` (one part of its history) with the same sources and rankers."""
        return copy.copy(self)._attach(part)

    def _attach(self, part: Interactions) -> Self:
        self.sources = {name: s.attach(part) for name, s in self.sources.items()}
        self._history = part
        self.__dict__.pop("_context", None)
        self.__dict__.pop("_kept_scorers", None)
        return self

    def rank(self, users: np.ndarray, k: int, exclude_seen: bool = True) -> Ranked:
        """The chosen ranker's top k of each user's candidate pool, each item credited to its best-ranking source."""
        users = np.asarray(users, dtype=np.int64)
        context, exclude = self._feature_context(), exclude_seen or self.exclude_seen
        return Ranked.concat([
            self._ranked(self._score_batch(batch, context, exclude), k, recent_items(self.history, batch))
            for batch in (users[i: i + RANK_BATCH] for i in range(0, len(users), RANK_BATCH))], k)

    def rank_sequence(self, items: np.ndarray, events: np.ndarray, k: int, exclude_seen: bool = True,
                      user: int = -1) -> Ranked:
        """``rank`` for a user whose history is the sequence ``items`` / ``events``: the same sources, features
        and chosen ranker, with the sequence's items as the seen ones.

        Sources that cannot score a sequence (``score_sequence`` is None) score the known ``user`` from their
        fitted history, and propose nothing for an anonymous one (their features are then missing).
        """
        items, events = np.asarray(items, dtype=np.int64), np.asarray(events, dtype=np.int64)
        n_items = self.history.n_items
        seen = items if exclude_seen or self.exclude_seen else None
        scorers = self._scorers("sequence", lambda source: source.sequence_scorer())
        known = self._scorers("user", lambda source: source.candidate_scorer(exclude_seen=False))
        scores = {}
        for name, scorer in scorers.items():
            scores[name] = scorer(items, events, seen)
            if scores[name] is None:  # the source cannot score a sequence: the known user, the session excluded
                scores[name] = Excluding(known[name](np.array([user])), seen) if user >= 0 else NoScores(1, n_items)
        cands = pool_scores(np.zeros(1, dtype=np.int64), scores, self.n_per_source)  # row 0 of the context
        return self._ranked(self._scored(cands, self._sequence_context(items, events), user_codes=np.full(1, user)),
                            k, sequence_recent(items))

    def component_lists(self, users: np.ndarray, k: int, exclude_seen: bool = True) -> dict[str, np.ndarray]:
        """Every ranker's list over the same pools (``ranker:NAME``) and every source's own (``source:NAME``)."""
        users = np.asarray(users, dtype=np.int64)
        context, exclude = self._feature_context(), exclude_seen or self.exclude_seen
        parts: dict[str, list[np.ndarray]] = {}
        for start in range(0, len(users), RANK_BATCH):
            scored = self._score_batch(users[start: start + RANK_BATCH], context, exclude)
            for name, ranker in self.rankers.items():
                top = ranked_lists(scored.cands, _predict(ranker, scored), k)[0]
                parts.setdefault(f"ranker:{name}", []).append(top)
            for name, top in scored.cands.source_top.items():
                parts.setdefault(f"source:{name}", []).append(pad_columns(top, k, -1))
        return {name: np.concatenate(p) for name, p in parts.items()}

    def score(self, users: np.ndarray) -> np.ndarray:
        """Dense scores, as every Recommender answers: the pool by the chosen ranker, then every other item below
        it in popularity order (a total ranking). No pipeline path needs them; lists come from ``rank``."""
        scored = self._score_batch(users, self._feature_context(), self.exclude_seen)
        row_scores = _predict(self.rankers[self.ranker_name_], scored)
        floor = float(row_scores.min(initial=0.0)) - 1.0
        prior = self._feature_context().popularity["item_pop_all"]
        dense = np.tile((floor - 1.0 + prior / (prior.max(initial=0.0) + 1.0)).astype(np.float32), (len(users), 1))
        row_user = np.repeat(np.arange(len(users)), scored.cands.group)
        dense[row_user, scored.cands.item] = row_scores
        return dense

    # -- scoring internals ---------------------------------------------------------------------------------
    def _feature_context(self) -> FeatureContext:
        """Features of the current history, built once per history (dropped on pickling)."""
        if getattr(self, "_context", None) is None:
            self._context = FeatureContext(self.history, self.info, self.popularity_)
        return self._context

    def _sequence_context(self, items: np.ndarray, events: np.ndarray) -> FeatureContext:
        """Features of a one-user history holding the sequence; item features stay those of the model's history."""
        vocab = Vocab(users=np.array(["<sequence>"], dtype=object), items=self.history.vocab.arrow_items)
        one = Interactions(vocab, np.zeros(len(items), dtype=np.int32), items.astype(np.int32), events.astype(np.int8),
                           np.zeros(len(items), dtype=np.int64))
        return FeatureContext(one, self.info, self.popularity_)  # what the catalogue did, not what one user did

    def _role_data(self, history: PartedHistory, users: np.ndarray, targets: list[np.ndarray], role: np.ndarray,
                   ) -> tuple[Candidates, tuple[RankingData, RankingData, Scored]]:
        """Every user's candidates, and the labelled features of the rankers' training users (those whose pool
        holds a target), their stopping users and the selection users, built batch by batch and kept per role:
        no matrix of every user's features is ever held (it would double the peak)."""
        cands, selected = [], []
        kept: dict[int, list[RankingData]] = {RANKER_FIT: [], RANKER_STOP: [], SELECTION: []}
        offset = 0
        for piece in self._scored_batches(history, users):
            n = len(piece.cands.users)
            mine, y = role[offset: offset + n], labels(piece.cands, targets[offset: offset + n])
            offset += n
            cands.append(piece.cands)
            selected.append(_cands_subset(piece.cands, mine == SELECTION))
            for code, mask in ((RANKER_FIT, (mine == RANKER_FIT) & has_target(piece.cands.group, y)),
                               (RANKER_STOP, mine == RANKER_STOP), (SELECTION, mine == SELECTION)):
                kept[code].append(_subset(piece, y, mask))
        names = list(self.sources)
        train, stop, chosen = (RankingData.concat(kept[code]) for code in (RANKER_FIT, RANKER_STOP, SELECTION))
        return Candidates.concat(cands, names), (train, stop, Scored(Candidates.concat(selected, names), chosen))

    def _scored_batches(self, history: PartedHistory, users: np.ndarray) -> Iterator[Scored]:
        """Candidates and features of the sorted known ``users`` in batches (at least one, maybe empty), each
        scored against its own part of ``history``."""
        empty = True
        for part in history:
            mine = part.users_in(users)
            if len(mine):
                attached = self.attach(part)
                context = attached._feature_context()
                for i in range(0, len(mine), RANK_BATCH):
                    empty = False
                    yield attached._score_batch(mine[i: i + RANK_BATCH], context, self.exclude_seen)
        if empty:
            yield self._score_batch(users[:0], self._feature_context(), self.exclude_seen)

    def _score_batch(self, users: np.ndarray, context: FeatureContext, exclude_seen: bool) -> Scored:
        """Candidates of known ``users`` with their features (``context`` describes the users' history)."""
        scorers = self._scorers(f"candidates {exclude_seen}", lambda source: source.candidate_scorer(exclude_seen))
        return self._scored(generate_candidates(self.sources, users, self.n_per_source, exclude_seen, scorers=scorers),
                            context)

    def _scorers(self, kind: str, make: Callable[[Recommender], Any]) -> dict[str, Any]:
        """Each source's scorer of a ``kind`` (``candidate_scorer`` / ``sequence_scorer``), made once per attached
        history: what they prepare (item orders of 4M items) is then not looked up again for every request."""
        kept = self.__dict__.setdefault("_kept_scorers", {})
        if kind not in kept:
            kept[kind] = {name: make(source) for name, source in self.sources.items()}
        return kept[kind]

    def _scored(self, cands: Candidates, context: FeatureContext, user_codes: np.ndarray | None = None) -> Scored:
        """``cands`` with their features; ``user_codes`` per user replace the context's row codes for the rankers."""
        X, names = context.features(cands)
        codes = cands.user if user_codes is None else np.repeat(user_codes, cands.group)
        data = RankingData(X=X, group=cands.group[cands.group > 0], y=None, feature_names=names,
                           item_codes=cands.item, user_codes=codes)
        return Scored(cands, data)

    def _ranked(self, scored: Scored, k: int, recent: np.ndarray) -> Ranked:
        """The chosen ranker's lists of ``scored``, credited to sources and explained from ``recent`` items."""
        items, scores = ranked_lists(scored.cands, _predict(self.rankers[self.ranker_name_], scored), k)
        sources = best_source(items, [scored.cands.source_top[name] for name in self.sources], self.history.n_items)
        return Ranked(items, scores.astype(np.float32), sources, explain(list(self.sources.values()), recent, items,
                                                                         sources))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_context", None)
        state.pop("_kept_scorers", None)
        return state


def run_sequentially(jobs: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """The default job runner: each job in turn, in this process (what ``dvc repro`` and the CLI do)."""
    return {name: job() for name, job in jobs.items()}


def _timed_fit(fit: Callable[..., Any], *data: Any) -> tuple[Any, float]:
    """``fit(*data)`` (a bound fit method); the fitted model with the seconds it took (a job for ``run_jobs``)."""
    start = time.perf_counter()
    model = fit(*data)
    return model, round(time.perf_counter() - start, 2)


def sample_users(users: np.ndarray, targets: list[np.ndarray], max_users: int | None, seed: int) -> Targets:
    """A seeded sample of ``max_users`` users (kept in their sorted order) with their targets; all when None."""
    return _targets_of((users, targets), sample_index(len(users), max_users, seed))


def sample_index(n: int, max_users: int | None, seed: int) -> np.ndarray:
    """Sorted positions of a seeded sample of ``max_users`` of ``n`` users; all of them when None or fewer."""
    if max_users is None or n <= max_users:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, n]).choice(n, max_users, replace=False))


def _targets_of(valid: Targets, rows: np.ndarray) -> Targets:
    users, targets = valid
    return users[rows], [targets[i] for i in rows]


def _predict(ranker: Ranker, scored: Scored) -> np.ndarray:
    """The ranker's score per candidate row (none to score when every pool is empty)."""
    return ranker.predict(scored.data) if scored.data.n_rows else np.zeros(0, dtype=np.float32)


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
