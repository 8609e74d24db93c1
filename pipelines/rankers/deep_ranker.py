"""A small neural ranker: an MLP over the standardised features plus learned item (and optional user) embeddings.

Training is listwise: a softmax over each query group's rows against the relevance distribution y / sum(y)
(ListNet top-one cross-entropy), computed with segment ops over the flat rows of a batch of whole groups, so
groups of any size need no padding. Early stopping keeps the epoch with the best valid NDCG@10.
TensorFlow is imported inside methods: importing this module must stay cheap.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import numpy as np

from pipelines.core.config import DeepParams, with_overrides
from pipelines.core.keras_runtime import LayerSeeds, tensorflow
from pipelines.models.stopping import TIME_CAP, StoppedBy, training_record
from pipelines.rankers.base import Ranker, RankingData
from pipelines.rankers.metrics import ndcg_at_k_grouped

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger(__name__)

OOV = 0  # embedding row for codes unseen in training (code c is fed as c + 1)
CLIP = 5.0  # standardised features are clipped to +-CLIP so that outliers cannot saturate the network
SCALER_SAMPLE = 200_000  # rows used to fit medians, means and scales (plenty for ~40 features)
PREDICT_BATCH = 65_536
TRANSFORM_CHUNK = 262_144  # rows per chunk when standardising, to bound temporary memory


@dataclass
class _Scaler:
    """NaN -> train median (+ a missing indicator for columns that had NaN), signed log1p, standardise, clip.

    The signed log1p tames heavy-tailed counts and recencies, which trees ignore but an MLP does not.
    """

    median: np.ndarray
    mean: np.ndarray
    scale: np.ndarray
    missing_cols: np.ndarray

    @classmethod
    def fit(cls, X: np.ndarray, rng: np.random.Generator) -> _Scaler:
        sample = X[np.sort(rng.choice(len(X), SCALER_SAMPLE, replace=False))] if len(X) > SCALER_SAMPLE else X
        missing = np.isnan(sample)
        all_missing = missing.all(axis=0)
        median = np.zeros(X.shape[1], dtype=np.float32)
        median[~all_missing] = np.nanmedian(sample[:, ~all_missing], axis=0)
        logged = _signed_log1p(np.where(missing, median, sample))
        scale = logged.std(axis=0)
        return cls(median, logged.mean(axis=0), np.where(scale > 1e-6, scale, 1.0).astype(np.float32),
                   np.flatnonzero(np.isnan(X).any(axis=0)))

    @property
    def n_outputs(self) -> int:
        return len(self.median) + len(self.missing_cols)

    def transform(self, X: np.ndarray) -> np.ndarray:
        out = np.empty((len(X), self.n_outputs), dtype=np.float32)
        for start in range(0, len(X), TRANSFORM_CHUNK):
            chunk = X[start: start + TRANSFORM_CHUNK]
            missing = np.isnan(chunk)
            z = (_signed_log1p(np.where(missing, self.median, chunk)) - self.mean) / self.scale
            out[start: start + len(chunk)] = np.hstack([np.clip(z, -CLIP, CLIP), missing[:, self.missing_cols]])
        return out


def _signed_log1p(x: np.ndarray) -> np.ndarray:
    return (np.sign(x) * np.log1p(np.abs(x))).astype(np.float32)


def _codes(codes: np.ndarray | None, n: int, n_rows: int) -> np.ndarray:
    """Embedding rows for codes: c + 1 for known codes, OOV for unknown ones (and for everything if n == 0)."""
    if codes is None or n == 0:
        return np.full(n_rows, OOV, dtype=np.int32)
    return np.where((codes >= 0) & (codes < n), codes + 1, OOV).astype(np.int32)


def _drop_codes(codes: np.ndarray, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Codes with a random ``rate`` share replaced by OOV, which trains the OOV row for unseen codes."""
    return np.where(rng.random(len(codes)) < rate, OOV, codes).astype(np.int32)


