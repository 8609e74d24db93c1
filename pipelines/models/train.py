"""Train stage: fit the configured model for evaluation (train+valid history) and for serving (all events)."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path

import joblib
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.atomic import atomic_dir, write_json
from pipelines.core.config import TrainParams
from pipelines.features.encode import Features, FeatureStore, load_features
from pipelines.features.ranking import ItemInfo
from pipelines.models import Popularity, Recommender, build_model, build_source
from pipelines.models.content import CONTENT_FILE, ContentIndex
from pipelines.models.two_stage import RunJobs, TwoStage

EVAL_HISTORY = ("train", "valid")  # what a model may see when it is scored on test targets
ALL_EVENTS = ("train", "valid", "test")


def fit_two_stage(features: Features | FeatureStore, params: TrainParams, exclude_seen: bool = True,
                  run_jobs: RunJobs | None = None) -> TwoStage:
    """Sources fitted on the train fold, rankers on the validation targets (see ``pipelines.models.two_stage``)."""
    from pipelines.rankers import build_ranker

    info = ItemInfo.build(features.vocab, features.items, features.category)
    sources = {name: build_source(name, params, info.category) for name in params.sources}
    rankers = {name: build_ranker(name, getattr(params.ranker_params, name)) for name in params.rankers}
    model = TwoStage(sources, rankers, info, params.n_per_source, params.validation_roles, params.seed, exclude_seen,
                     params.max_ranker_users)
    return model.fit_parts(features.histories(("train",)), features.target_sets("valid"), run_jobs)


def fit_models(features: Features | FeatureStore, params: TrainParams, exclude_seen: bool = True,
               run_jobs: RunJobs | None = None) -> dict[str, Recommender]:
    """The candidate (scored on test), the serving model (all events) and the popularity baseline."""
    return dict(iter_models(features, params, exclude_seen, run_jobs))


def iter_models(features: Features | FeatureStore, params: TrainParams, exclude_seen: bool = True,
                run_jobs: RunJobs | None = None) -> Iterator[tuple[str, Recommender]]:
    """``fit_models`` one model at a time, so a caller can store each and let it go before the next is built.

    Histories are held as the features' parts of whole users; the models keep no user state unless there is a
    single part, which they then score directly (evaluation and batch lists attach one part at a time).
    ``run_jobs`` runs the independent fits of a two-stage model (see ``TwoStage.fit``), e.g. as parallel tasks.
    """
    histories = {"baseline": features.histories(EVAL_HISTORY), "candidate": features.histories(EVAL_HISTORY),
                 "serving": features.histories(ALL_EVENTS)}

    def ready(name: str, model: Recommender) -> tuple[str, Recommender]:
        history = histories[name]
        return name, model.attach(history.part(0)) if len(history) == 1 else model

    yield ready("baseline", Popularity(params.event_weights, params.popularity_half_life_days)
                .fit_parts(histories["baseline"]))
    if params.model == "two_stage":
        model = fit_two_stage(features, params, exclude_seen, run_jobs)
        for name in ("candidate", "serving"):  # moved in place: the train-fold sources are done once rankers are
            yield ready(name, copy.copy(model.move_to(histories[name])))  # the copy keeps its sources after a move
    else:
        for name in ("candidate", "serving"):
            yield ready(name, build_model(params).fit_parts(histories[name]))


def run_train(
    features_dir: str | Path, out_dir: str | Path, params: TrainParams, exclude_seen: bool = True,
    run_jobs: RunJobs | None = None,
) -> dict[str, object]:
    """Stage entry point: write ``candidate.joblib``, ``baseline.joblib``, ``serving.joblib`` and ``meta.json``."""
    start = time.perf_counter()
    features = load_features(features_dir)
    report: dict[str, object] = {}
    with atomic_dir(out_dir) as tmp:
        for name, model in iter_models(features, params, exclude_seen, run_jobs):  # stored as built: one in memory
            joblib.dump(model, tmp / f"{name}.joblib")
            if name == "candidate":
                report = model.report
            del model
        meta = {
            "model": params.model,
            "two_stage": report or None,
            "params": params.model_dump(),
            "users": features.vocab.n_users,
            "items": features.vocab.n_items,
            "fit_seconds": round(time.perf_counter() - start, 2),
            "trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_json(tmp / "meta.json", meta)
        items = catalogue(features)
        pq.write_table(items, tmp / "items.parquet")
        joblib.dump(ContentIndex.fit(items.to_pandas()), tmp / CONTENT_FILE)
    return meta


def catalogue(features: Features) -> pa.Table:
    """Every item the model ranks, in code order, with its category (for serving filters and explanations) and
    the content the data set's catalogue gives (attributes, title, brand, price: for the content index)."""
    category = pa.array(features.serving_category.to_numpy(dtype=object), pa.string(), from_pandas=True)
    table = pa.table({"item_id": features.vocab.arrow_items, "category_id": category})
    if features.items is None:
        return table
    listed = features.items.drop_duplicates("item_id", keep="last").set_index("item_id")
    aligned = listed.reindex(pd.Index(features.vocab.items))
    for column in ("attributes", "title", "brand", "price"):
        if column in aligned:
            table = table.append_column(column, pa.array(aligned[column].to_numpy(dtype=object), from_pandas=True))
    return table


def load_model(model_dir: str | Path, name: str = "serving") -> Recommender:
    return joblib.load(Path(model_dir) / f"{name}.joblib")
