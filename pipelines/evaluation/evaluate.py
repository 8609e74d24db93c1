"""Evaluate stage: full-ranking metrics on the test targets, segments, and the lift over popularity.

The new-item slice (``new_items`` in metrics.json) scores the targets that are items without any event in the
evaluation history, by each model's list and by its exploration list: the list with ``explore_share`` of its
slots given to the new items closest in content to the user's recent items, picked as the API picks them
(``pipelines.models.content``). "New" is decided from the history and the catalogue only, never from targets.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd

from pipelines.core.atomic import atomic_file, write_json
from pipelines.core.config import EvaluateParams, SplitParams
from pipelines.core.engine import imap_parts
from pipelines.evaluation.champion import Champion
from pipelines.evaluation.metrics import (
    coverage,
    hit_rate_at_k,
    ndcg_at_k,
    novelty,
    paired_bootstrap_ci,
    per_user_metrics,
    recall_at_k,
)
from pipelines.features.encode import Features, FeatureStore, load_features
from pipelines.features.interactions import Interactions, PartedHistory, Vocab
from pipelines.models import Recommender
from pipelines.models.base import recent_items
from pipelines.models.content import CONTENT_FILE, ContentIndex, closest_new, explore_list, explore_slots
from pipelines.models.stopping import capped_fits
from pipelines.models.train import EVAL_HISTORY, load_model
from pipelines.models.two_stage import sample_users

EXPLORE_BATCH = 1024  # users whose exploration candidates are found by one sparse product
COLD_START_MAX_EVENTS = 3  # users with fewer training events than this form the cold-start segment


def _summary(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: round(float(v.mean()), 6) if len(v) else 0.0 for name, v in per_user.items()}


def _summaries(lists: dict[str, np.ndarray], targets: list[np.ndarray], ks: list[int]) -> dict[str, Any]:
    """Metrics of each building block's lists (``source:NAME``, ``ranker:NAME``) on the evaluated users."""
    return {part: _summary(per_user_metrics(r, targets, ks)) for part, r in lists.items()}


@dataclass
class _Exploration:
    """What the exploration lists of the new-item slice need: the content index (None: the model directory has
    none, so nothing is proposed), the new item codes, the share of slots and the list lengths."""

    content: ContentIndex | None
    new_items: np.ndarray
    share: float
    ks: list[int]

    def candidates(self, part: Interactions, users: np.ndarray) -> list[np.ndarray]:
        """Per user, the new items closest in content to their recent items in ``part``, best first."""
        none = np.zeros(0, dtype=np.int64)
        if self.content is None or not len(self.new_items) or not explore_slots(max(self.ks), self.share):
            return [none] * len(users)
        out = []
        for start in range(0, len(users), EXPLORE_BATCH):
            recents = [row[row >= 0] for row in recent_items(part, users[start: start + EXPLORE_BATCH])]
            found = closest_new(self.content, recents, self.new_items, max(self.ks))
            out += [codes if len(recent) else none for recent, (codes, _) in zip(recents, found, strict=True)]
        return out

    def lists(self, plain: np.ndarray, candidates: list[np.ndarray]) -> dict[int, np.ndarray]:
        """Per list length k, the (users, k) exploration lists made of the ``plain`` lists."""
        return {k: np.stack([explore_list(row, c, k, self.share) for row, c in zip(plain, candidates, strict=True)])
                if len(plain) else np.full((0, k), -1, dtype=np.int64) for k in self.ks}


@dataclass
class _PartLists:
    """What ranking one part's evaluated users gives: each model's lists (plain and exploration, per k) and time,
    building blocks, counts."""

    lists: dict[str, np.ndarray]
    explored: dict[str, dict[int, np.ndarray]]
    seconds: dict[str, float]
    blocks: dict[str, dict[str, np.ndarray]]
    events_per_user: np.ndarray


def _item_events(history: PartedHistory, i: int) -> np.ndarray:
    """Events per item code in part ``i`` (a task on a cluster): popularity, and which items are new."""
    return np.bincount(history.part(i).item, minlength=history.n_items).astype(np.int64)


def _rank_part(models: dict[str, Recommender | Champion], vocab: Vocab, history: PartedHistory, i: int,
               users: np.ndarray, block_users: np.ndarray, k: int, exclude_seen: bool,
               exploration: _Exploration) -> _PartLists:
    """Rank the evaluated users of part ``i`` with every model attached to it (a task on a cluster)."""
    part = history.part(i)
    out = _PartLists({}, {}, {}, {}, np.bincount(part.user, minlength=history.n_users))
    mine = part.users_in(users)
    if not len(mine):
        return out
    candidates = exploration.candidates(part, mine)
    for name, model in models.items():
        start = time.perf_counter()
        if isinstance(model, Champion):
            recs = model.lists(vocab, mine, k, exclude_seen)
        else:
            model = model if len(history) == 1 else model.attach(part)  # one part: fitted on it already
            recs = model.rank(mine, k, exclude_seen).items  # the served path: the lists the API would give
        out.seconds[name] = time.perf_counter() - start  # timed alone: evaluating every building block is not serving
        out.lists[name] = recs
        out.explored[name] = exploration.lists(recs, candidates)
        checked = mine[np.isin(mine, block_users)]
        if isinstance(model, Recommender) and len(checked):
            out.blocks[name] = model.component_lists(checked, k, exclude_seen)
    return out


