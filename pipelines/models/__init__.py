"""Candidate sources and rankers, all behind ``Recommender`` (fit on history, score users)."""

from pipelines.config import TrainParams
from pipelines.models.base import Recommender
from pipelines.models.covisit import CoVisitation
from pipelines.models.popularity import Popularity


def build_model(params: TrainParams) -> Recommender:
    """The model named in ``params.train.model``, configured from the same section."""
    if params.model == "popularity":
        return Popularity(params.event_weights, params.popularity_half_life_days)
    return CoVisitation(params.event_weights, params.covisit_window, params.history_len,
                        params.popularity_half_life_days)


__all__ = ["Recommender", "Popularity", "CoVisitation", "build_model"]
