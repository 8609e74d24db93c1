"""Typed view of ``params.yaml``: every stage takes its section of this model, never raw dicts.

One default per parameter: the defaults below are the values that ship, and ``params.yaml`` lists every one of
them with the same value (``tests/code/test_params.py``), so leaving a key out never changes a result. The
hyper-parameter models (SASRec, LightGCN, the rankers) are the models' own configuration too: the library
classes take them, so there is no second set of defaults in the model code.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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
    # lognormal spread of how many users take a leaf category as an interest, on top of its size; the real
    # Taobao log's category popularity is far more skewed (``generate.taobao_proportions`` sets it)
    category_popularity_sigma: float = Field(0.5, ge=0)
    # true: leaves get evenly spaced quantiles of that lognormal (in random order) instead of independent draws,
    # so a log with few categories already has the spread's shape
    category_popularity_quantiles: bool = False


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


class _Hyper(_Section):
    """Hyper-parameters of one model; frozen, so a fitted model's settings cannot change under it."""

    model_config = ConfigDict(extra="forbid", frozen=True)


HyperT = TypeVar("HyperT", bound=_Hyper)


def with_overrides(params: HyperT, overrides: Mapping[str, Any]) -> HyperT:
    """``params`` with ``overrides`` applied and checked as params.yaml is (an unknown name is an error)."""
    return params.model_validate(params.model_dump() | dict(overrides)) if overrides else params


class SASRecParams(_Hyper):
    """SASRec (``train.sasrec``); ``loss="auto"`` picks the full softmax up to ``full_softmax_max_items`` items.

    lr 0.002 and dropout 0.5 were chosen on Beauty's validation split. Training length is ``max_epochs`` with
    ``patience``: 22 epochs is what the former 240 s wall-clock budget reached on Beauty on an idle machine
    (validation NDCG@10 was still rising), so the shipped result is unchanged but no longer depends on the
    machine's load. ``time_budget_s`` is only a safety cap (3x that run); hitting it is recorded. The seed is
    ``train.seed``.
    """

    max_len: int = Field(50, ge=1)
    dim: int = Field(64, ge=1)
    blocks: int = Field(2, ge=1)
    heads: int = Field(1, ge=1)
    dropout: float = Field(0.5, ge=0, lt=1)
    lr: float = Field(0.002, gt=0)
    batch_size: int = Field(128, ge=1)
    max_epochs: int = Field(22, ge=1)  # also the number of epochs trained when fit() gets no validation targets
    patience: int = Field(10, ge=1)  # epochs without a better validation NDCG@10 before stopping
    loss: Literal["auto", "softmax", "sampled"] = "auto"
    num_negatives: int = Field(1024, ge=1)  # shared by the whole batch (sampled softmax only)
    # Full softmax materialises (target positions x catalogue) logits per step: at batch 128 x max_len 50 and 20k
    # items that is at most ~0.5 GB with its gradient. Larger catalogues switch to the sampled softmax.
    full_softmax_max_items: int = Field(20_000, ge=1)
    # input type of the full softmax's three catalogue-wide matmuls (softmax and sums stay float32); auto: bfloat16
    # where the CPU has AMX / AVX512-BF16, else float32. float32 by default: on Beauty bfloat16 was ~10 % faster an
    # epoch than float32 with the fused softmax (6.35 vs 7.08 s, AMX CPU) but the process grew with the epochs (8
    # epochs: 2.50 GB RSS against 1.42 GB; the full benchmark peaked at 5.3 GB against 3.9 GB before), and
    # neither oneDNN's primitive cache nor malloc's mmap threshold changed that
    softmax_dtype: Literal["auto", "float32", "bfloat16"] = "float32"
    # safety cap: no epoch starts that would end past it (the first always runs); recorded when it stops a fit
    time_budget_s: float | None = Field(720.0, ge=0)
    # from this many items top lists come from an approximate index of the item vectors (pipelines/models/retrieval.py)
    ann_min_items: int = Field(50_000, ge=1)

    @model_validator(mode="after")
    def _heads_divide_dim(self) -> Self:
        if self.dim % self.heads:
            raise ValueError(f"sasrec: dim {self.dim} is not divisible by heads {self.heads}")
        return self

    def loss_for(self, n_items: int) -> Literal["softmax", "sampled"]:
        if self.loss != "auto":
            return self.loss
        return "softmax" if n_items <= self.full_softmax_max_items else "sampled"