class _Network:
    """The MLP and embeddings as Keras 3 layers with compiled score and train steps.

    A plain container rather than a ``keras.Model`` so that no Keras class exists at module import time.
    """

    def __init__(self, n_inputs: int, n_items: int, n_users: int, p: DeepParams):
        tf = tensorflow()
        from keras import initializers, layers, regularizers

        seeds = LayerSeeds(p.seed)
        l2 = regularizers.L2(p.emb_l2) if p.emb_l2 else None

        def embedding(rows: int, dim: int) -> Any:
            return layers.Embedding(rows, dim, embeddings_regularizer=l2,
                                    embeddings_initializer=initializers.RandomUniform(-0.05, 0.05, seed=seeds()))

        self.item_emb = embedding(n_items + 1, p.item_dim) if n_items else None
        self.user_emb = embedding(n_users + 1, p.user_dim) if n_users else None
        self.hidden = [layers.Dense(units, activation="relu", kernel_initializer=seeds.glorot()) for units in p.hidden]
        self.drop = layers.Dropout(p.dropout, seed=seeds())
        self.out = layers.Dense(1, kernel_initializer=seeds.glorot())
        self._score(np.zeros((1, n_inputs), np.float32), np.zeros(1, np.int32), np.zeros(1, np.int32), False)
        self.score = tf.function(self._score_eval, input_signature=self._row_spec(), autograph=False)

    @staticmethod
    def _row_spec() -> list[Any]:
        tf = tensorflow()
        return [tf.TensorSpec([None, None], "float32"), tf.TensorSpec([None], "int32"), tf.TensorSpec([None], "int32")]

    @property
    def layers(self) -> list[Any]:
        return [lay for lay in (self.item_emb, self.user_emb, *self.hidden, self.out) if lay is not None]

    def get_weights(self) -> list[np.ndarray]:
        return [np.array(w.numpy()) for lay in self.layers for w in lay.weights]

    def set_weights(self, weights: list[np.ndarray]) -> None:
        variables = [w for lay in self.layers for w in lay.weights]
        for v, w in zip(variables, weights, strict=True):
            v.assign(w)

    def _score(self, x: tf.Tensor, items: tf.Tensor, users: tf.Tensor, training: bool) -> tf.Tensor:
        """One logit per row from [features, item embedding, user embedding]."""
        tf = tensorflow()
        parts = [x]
        if self.item_emb is not None:
            parts.append(self.item_emb(items))
        if self.user_emb is not None:
            parts.append(self.user_emb(users))
        h = tf.concat(parts, axis=1)
        for layer in self.hidden:
            h = self.drop(layer(h), training=training)
        return self.out(h)[:, 0]

    def _score_eval(self, x: tf.Tensor, items: tf.Tensor, users: tf.Tensor) -> tf.Tensor:
        return self._score(x, items, users, False)

    def train_step(self, lr: float) -> Any:
        """A compiled step(x, items, users, segment, target) -> listwise loss (fitted with the embedding L2)."""
        import keras

        tf = tensorflow()
        optimizer = keras.optimizers.Adam(learning_rate=lr)
        variables = [w for lay in self.layers for w in lay.trainable_weights]
        optimizer.build(variables)
        spec = [*self._row_spec(), tf.TensorSpec([None], "int32"), tf.TensorSpec([None], "float32")]

        @tf.function(input_signature=spec, autograph=False)
        def step(x: tf.Tensor, items: tf.Tensor, users: tf.Tensor, segment: tf.Tensor, target: tf.Tensor) -> Any:
            with tf.GradientTape() as tape:
                loss = listwise_softmax_loss(self._score(x, items, users, True), segment, target)
                penalised = loss + sum(penalty for lay in self.layers for penalty in lay.losses)
            optimizer.apply_gradients(zip(tape.gradient(penalised, variables), variables, strict=True))
            return loss

        return step