def evaluate_models(
    models: dict[str, Recommender | Champion], features: Features | FeatureStore, params: EvaluateParams,
    exclude_seen: bool, fold: str = "test", lists_out: dict[str, np.ndarray] | None = None,
    content: ContentIndex | None = None,
) -> dict[str, Any]:
    """Metrics of every model on ``fold``, with segments, bootstrap intervals against ``baseline`` and the
    new-item slice (its exploration lists propose new items by ``content``; none without it).

    Users are ranked one part of the history at a time (each model attached to the part), so memory holds one
    part's users whatever the number of users; with a Dask cluster configured the parts are tasks on its
    workers. ``lists_out``, when given, receives each model's top-k item codes for the fold's users (key
    ``users``) and its exploration lists of each k (key ``NAME:explore@k``).
    """
    all_users, all_targets = features.target_sets(fold)
    users, targets = sample_users(all_users, all_targets, params.max_users, params.seed)
    block_users, block_targets = sample_users(users, targets, params.max_component_users, params.seed)
    history = features.histories(EVAL_HISTORY if fold == "test" else ("train",))
    k = max(params.ks)
    popularity = sum(imap_parts(_item_events, [(history, i) for i in range(len(history))]),
                     np.zeros(history.n_items, dtype=np.int64))
    new = popularity == 0  # no event in the history the models see: the items a shop added since
    exploration = _Exploration(content, np.flatnonzero(new), params.explore_share, params.ks)
    events_per_user = np.zeros(history.n_users, dtype=np.int64)
    lists: dict[str, list[np.ndarray]] = {name: [] for name in models}
    explored: dict[str, dict[int, list[np.ndarray]]] = {name: {n: [] for n in params.ks} for name in models}
    blocks: dict[str, dict[str, list[np.ndarray]]] = {}
    elapsed = dict.fromkeys(models, 0.0)
    jobs = [(models, features.vocab, history, i, users, block_users, k, exclude_seen, exploration)
            for i in range(len(history))]
    for part in imap_parts(_rank_part, jobs):  # in part order, so lists line up with the sorted users
        events_per_user += part.events_per_user
        for name in models:
            if name in part.lists:
                lists[name].append(part.lists[name])
                elapsed[name] += part.seconds[name]
                for n, top in part.explored[name].items():
                    explored[name][n].append(top)
            for block, top in part.blocks.get(name, {}).items():
                blocks.setdefault(name, {}).setdefault(block, []).append(top)
    cold = events_per_user[users] < COLD_START_MAX_EVENTS
    p_users, p_targets = features.target_sets(fold, event_types=("purchase",))
    sampled = np.isin(p_users, users)  # purchase users outside the evaluated sample are left out
    p_users, p_targets = p_users[sampled], [p_targets[i] for i in np.flatnonzero(sampled)]

    report: dict[str, Any] = {"fold": fold, "users": int(len(users)), "users_with_targets": int(len(all_users)),
                              "cold_start_users": int(cold.sum()), "purchase_users": int(len(p_users)),
                              "parts": len(history), "models": {}}
    for name, model in models.items():
        component = {b: np.concatenate(t) for b, t in blocks.get(name, {}).items()}
        if len(component) > 1:  # a single source's one list is the model's own, already reported
            report["components"] = _summaries(component, block_targets, params.ks)
            report["component_users"] = int(len(block_users))
        if isinstance(model, Recommender) and model.report:
            report["validation"] = model.report
            report["time_cap_hit"] = capped_fits(model.report)
    per_user_all: dict[str, dict[str, np.ndarray]] = {}
    explore_lists: dict[str, dict[int, np.ndarray]] = {}
    for name in models:
        recs = _joined(lists[name], k)
        explore_lists[name] = {n: _joined(explored[name][n], n) for n in params.ks}
        per_user = per_user_all[name] = per_user_metrics(recs, targets, params.ks)
        if lists_out is not None:
            lists_out[name], lists_out["users"] = recs, users
            lists_out |= {f"{name}:explore@{n}": top for n, top in explore_lists[name].items()}
        entry = {
            "overall": _summary(per_user),
            "cold_start": _summary({m: v[cold] for m, v in per_user.items()}),
            "coverage": round(coverage(recs, history.n_items), 6),
            "novelty": round(novelty(recs, popularity), 4),
            # batch scoring time per user of the served path (a two-stage model: the chosen ranker only)
            "ms_per_user": round(1000 * elapsed[name] / max(len(users), 1), 3),
        }
        if len(p_users):
            rows = np.searchsorted(users, p_users)  # purchase users are a subset of ``users`` (both sorted)
            entry["purchase"] = _summary(per_user_metrics(recs[rows], p_targets, params.ks))
        report["models"][name] = entry
    if "baseline" in per_user_all:
        report["lift_vs_baseline"] = {
            name: {
                metric: dict(zip(("mean", "ci_low", "ci_high"),
                                 paired_bootstrap_ci(pu[metric], per_user_all["baseline"][metric],
                                                     params.bootstrap_samples, seed=params.seed), strict=True))
                for metric in ("ndcg@10", "hr@10")
            }
            for name, pu in per_user_all.items() if name != "baseline"
        }
    if "champion" in per_user_all and "candidate" in per_user_all:
        report["vs_champion"] = {"version": models["champion"].version} | {
            metric: dict(zip(("mean", "ci_low", "ci_high"),
                             paired_bootstrap_ci(per_user_all["candidate"][metric], per_user_all["champion"][metric],
                                                 params.bootstrap_samples, seed=params.seed), strict=True))
            for metric in ("ndcg@10", "hr@10")
        }
    report["new_items"] = _new_item_slice(
        {name: (_joined(lists[name], k), explore_lists[name]) for name in models}, targets, new, per_user_all, params,
        content is not None)
    return report