class LightGCNParams(_Hyper):
    """LightGCN (``train.lightgcn``). ``patience`` counts evaluations (every ``eval_every`` epochs), not epochs.

    The best validation NDCG@10 on Amazon Beauty within a 4-minute CPU budget: 3 layers beat 2, lr 1e-2 beat 5e-3
    (both stopped by the budget), l2 1e-3 and 4 negatives edged out 1e-4 and 1. ``max_epochs`` 10: on Beauty's
    validation users its own NDCG@10 was 0.0336 / 0.0354 / 0.0362 / 0.0373 after 5 / 10 / 15 / 30 epochs, so the
    last 20 epochs (70 s) bought 0.002 of a source the rankers weigh little; ``time_budget_s`` is only a safety cap,
    recorded when hit. Edge weights are ``train.event_weights`` and the seed is ``train.seed``.
    """

    dim: int = Field(64, ge=1)
    layers: int = Field(3, ge=0)
    lr: float = Field(1e-2, gt=0)
    l2: float = Field(1e-3, ge=0)
    batch_size: int = Field(2048, ge=1)
    negatives: int = Field(4, ge=1)  # per positive edge; their BPR terms are averaged
    max_epochs: int = Field(10, ge=1)  # also the number of epochs trained when fit() gets no validation targets
    patience: int = Field(3, ge=1)
    eval_every: int = Field(5, ge=1)
    init_std: float = Field(0.1, gt=0)
    time_budget_s: float | None = Field(270.0, ge=0)  # safety cap, recorded when hit
    ann_min_items: int = Field(50_000, ge=1)  # as SASRec's: from this many items, top lists come from an ANN index