def listwise_softmax_loss(logits: tf.Tensor, segment: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Mean over groups of -sum_i target_i * log_softmax(logits)_i within the group (segments sorted).

    ``target`` sums to 1 in every group, so each group's loss is logsumexp(logits) - sum(target * logits).
    """
    tf = tensorflow()
    top = tf.stop_gradient(tf.math.segment_max(logits, segment))
    lse = tf.math.log(tf.math.segment_sum(tf.exp(logits - tf.gather(top, segment)), segment)) + top
    return tf.reduce_mean(lse - tf.math.segment_sum(target * logits, segment))


class _Groups:
    """Row ranges of query groups, to gather the flat rows of a batch of whole groups."""

    def __init__(self, group: np.ndarray, keep: np.ndarray):
        self.sizes = group
        self.starts = np.concatenate([[0], np.cumsum(group)[:-1]]).astype(np.int64)
        self.ids = np.flatnonzero(keep)

    def rows(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row indices of groups ``ids`` (concatenated) and the batch-local segment id of each row."""
        sizes = self.sizes[ids]
        segment = np.repeat(np.arange(len(ids), dtype=np.int32), sizes)
        offsets = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        return np.repeat(self.starts[ids], sizes) + offsets, segment


class DeepRanker(Ranker):
    """Neural listwise ranker; ``DeepRanker(item_dim=32)`` or ``DeepRanker(DeepParams(...))``.

    The hyper-parameters and their defaults are ``pipelines.core.config.DeepParams`` (``train.ranker_params.deep``).

    After ``fit``: ``history_`` (per-epoch loss, valid ndcg, seconds) and ``best_iteration_`` (best epoch; refit
    without valid data using ``max_epochs=best_iteration_``).
    """

    name = "deep"

    def __init__(self, params: DeepParams | None = None, **overrides: Any):
        self.params = with_overrides(params or DeepParams(), overrides)
        self.best_iteration_ = 0
        self.history_: dict[str, list[float]] = {}
        self.training_: dict[str, Any] = {}
        self.n_items_ = 0
        self.n_users_ = 0
        self._scaler: _Scaler | None = None
        self._net: _Network | None = None
        self._weights: list[np.ndarray] | None = None

    def fit(self, train: RankingData, valid: RankingData | None = None) -> Self:
        """Train in random batches of whole groups; with ``valid``, keep the epoch with the best valid NDCG."""
        tensorflow()
        import keras

        p = self.params
        start = time.perf_counter()
        keras.utils.set_random_seed(p.seed)
        rng = np.random.default_rng(p.seed)
        self.feature_names_ = list(train.feature_names)
        self.n_items_ = self._size(p.n_items, train.item_codes) if p.item_dim else 0
        self.n_users_ = self._size(p.n_users, train.user_codes) if p.user_dim else 0
        self._scaler = _Scaler.fit(train.X, rng)
        self._net = _Network(self._scaler.n_outputs, self.n_items_, self.n_users_, p)
        inputs = self._inputs(train)
        target, groups = _listwise_targets(train)
        step = self._net.train_step(p.lr)
        log.info("deep: %d groups with a positive, %d items, %d inputs", len(groups.ids), self.n_items_,
                 self._scaler.n_outputs)
        self.history_ = {"loss": [], f"valid_ndcg@{p.eval_at}": [], "seconds": []}
        best, best_weights = -1.0, None
        stopped_by: StoppedBy = "max_epochs"
        for epoch in range(1, p.max_epochs + 1):
            epoch_start = time.perf_counter()
            loss, finished = self._train_epoch(step, inputs, target, groups, rng, start)
            ndcg = self._valid_ndcg(valid) if valid is not None else float("nan")
            self._record(loss, ndcg, time.perf_counter() - epoch_start)
            if valid is None or ndcg > best:
                best, best_weights, self.best_iteration_ = ndcg, self._net.get_weights(), epoch
            reason = self._stop_reason(epoch, start) if finished else TIME_CAP
            if reason:
                stopped_by = reason
                break
        self._net.set_weights(best_weights)
        self.training_ = training_record(epoch, self.best_iteration_, stopped_by, time.perf_counter() - start,
                                         p.time_budget_s)
        log.info("deep: best epoch %d of %d (valid ndcg %.4f, %.0f s, stopped by %s)", self.best_iteration_, epoch,
                 best, time.perf_counter() - start, stopped_by)
        return self

    @property
    def report(self) -> dict[str, Any]:
        """How training stopped (epochs, the epoch kept, whether the safety cap cut it)."""
        return {"training": self.training_} if self.training_ else {}

    @staticmethod
    def _size(given: int | None, codes: np.ndarray | None) -> int:
        """Embedding table size: as given, else one past the largest training code (0 without codes)."""
        if given is not None:
            return given
        return int(codes.max()) + 1 if codes is not None and len(codes) else 0

    def _inputs(self, data: RankingData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Network inputs (standardised features, item rows, user rows) for every row of ``data``."""
        if self.n_items_ and data.item_codes is None:
            raise ValueError(f"{self.name}: trained with item embeddings, so item_codes are required")
        if self.n_users_ and data.user_codes is None:
            raise ValueError(f"{self.name}: trained with user embeddings, so user_codes are required")
        return (self._scaler.transform(data.X), _codes(data.item_codes, self.n_items_, data.n_rows),
                _codes(data.user_codes, self.n_users_, data.n_rows))

    def _train_epoch(self, step: Any, inputs: tuple[np.ndarray, ...], target: np.ndarray, groups: _Groups,
                     rng: np.random.Generator, start: float) -> tuple[float, bool]:
        """One pass over the groups in random batches: mean loss, and False when the safety cap cut it short."""
        p = self.params
        x, items, users = inputs
        order = rng.permutation(groups.ids)
        losses = []
        for begin in range(0, len(order), p.batch_groups):
            rows, segment = groups.rows(order[begin: begin + p.batch_groups])
            batch_items, batch_users = (_drop_codes(codes[rows], p.code_dropout, rng) for codes in (items, users))
            losses.append(float(step(x[rows], batch_items, batch_users, segment, target[rows])))
            if p.time_budget_s is not None and time.perf_counter() - start > p.time_budget_s:
                return float(np.mean(losses)), False
        return float(np.mean(losses)), True

    def _record(self, loss: float, ndcg: float, seconds: float) -> None:
        for key, value in zip(self.history_, (loss, ndcg, seconds), strict=True):
            self.history_[key].append(value)
        log.info("deep epoch %d: loss %.4f valid ndcg %.4f (%.1f s)", len(self.history_["loss"]), loss, ndcg, seconds)

    def _stop_reason(self, epoch: int, start: float) -> StoppedBy | None:
        """Why to stop now: ``patience`` epochs without a better valid NDCG, or another epoch would overrun the
        wall-clock safety cap."""
        p = self.params
        if epoch - self.best_iteration_ >= p.patience:
            return "patience"
        elapsed = time.perf_counter() - start
        if p.time_budget_s is not None and elapsed + self.history_["seconds"][-1] > p.time_budget_s:
            return TIME_CAP
        return None

    def _valid_ndcg(self, valid: RankingData) -> float:
        return ndcg_at_k_grouped(self.predict(valid), valid.labels, valid.group, k=self.params.eval_at)

    def predict(self, data: RankingData) -> np.ndarray:
        """One logit per row (higher is better); unseen item or user codes use the trained OOV embedding."""
        self._check_features(data)
        net = self._network()
        x, items, users = self._inputs(data)
        out = np.empty(data.n_rows, dtype=np.float32)
        for begin in range(0, data.n_rows, PREDICT_BATCH):
            end = begin + PREDICT_BATCH
            out[begin:end] = net.score(x[begin:end], items[begin:end], users[begin:end]).numpy()
        return out

    def _network(self) -> _Network:
        """The Keras network, rebuilt from stored weights after unpickling."""
        if self._net is None:
            if self._weights is None or self._scaler is None:
                raise RuntimeError(f"{self.name}: call fit() before predict()")
            self._net = _Network(self._scaler.n_outputs, self.n_items_, self.n_users_, self.params)
            self._net.set_weights(self._weights)
        return self._net

    def __getstate__(self) -> dict[str, Any]:
        """Weights as numpy arrays plus config: Keras objects themselves do not pickle."""
        state = {k: v for k, v in self.__dict__.items() if k != "_net"}
        state["_weights"] = self._net.get_weights() if self._net is not None else self._weights
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._net = None


def _listwise_targets(train: RankingData) -> tuple[np.ndarray, _Groups]:
    """Per-row target y / sum(y) of its group, and the groups with a positive (the others carry no signal)."""
    y = np.clip(train.labels, 0.0, None)
    group_sum = np.add.reduceat(y, np.concatenate([[0], np.cumsum(train.group)[:-1]]))
    target = y / np.repeat(np.where(group_sum > 0, group_sum, 1.0), train.group)
    return target.astype(np.float32), _Groups(train.group, group_sum > 0)
