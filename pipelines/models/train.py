"""Train stage: fit the configured model for evaluation (train+valid history) and for serving (all events)."""

from __future__ import annotations

import time
from pathlib import Path

import joblib
import pandas as pd

from pipelines.core.atomic import atomic_dir, write_json
from pipelines.core.config import TrainParams
from pipelines.features.encode import Features, load_features
from pipelines.features.ranking import ItemInfo, item_categories
from pipelines.models import Popularity, Recommender, build_model, build_source
from pipelines.models.two_stage import RunJobs, TwoStage

EVAL_HISTORY = ("train", "valid")  # what a model may see when it is scored on test targets
ALL_EVENTS = ("train", "valid", "test")


def fit_two_stage(features: Features, params: TrainParams, exclude_seen: bool = True,
                  run_jobs: RunJobs | None = None) -> TwoStage:
    """Sources fitted on the train fold, rankers on the validation targets (see ``pipelines.models.two_stage``)."""
    from pipelines.rankers import build_ranker

    known = features.events[features.events["fold"] != "test"]
    info = ItemInfo.build(features.vocab, features.items, known)
    sources = {name: build_source(name, params, info.category) for name in params.sources}
    rankers = {name: build_ranker(name, getattr(params.ranker_params, name)) for name in params.rankers}
    model = TwoStage(sources, rankers, info, params.n_per_source, params.holdout_share, params.seed, exclude_seen,
                     params.max_ranker_users)
    return model.fit(features.history(("train",)), features.target_sets("valid"), run_jobs)


def fit_models(features: Features, params: TrainParams, exclude_seen: bool = True,
               run_jobs: RunJobs | None = None) -> dict[str, Recommender]:
    """The candidate (scored on test), the serving model (all events) and the popularity baseline.

    ``run_jobs`` runs the independent fits of a two-stage model (see ``TwoStage.fit``), e.g. as parallel tasks.
    """
    eval_history = features.history(EVAL_HISTORY)
    baseline = Popularity(params.event_weights, params.popularity_half_life_days).fit(eval_history)
    if params.model == "two_stage":
        model = fit_two_stage(features, params, exclude_seen, run_jobs)
        return {"candidate": model.with_history(eval_history), "baseline": baseline,
                "serving": model.with_history(features.history(ALL_EVENTS))}
    return {
        "candidate": build_model(params).fit(eval_history),
        "baseline": baseline,
        "serving": build_model(params).fit(features.history(ALL_EVENTS)),
    }


def run_train(
    features_dir: str | Path, out_dir: str | Path, params: TrainParams, exclude_seen: bool = True,
    run_jobs: RunJobs | None = None,
) -> dict[str, object]:
    """Stage entry point: write ``candidate.joblib``, ``baseline.joblib``, ``serving.joblib`` and ``meta.json``."""
    start = time.perf_counter()
    features = load_features(features_dir)
    models = fit_models(features, params, exclude_seen, run_jobs)
    candidate = models["candidate"]
    meta = {
        "model": params.model,
        "two_stage": candidate.report or None,
        "params": params.model_dump(),
        "users": len(features.vocab.users),
        "items": len(features.vocab.items),
        "fit_seconds": round(time.perf_counter() - start, 2),
        "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with atomic_dir(out_dir) as tmp:
        for name, model in models.items():
            joblib.dump(model, tmp / f"{name}.joblib")
        write_json(tmp / "meta.json", meta)
        catalogue(features).to_parquet(tmp / "items.parquet", index=False)
    return meta


def catalogue(features: Features) -> pd.DataFrame:
    """Every item the model ranks, in code order, with its category (for serving filters and explanations)."""
    category = item_categories(features.vocab.items, features.items, features.events)
    return pd.DataFrame({"item_id": features.vocab.items, "category_id": category.to_numpy()})


def load_model(model_dir: str | Path, name: str = "serving") -> Recommender:
    return joblib.load(Path(model_dir) / f"{name}.joblib")
