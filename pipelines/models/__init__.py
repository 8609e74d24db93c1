"""Candidate sources and two-stage models, all behind ``Recommender`` (fit on history, score and rank users)."""

from __future__ import annotations

import numpy as np

from pipelines.core.config import TrainParams
from pipelines.models.base import Ranked, Recommender
from pipelines.models.covisit import CoVisitation
from pipelines.models.itemcos import ItemCosine
from pipelines.models.popularity import CategoryPopularity, Popularity
from pipelines.models.random_model import RandomRecommender
from pipelines.models.transitions import Transitions


def build_source(name: str, params: TrainParams, item_category: np.ndarray | None = None) -> Recommender:
    """A fresh, unfitted candidate source configured from ``params`` (deep models import TensorFlow lazily)."""
    w, half_life = params.event_weights, params.popularity_half_life_days
    if name == "popularity":
        return Popularity(w, half_life)
    if name == "category_popularity":
        if item_category is None:
            raise ValueError("category_popularity needs the item categories")
        return CategoryPopularity(item_category, w, half_life)
    if name == "covisit":
        return CoVisitation(w, params.covisit_window, params.history_len, half_life, params.max_neighbours)
    if name == "itemcos":
        return ItemCosine(w, params.history_len, params.itemcos_neighbours)
    if name == "transitions":
        return Transitions(params.transitions_last_n, neighbours=params.max_neighbours)
    if name == "sasrec":
        from pipelines.models.sasrec import SASRec

        return SASRec(params.sasrec, seed=params.seed)
    if name == "lightgcn":
        from pipelines.models.lightgcn import LightGCN

        return LightGCN(params.lightgcn, seed=params.seed, event_weights=w)
    raise ValueError(f"unknown source {name!r}")


def build_model(params: TrainParams) -> Recommender:
    """The single model named in ``params.model`` (``two_stage`` is built by ``pipelines.models.train``)."""
    if params.model == "popularity":
        return Popularity(params.event_weights, params.popularity_half_life_days)
    if params.model == "random":
        return RandomRecommender(params.seed)
    return CoVisitation(params.event_weights, params.covisit_window, params.history_len,
                        params.popularity_half_life_days, params.max_neighbours)


__all__ = ["Ranked", "Recommender", "Popularity", "CategoryPopularity", "CoVisitation", "ItemCosine", "Transitions",
           "RandomRecommender",
           "build_model", "build_source"]
