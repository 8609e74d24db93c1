"""The one interface the learning-to-rank stage uses: ``fit(train, valid)`` then ``predict(data)`` per row."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Self

import numpy as np

from pipelines.core.config import BoostedParams, with_overrides


@dataclass
class RankingData:
    """One row per (user, candidate); rows of a user are contiguous (a query group).

    Arrays are coerced to the documented dtypes on construction (no copy when they already match), and
    shapes are checked so that a misaligned ``group`` fails here rather than deep inside a library.
    """

    X: np.ndarray  # float32 (n_rows, n_features); NaN allowed for missing
    group: np.ndarray  # int64 sizes of consecutive query groups (sum == n_rows)
    y: np.ndarray | None  # float32 relevance (1 = the target item, 0 otherwise); None at inference
    feature_names: list[str]
    item_codes: np.ndarray | None = None  # int64 (n_rows,) item code per row (for the deep ranker's embeddings)
    user_codes: np.ndarray | None = None  # int64 (n_rows,)

    def __post_init__(self) -> None:
        self.X = np.asarray(self.X, dtype=np.float32)
        self.group = np.asarray(self.group, dtype=np.int64)
        if self.X.ndim != 2 or self.X.shape[1] != len(self.feature_names):
            raise ValueError(f"X has shape {self.X.shape} but there are {len(self.feature_names)} feature names")
        if (self.group <= 0).any() or int(self.group.sum()) != len(self.X):
            raise ValueError(f"group sizes must be positive and sum to {len(self.X)} rows, got {self.group.sum()}")
        if self.y is not None:
            self.y = self._per_row(self.y, np.float32, "y")
        if self.item_codes is not None:
            self.item_codes = self._per_row(self.item_codes, np.int64, "item_codes")
        if self.user_codes is not None:
            self.user_codes = self._per_row(self.user_codes, np.int64, "user_codes")

    def _per_row(self, values: np.ndarray, dtype: type, name: str) -> np.ndarray:
        out = np.asarray(values, dtype=dtype)
        if out.shape != (len(self.X),):
            raise ValueError(f"{name} has shape {out.shape}, expected ({len(self.X)},)")
        return out

    @property
    def n_rows(self) -> int:
        return len(self.X)

    @classmethod
    def concat(cls, parts: list[RankingData]) -> RankingData:
        """The query groups of ``parts`` one after another (all with the same features)."""
        def joined(name: str) -> np.ndarray | None:
            values = [getattr(p, name) for p in parts]
            return None if any(v is None for v in values) else np.concatenate(values)

        return cls(X=np.concatenate([p.X for p in parts]), group=np.concatenate([p.group for p in parts]),
                   y=joined("y"), feature_names=parts[0].feature_names, item_codes=joined("item_codes"),
                   user_codes=joined("user_codes"))

    @property
    def qid(self) -> np.ndarray:
        """Query id per row (0, 0, ..., 1, 1, ...): the sorted form XGBoost and segment ops want."""
        return np.repeat(np.arange(len(self.group), dtype=np.int64), self.group)

    @property
    def labels(self) -> np.ndarray:
        """Relevance labels, or an error naming the problem when the data is inference-only."""
        if self.y is None:
            raise ValueError("this RankingData has no labels (y is None); fit and evaluation need them")
        return self.y


class Ranker(ABC):
    """Scores (user, candidate) rows; only the order of scores within a query group is meaningful."""

    name: str = "ranker"
    best_iteration_: int = 0
    history_: dict[str, list[float]]
    feature_names_: list[str]

    @abstractmethod
    def fit(self, train: RankingData, valid: RankingData | None = None) -> Self:
        """Learn from ``train``; ``valid`` is used for early stopping only (never for fitting weights)."""

    @abstractmethod
    def predict(self, data: RankingData) -> np.ndarray:
        """float32 score per row, higher is better."""

    @property
    def report(self) -> dict[str, Any]:
        """What fitting measured (e.g. how an iterative ranker stopped); {} when nothing."""
        return {}

    def feature_importances(self) -> dict[str, float]:
        """Feature name -> share of the model's total importance; {} when the model has no such notion."""
        return {}

    def _check_features(self, data: RankingData) -> None:
        """Refuse data whose columns differ from training: a silent column shift would still 'work'."""
        fitted = getattr(self, "feature_names_", None)
        if fitted is None:
            raise RuntimeError(f"{self.name}: call fit() before predict()")
        if list(data.feature_names) != fitted:
            raise ValueError(f"{self.name}: feature names differ from training ({len(fitted)} features)")


class BoostedRanker(Ranker):
    """A GBDT ranker early-stopped on the valid NDCG@``eval_at``: LightGBM and XGBoost share this setup.

    ``params`` (the subclass's ``PARAMS`` model, e.g. ``LightGBMParams``) with keyword ``overrides``: every field
    but ``early_stopping_rounds`` and ``eval_at`` goes to the library's ranker. After ``fit``:
    ``best_iteration_`` (trees kept) and ``history_`` (valid ndcg per round).
    """

    PARAMS: type[BoostedParams] = BoostedParams

    def __init__(self, params: BoostedParams | None = None, **overrides: Any):
        self.params = with_overrides(params or self.PARAMS(), overrides)
        self.early_stopping_rounds = self.params.early_stopping_rounds
        self.eval_at = self.params.eval_at
        self.best_iteration_ = 0
        self.history_: dict[str, list[float]] = {}
        self._model: Any = None

    def library_params(self) -> dict[str, Any]:
        """The library's keyword arguments; ``n_jobs`` of None becomes every core of the machine that fits."""
        library = self.params.model_dump(exclude={"early_stopping_rounds", "eval_at"})
        if "n_jobs" in library and library["n_jobs"] is None:
            library["n_jobs"] = machine_cores()
        return library


def machine_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, e.g. a container's CPU set)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def importance_shares(names: list[str], values: np.ndarray) -> dict[str, float]:
    """Importances scaled to sum to 1, so that rankers (and runs) are comparable."""
    values = np.asarray(values, dtype=np.float64)
    total = values.sum()
    shares = values / total if total > 0 else values
    return {name: float(v) for name, v in zip(names, shares, strict=True)}


def passive_openmp() -> None:
    """Let idle OpenMP threads sleep instead of spin: call before the first lightgbm / xgboost import.

    On a shared 2-core machine spinning workers fight other processes; measured here, LightGBM with 2 threads
    was ~4x slower than with 1 thread (and ~1.5x faster than 1 thread once passive). Only takes effect if no
    OpenMP runtime read the variable yet; an explicit OMP_WAIT_POLICY in the environment wins.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
