"""LambdaMART with XGBoost: a second, independently implemented GBDT ranker to check LightGBM against.

XGBoost is imported inside methods so that importing the package stays cheap. With ``SHOPREC_DASK_ADDRESS``
set and training rows worth spreading (``distributed.cluster_for``), ``fit`` trains through ``xgboost.dask`` and
keeps a local ``XGBRanker`` of the result.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from pipelines.core.config import XGBoostParams
from pipelines.rankers.base import BoostedRanker, RankingData, importance_shares, passive_openmp
from pipelines.rankers.distributed import cluster_for, to_dask

if TYPE_CHECKING:
    from distributed import Client

log = logging.getLogger(__name__)


class XGBoostRanker(BoostedRanker):
    """``XGBRanker`` with objective rank:ndcg, early-stopped on the valid NDCG@``eval_at`` (see ``BoostedRanker``)."""

    name = "xgboost"
    PARAMS = XGBoostParams

    def fit(self, train: RankingData, valid: RankingData | None = None) -> Self:
        """Boost up to ``n_estimators`` trees; with ``valid``, stop after ``early_stopping_rounds`` without gain."""
        passive_openmp()
        import xgboost as xgb

        self.feature_names_ = list(train.feature_names)
        settings = {"objective": "rank:ndcg", "eval_metric": f"ndcg@{self.eval_at}",
                    "early_stopping_rounds": self.early_stopping_rounds if valid is not None else None,
                    **self.library_params()}
        client = cluster_for(train)
        if client is None:
            model = xgb.XGBRanker(**settings)
            eval_args: dict[str, Any] = {}
            if valid is not None:
                eval_args = {"eval_set": [(valid.X, valid.labels)], "eval_qid": [valid.qid]}
            model.fit(train.X, train.labels, qid=train.qid, verbose=False, **eval_args)
        else:
            model = _fit_dask(client, settings, train, valid)
        self._model = model
        self.history_, self.best_iteration_ = {}, model.n_estimators
        if valid is not None:
            results = model.evals_result()["validation_0"]
            self.history_ = {f"valid_{name}": [float(v) for v in values] for name, values in results.items()}
            self.best_iteration_ = model.best_iteration + 1  # 0-based there; count trees kept, as LightGBM does
        log.info("xgboost: %d trees kept", self.best_iteration_)
        return self

    def predict(self, data: RankingData) -> np.ndarray:
        """Scores from the best iteration (the sklearn wrapper applies ``best_iteration`` itself)."""
        self._check_features(data)
        return self._model.predict(data.X).astype(np.float32)

    def feature_importances(self) -> dict[str, float]:
        """Share of total split gain per feature over the kept trees; features never split on get 0."""
        kept = self._model.get_booster()[: self.best_iteration_]
        gains = kept.get_score(importance_type="total_gain")
        values = np.array([gains.get(f"f{i}", 0.0) for i in range(len(self.feature_names_))])
        return importance_shares(self.feature_names_, values)


def _fit_dask(client: Client, settings: dict[str, Any], train: RankingData, valid: RankingData | None) -> Any:
    """``xgboost.dask`` ranking over whole-group partitions (``qid``), early-stopped on the cluster; returns the
    local ``XGBRanker`` loaded from the trained booster, so predicting needs neither Dask nor the cluster."""
    import xgboost as xgb
    from xgboost import dask as dxgb

    data = to_dask(train, client)
    model = dxgb.DaskXGBRanker(allow_group_split=True, **settings)  # partitions already hold whole groups
    model.client = client
    eval_args: dict[str, Any] = {}
    if valid is not None:
        dvalid = to_dask(valid, client)
        eval_args = {"eval_set": [(dvalid.X, dvalid.y)], "eval_qid": [dvalid.qid]}
    with client.as_current():
        model.fit(data.X, data.y, qid=data.qid, **eval_args)
    local = xgb.XGBRanker(**settings)
    local.load_model(model.get_booster().save_raw())  # carries best_iteration for predict
    local.evals_result_ = model.evals_result()
    log.info("xgboost (dask, %d partitions) trained", data.n_partitions)
    return local
