"""Learning-to-rank models that re-order each user's candidates: LightGBM, XGBoost and a small neural ranker.

All share ``Ranker.fit(train, valid) / predict(data)`` over ``RankingData``; libraries are imported lazily.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from pipelines.core.config import DeepParams
from pipelines.rankers.base import Ranker, RankingData
from pipelines.rankers.deep_ranker import DeepRanker
from pipelines.rankers.lightgbm_ranker import LightGBMRanker
from pipelines.rankers.metrics import ndcg_at_k_grouped
from pipelines.rankers.xgboost_ranker import XGBoostRanker

RANKERS: dict[str, type[Ranker]] = {"lightgbm": LightGBMRanker, "xgboost": XGBoostRanker, "deep": DeepRanker}


def build_ranker(name: str, params: BaseModel | None = None, **overrides: Any) -> Ranker:
    """A fresh ranker by name ("lightgbm", "xgboost" or "deep") from its params model (default: the shipped one),
    with keyword ``overrides`` on top (checked: an unknown name is an error)."""
    if name not in RANKERS:
        raise ValueError(f"unknown ranker {name!r}; choose from {sorted(RANKERS)}")
    return RANKERS[name](params, **overrides)


__all__ = ["RANKERS", "DeepParams", "DeepRanker", "LightGBMRanker", "Ranker", "RankingData", "XGBoostRanker",
           "build_ranker", "ndcg_at_k_grouped"]
