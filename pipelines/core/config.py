"""Typed view of ``params.yaml``: every stage takes its section of this model, never raw dicts."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipelines.core.errors import ShoprecError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataParams(_Section):
    # An ingest SOURCE spec (``taobao:PATH``, ``seqfile:PATH`` ...) or ``synthetic`` for the embedded generator.
    source: str = "synthetic"


class SyntheticParams(_Section):
    users: int = Field(3000, ge=10)
    items: int = Field(2000, ge=20)
    categories: int = Field(30, ge=2)
    events_per_user: float = Field(40.0, gt=1)
    days: int = Field(9, ge=1)
    start: str = "2017-11-25T00:00:00+00:00"
    seed: int = 7


class ValidateParams(_Section):
    policy: Literal["fail", "quarantine"] = "fail"
    # quarantine policy: the run goes on only if the quarantined fraction of rows is below this.
    max_bad_fraction: float = Field(0.01, ge=0, le=1)
    max_duplicate_fraction: float = Field(0.01, ge=0, le=1)
    min_events_per_user: int = Field(3, ge=1)
    # fraction of events that must belong to users with at least ``min_events_per_user`` events
    min_trainable_fraction: float = Field(0.5, ge=0, le=1)
    # a new data version may shrink by at most this fraction against the previous validated version
    max_row_drop: float = Field(0.5, ge=0, le=1)
    # override the source's documented window (ISO 8601); null keeps the manifest's window
    window_start: str | None = None
    window_end: str | None = None


class SplitParams(_Section):
    protocol: Literal["leave_one_out", "temporal"] = "leave_one_out"
    test_days: float = Field(1.0, gt=0)
    valid_days: float = Field(1.0, gt=0)
    # exclude items already in the user's history from targets and recommendations
    exclude_seen: bool = True


SourceName = Literal["popularity", "category_popularity", "covisit", "itemcos", "transitions", "sasrec", "lightgcn"]
RankerName = Literal["lightgbm", "xgboost", "deep"]


class TrainParams(_Section):
    # two_stage: candidate sources + learned rankers; popularity / covisit: one simple model on its own;
    # random: the floor (and the degraded model the gate must reject)
    model: Literal["popularity", "covisit", "two_stage", "random"] = "two_stage"
    event_weights: dict[str, float] = {"view": 1.0, "cart": 3.0, "fav": 2.0, "purchase": 4.0}
    popularity_half_life_days: float = Field(3.0, gt=0)
    covisit_window: int = Field(3, ge=1)
    history_len: int = Field(20, ge=1)
    transitions_last_n: int = Field(3, ge=1)
    itemcos_neighbours: int = Field(200, ge=1)
    sources: list[SourceName] = ["covisit", "itemcos", "transitions", "popularity", "category_popularity",
                                 "sasrec", "lightgcn"]
    rankers: list[RankerName] = ["lightgbm", "xgboost", "deep"]
    n_per_source: int = Field(50, ge=1)  # each source's top-n joins the candidate pool
    holdout_share: float = Field(0.2, gt=0, lt=1)  # validation users kept out of ranker training, to choose one
    # at scale: a seeded sample of this many validation users trains and selects the rankers (null: all)
    max_ranker_users: int | None = Field(None, ge=10)
    # hyper-parameter overrides per deep model / ranker (see SASRecParams, LightGCNParams and the rankers)
    sasrec: dict[str, float | int | str | None] = {}
    lightgcn: dict[str, float | int | str | None] = {}
    ranker_params: dict[RankerName, dict[str, float | int | str | None]] = {}
    seed: int = 0


class EvaluateParams(_Section):
    ks: list[int] = [5, 10, 20]
    bootstrap_samples: int = Field(1000, ge=0)
    # at scale: evaluate on a seeded sample of this many test users (null: all); metrics.json records it
    max_users: int | None = Field(None, ge=10)
    seed: int = 0


class GateParams(_Section):
    min_ndcg_at_10: float = 0.0
    min_hr_at_10: float = 0.0
    # the candidate must beat popularity on NDCG@10 by at least this, with the bootstrap CI above zero
    min_lift_over_popularity: float = 0.0
    # cold-start users (< 3 training events) may lose at most this much NDCG@10 against popularity
    max_cold_start_regression: float = 0.02
    max_ms_per_user: float = Field(50.0, gt=0)  # batch scoring latency budget
    # against the current champion on the same test users: reject when the bootstrap CI of the candidate's
    # NDCG@10 gain lies entirely below -max_champion_regression (worse beyond its confidence interval)
    max_champion_regression: float = Field(0.0, ge=0)


class Params(_Section):
    data: DataParams = DataParams()
    synthetic: SyntheticParams = SyntheticParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    split: SplitParams = SplitParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    gate: GateParams = GateParams()

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` overrides (values parsed as YAML), like ``dvc exp run -S``."""
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ShoprecError(f"--set {item}: expected KEY=VALUE, e.g. train.sasrec.time_budget_s=20")
        node = raw
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ShoprecError(f"--set {item}: {part} is not a section")
        node[leaf] = yaml.safe_load(value)
    return raw


def load_params(path: str | Path = "params.yaml", overrides: list[str] | None = None) -> Params:
    """Read and check ``params.yaml`` (plus overrides); a bad field is reported as ``FILE: field: problem``."""
    p = Path(path)
    try:
        raw = (yaml.safe_load(p.read_text()) or {}) if p.exists() else {}
    except yaml.YAMLError as exc:
        raise ShoprecError(f"{p}: not valid YAML: {str(exc).splitlines()[0]}") from None
    raw = apply_overrides(raw, overrides or [])
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(x) for x in err["loc"])
        raise ShoprecError(f"{p}: {field}: {err['msg']}") from None