def _joined(parts: list[np.ndarray], k: int) -> np.ndarray:
    """The parts' (users, k) lists as one array (no rows when no part had evaluated users)."""
    return np.concatenate(parts) if parts else np.full((0, k), -1, dtype=np.int64)


def _new_item_slice(lists: dict[str, tuple[np.ndarray, dict[int, np.ndarray]]], targets: list[np.ndarray],
                    new: np.ndarray, per_user_all: dict[str, dict[str, np.ndarray]], params: EvaluateParams,
                    content: bool) -> dict[str, Any]:
    """How often new-item targets are hit by each model's list and by its exploration list (on the users with one),
    and what exploration costs on every evaluated user (``explore - served``, paired bootstrap)."""
    new_targets = [t[new[t]] for t in targets]
    rows = np.flatnonzero([len(t) > 0 for t in new_targets])
    sliced = [new_targets[r] for r in rows]
    section: dict[str, Any] = {"explore_share": params.explore_share, "content_index": content,
                               "new_items": int(new.sum()), "users": int(len(rows)),
                               "targets": int(sum(len(t) for t in sliced)), "models": {}}
    for name, (plain, explored) in lists.items():
        explore_all = {f"{m}@{n}": fn(explored[n], targets, n) for n in params.ks
                       for m, fn in (("hr", hit_rate_at_k), ("ndcg", ndcg_at_k))}
        section["models"][name] = {
            "served": _slice_hits({n: plain[rows] for n in params.ks}, sliced),
            "explore": _slice_hits({n: top[rows] for n, top in explored.items()}, sliced),
            "explore_overall": _summary(explore_all),
            "explore_cost": {metric: dict(zip(("mean", "ci_low", "ci_high"), paired_bootstrap_ci(
                explore_all[metric], per_user_all[name][metric], params.bootstrap_samples, seed=params.seed),
                strict=True)) for metric in ("ndcg@10", "hr@10") if metric in explore_all},
        }
    return section


def _slice_hits(lists: dict[int, np.ndarray], targets: list[np.ndarray]) -> dict[str, float]:
    """HR@k and recall@k of the new-item targets, each k scored on its list of that length."""
    return _summary({f"{m}@{n}": fn(top, targets, n) for n, top in lists.items()
                     for m, fn in (("hr", hit_rate_at_k), ("recall", recall_at_k))})


def run_evaluate(
    features_dir: str | Path, model_dir: str | Path, out_dir: str | Path,
    params: EvaluateParams, split: SplitParams, champion: Champion | None = None,
) -> dict[str, Any]:
    """Stage entry point: writes ``metrics.json`` (for ``dvc metrics``) and ``metrics_by_k.csv`` (for ``dvc plots``).

    With a ``champion``, it is scored on the same test users and ``vs_champion`` holds the paired comparison.
    """
    features = load_features(features_dir)
    models: dict[str, Recommender | Champion] = {n: load_model(model_dir, n) for n in ("candidate", "baseline")}
    if champion is not None:
        models["champion"] = champion
    content_file = Path(model_dir) / CONTENT_FILE
    content = joblib.load(content_file) if content_file.exists() else None
    report = evaluate_models(models, features, params, split.exclude_seen, content=content)
    out = Path(out_dir)
    write_json(out / "metrics.json", report)
    rows = [
        {"model": name, "k": k, **{m: entry["overall"][f"{m}@{k}"] for m in ("hr", "ndcg", "recall", "mrr")}}
        for name, entry in report["models"].items() for k in params.ks
    ]
    with atomic_file(out / "metrics_by_k.csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    return report
