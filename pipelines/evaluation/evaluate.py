"""Evaluate stage: full-ranking metrics on the test targets, segments, and the lift over popularity."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.core.atomic import atomic_file, write_json
from pipelines.core.config import EvaluateParams, SplitParams
from pipelines.core.engine import imap_parts
from pipelines.evaluation.champion import Champion
from pipelines.evaluation.metrics import coverage, novelty, paired_bootstrap_ci, per_user_metrics
from pipelines.features.encode import Features, FeatureStore, load_features
from pipelines.features.interactions import PartedHistory, Vocab
from pipelines.models import Recommender
from pipelines.models.train import EVAL_HISTORY, load_model
from pipelines.models.two_stage import sample_users

COLD_START_MAX_EVENTS = 3  # users with fewer training events than this form the cold-start segment


def _summary(per_user: dict[str, np.ndarray]) -> dict[str, float]:
    return {name: round(float(v.mean()), 6) if len(v) else 0.0 for name, v in per_user.items()}


def _summaries(lists: dict[str, np.ndarray], targets: list[np.ndarray], ks: list[int]) -> dict[str, Any]:
    """Metrics of each building block's lists (``source:NAME``, ``ranker:NAME``) on the evaluated users."""
    return {part: _summary(per_user_metrics(r, targets, ks)) for part, r in lists.items()}


@dataclass
class _PartLists:
    """What ranking one part's evaluated users gives: each model's lists and time, building blocks, counts."""

    lists: dict[str, np.ndarray]
    seconds: dict[str, float]
    blocks: dict[str, dict[str, np.ndarray]]
    events_per_user: np.ndarray
    popularity: np.ndarray


def _rank_part(models: dict[str, Recommender | Champion], vocab: Vocab, history: PartedHistory, i: int,
               users: np.ndarray, block_users: np.ndarray, k: int, exclude_seen: bool) -> _PartLists:
    """Rank the evaluated users of part ``i`` with every model attached to it (a task on a cluster)."""
    part = history.part(i)
    out = _PartLists({}, {}, {}, np.bincount(part.user, minlength=history.n_users),
                     np.bincount(part.item, minlength=history.n_items).astype(np.float64))
    mine = part.users_in(users)
    if not len(mine):
        return out
    for name, model in models.items():
        start = time.perf_counter()
        if isinstance(model, Champion):
            recs = model.lists(vocab, mine, k, exclude_seen)
        else:
            model = model if len(history) == 1 else model.attach(part)  # one part: fitted on it already
            recs = model.rank(mine, k, exclude_seen).items  # the served path: the lists the API would give
        out.seconds[name] = time.perf_counter() - start  # timed alone: evaluating every building block is not serving
        out.lists[name] = recs
        checked = mine[np.isin(mine, block_users)]
        if isinstance(model, Recommender) and len(checked):
            out.blocks[name] = model.component_lists(checked, k, exclude_seen)
    return out


def evaluate_models(
    models: dict[str, Recommender | Champion], features: Features | FeatureStore, params: EvaluateParams,
    exclude_seen: bool, fold: str = "test", lists_out: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Metrics of every model on ``fold``, with segments and bootstrap intervals against ``baseline``.

    Users are ranked one part of the history at a time (each model attached to the part), so memory holds one
    part's users whatever the number of users; with a Dask cluster configured the parts are tasks on its
    workers. ``lists_out``, when given, receives each model's top-k item codes for the fold's users (key
    ``users``).
    """
    all_users, all_targets = features.target_sets(fold)
    users, targets = sample_users(all_users, all_targets, params.max_users, params.seed)
    block_users, block_targets = sample_users(users, targets, params.max_component_users, params.seed)
    history = features.histories(EVAL_HISTORY if fold == "test" else ("train",))
    k = max(params.ks)
    events_per_user = np.zeros(history.n_users, dtype=np.int64)
    popularity = np.zeros(history.n_items, dtype=np.float64)
    lists: dict[str, list[np.ndarray]] = {name: [] for name in models}
    blocks: dict[str, dict[str, list[np.ndarray]]] = {}
    elapsed = dict.fromkeys(models, 0.0)
    jobs = [(models, features.vocab, history, i, users, block_users, k, exclude_seen) for i in range(len(history))]
    for part in imap_parts(_rank_part, jobs):  # in part order, so lists line up with the sorted users
        events_per_user += part.events_per_user
        popularity += part.popularity
        for name in models:
            if name in part.lists:
                lists[name].append(part.lists[name])
                elapsed[name] += part.seconds[name]
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
    per_user_all: dict[str, dict[str, np.ndarray]] = {}
    for name in models:
        recs = np.concatenate(lists[name]) if lists[name] else np.full((0, k), -1, dtype=np.int64)
        per_user = per_user_all[name] = per_user_metrics(recs, targets, params.ks)
        if lists_out is not None:
            lists_out[name], lists_out["users"] = recs, users
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
    return report


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
    report = evaluate_models(models, features, params, split.exclude_seen)
    out = Path(out_dir)
    write_json(out / "metrics.json", report)
    rows = [
        {"model": name, "k": k, **{m: entry["overall"][f"{m}@{k}"] for m in ("hr", "ndcg", "recall", "mrr")}}
        for name, entry in report["models"].items() for k in params.ks
    ]
    with atomic_file(out / "metrics_by_k.csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    return report