class DeepParams(_Hyper):
    """The neural ranker (``train.ranker_params.deep``); ``n_items``/``n_users`` of null come from the codes."""

    hidden: tuple[int, ...] = (128, 64)
    item_dim: int = Field(16, ge=0)  # 0 = no item embedding
    user_dim: int = Field(0, ge=0)  # 0 = none: a per-user vector only matters through interactions, so it is opt-in
    emb_l2: float = Field(1e-2, ge=0)  # L2 on the embedding tables: rarely seen items shrink to "no item effect"
    n_items: int | None = Field(None, ge=0)
    n_users: int | None = Field(None, ge=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    code_dropout: float = Field(0.05, ge=0, lt=1)  # share of training rows fed as OOV: unseen codes get trained
    lr: float = Field(1e-3, gt=0)
    batch_groups: int = Field(128, ge=1)
    max_epochs: int = Field(50, ge=1)  # also the number of epochs trained when fit() gets no valid data
    patience: int = Field(4, ge=1)  # on Beauty it stops at epoch 12 (47 s idle)
    eval_at: int = Field(10, ge=1)
    seed: int = 0
    time_budget_s: float | None = Field(240.0, ge=0)  # safety cap (~5x the Beauty fit), recorded when hit


class BoostedParams(_Hyper):
    """A GBDT ranker: early stopping on the valid NDCG@``eval_at`` is ours, every other field goes to the library.

    ``n_jobs`` of null uses every core of the machine (``pipelines.rankers.base.machine_cores``).
    """

    early_stopping_rounds: int = Field(30, ge=1)
    eval_at: int = Field(10, ge=1)


class LightGBMParams(BoostedParams):
    """``LGBMRanker`` (``train.ranker_params.lightgbm``), sklearn-API names.

    Sized for ~1-5M rows x ~40 features on 2 shared cores: a 20k-group x 100-row x 40-feature benchmark fits in
    about 1-2 minutes (lr 0.05, bagging 0.8 and 255 bins cost ~2.5x the time for +0.005 NDCG@10 there).
    feature_fraction = colsample_bytree, bagging_fraction/freq = subsample/subsample_freq; deterministic and
    force_row_wise make reruns bit-identical.
    """

    n_estimators: int = Field(500, ge=1)
    learning_rate: float = Field(0.1, gt=0)
    num_leaves: int = Field(63, ge=2)
    min_child_samples: int = Field(50, ge=1)
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    subsample: float = Field(0.5, gt=0, le=1)
    subsample_freq: int = Field(1, ge=0)
    reg_lambda: float = Field(1.0, ge=0)
    max_bin: int = Field(63, ge=2)
    n_jobs: int | None = Field(None, ge=1)
    random_state: int = 0
    deterministic: bool = True
    force_row_wise: bool = True
    verbose: int = -1


class XGBoostParams(BoostedParams):
    """``XGBRanker`` (``train.ranker_params.xgboost``).

    Depth 6 (<= 64 leaves) matches LightGBM's num_leaves=63 in capacity; "topk" pairs with a truncation level of
    10 optimise NDCG@10 directly (in XGBoost >= 2 lambdarank_num_pair_per_sample is the top-k level for "topk").
    Row subsampling 0.5 and 64 bins roughly halve the time per tree at no visible cost on the benchmark.
    """

    n_estimators: int = Field(500, ge=1)
    learning_rate: float = Field(0.1, gt=0)
    max_depth: int = Field(6, ge=1)
    min_child_weight: float = Field(1.0, ge=0)
    subsample: float = Field(0.5, gt=0, le=1)
    colsample_bytree: float = Field(0.8, gt=0, le=1)
    reg_lambda: float = Field(1.0, ge=0)
    max_bin: int = Field(64, ge=2)
    tree_method: Literal["hist", "approx", "exact"] = "hist"
    lambdarank_pair_method: Literal["topk", "mean"] = "topk"
    lambdarank_num_pair_per_sample: int = Field(10, ge=1)
    n_jobs: int | None = Field(None, ge=1)
    random_state: int = 0
    verbosity: int = 0


class RankerParams(_Section):
    """One section per ranker (``train.ranker_params``)."""

    lightgbm: LightGBMParams = LightGBMParams()
    xgboost: XGBoostParams = XGBoostParams()
    deep: DeepParams = DeepParams()


# event type -> weight, for every source that weighs events (popularity, co-visitation, item cosine, LightGCN edges)
EVENT_WEIGHTS = {"view": 1.0, "cart": 3.0, "fav": 2.0, "purchase": 4.0}
SourceName = Literal["popularity", "category_popularity", "covisit", "itemcos", "transitions", "sasrec", "lightgcn"]
RankerName = Literal["lightgbm", "xgboost", "deep"]


class ValidationRolesParams(_Section):
    source_stop: float = Field(0.1, ge=0, lt=1)  # the sources' early stopping (0: they train max_epochs)
    ranker_stop: float = Field(0.1, gt=0, lt=1)  # the rankers' early stopping
    selection: float = Field(0.1, gt=0, lt=1)    # choosing the deployed ranker; the recorded validation score

    @model_validator(mode="after")
    def _leave_users_to_train(self) -> Self:
        if self.source_stop + self.ranker_stop + self.selection >= 0.9:
            raise ValueError("validation_roles: source_stop + ranker_stop + selection must leave at least 0.1 "
                             "of the validation users to train the rankers")
        return self


class TrainParams(_Section):
    # two_stage: candidate sources + learned rankers; popularity / covisit: one simple model on its own;
    # random: the floor (and the degraded model the gate must reject)
    model: Literal["popularity", "covisit", "two_stage", "random"] = "two_stage"
    event_weights: dict[str, float] = EVENT_WEIGHTS
    popularity_half_life_days: float = Field(3.0, gt=0)
    covisit_window: int = Field(3, ge=1)
    history_len: int = Field(20, ge=1)
    transitions_last_n: int = Field(3, ge=1)
    itemcos_neighbours: int = Field(200, ge=1)
    # co-visitation and transitions keep each item's strongest neighbours: bounded rows whatever the item's reach
    max_neighbours: int = Field(500, ge=1)
    sources: list[SourceName] = ["covisit", "itemcos", "transitions", "popularity", "category_popularity",
                                 "sasrec", "lightgcn"]
    rankers: list[RankerName] = ["lightgbm", "xgboost", "deep"]
    n_per_source: int = Field(50, ge=1)  # each source's top-n joins the candidate pool
    # disjoint shares of the validation users for each use (the rest trains the rankers), so no recorded score
    # is read on users it was fitted or stopped on
    validation_roles: ValidationRolesParams = ValidationRolesParams()
    # at scale: a seeded sample of this many validation users trains and selects the rankers (null: all)
    max_ranker_users: int | None = Field(None, ge=10)
    sasrec: SASRecParams = SASRecParams()
    lightgcn: LightGCNParams = LightGCNParams()
    ranker_params: RankerParams = RankerParams()
    seed: int = 0


class EvaluateParams(_Section):
    ks: list[int] = [5, 10, 20]
    bootstrap_samples: int = Field(1000, ge=0)
    # at scale: evaluate on a seeded sample of this many test users (null: all); metrics.json records it
    max_users: int | None = Field(None, ge=10)
    # each source's and ranker's own lists (diagnostics, a second pass over candidates) on a seeded sample of the
    # evaluated users (null: all of them); the served list is always scored on every evaluated user. 5,000 keeps
    # the diagnostics' pass a fraction of evaluation (on Beauty's 22,363 users it was half of it)
    max_component_users: int | None = Field(5000, ge=10)
    seed: int = 0
    # the new-item slice's exploration lists give this share of their slots to new items (serving's default)
    explore_share: float = Field(0.1, ge=0, le=0.5)


class GateParams(_Section):
    min_ndcg_at_10: float = 0.01
    min_hr_at_10: float = 0.02
    # the candidate must beat popularity on NDCG@10 by at least this, with the bootstrap CI above zero
    min_lift_over_popularity: float = 0.0
    # cold-start users (< 3 training events) may lose at most this much NDCG@10 against popularity
    max_cold_start_regression: float = 0.02
    max_ms_per_user: float = Field(50.0, gt=0)  # batch scoring latency budget
    # against the current champion on the same test users: reject when the bootstrap CI of the candidate's
    # NDCG@10 gain lies entirely below -max_champion_regression (worse beyond its confidence interval)
    max_champion_regression: float = Field(0.0, ge=0)
    # where a passing model goes: champion (served to every shopper), or challenger: one arm of an online
    # experiment that promotes it once shoppers' feedback says so (``shoprec experiment decide``); with no
    # champion yet there is nothing to test against, and it becomes the champion
    promote_to: Literal["champion", "challenger"] = "champion"


Outcome = Literal["clicks", "carts", "purchases", "revenue"]


class ExperimentParams(_Section):
    """The online experiment's test: per shopper, an outcome per list shown, compared between the arms."""

    window_s: float = Field(1800.0, gt=0)  # feedback this soon after a list that showed the item is credited to it
    alpha: float = Field(0.05, gt=0, lt=1)  # the always-valid test's error rate, however often it is read
    # the mixture's scale, as a share of the outcome's standard deviation: the effect size the test is most
    # sensitive to (about the smallest one worth detecting)
    effect_size: float = Field(0.1, gt=0)
    primary: Outcome = "clicks"  # promote when this is surely better, roll back when surely worse
    guardrail: Outcome | None = "purchases"  # roll back early when this is surely worse
    min_shoppers: int = Field(100, ge=2)  # per arm, before any decision


class Params(_Section):
    data: DataParams = DataParams()
    synthetic: SyntheticParams = SyntheticParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")
    split: SplitParams = SplitParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    gate: GateParams = GateParams()
    experiment: ExperimentParams = ExperimentParams()

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
