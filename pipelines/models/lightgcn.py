"""LightGCN (He et al., SIGIR 2020): user and item embeddings smoothed over the user-item graph.

Every user and item has a free ("ego") embedding. K propagation layers multiply them by the symmetric-normalised
adjacency D^-1/2 A D^-1/2 of the bipartite graph, with no weights and no nonlinearity, and the final
representation is the mean over layers 0..K. Score = user . item. Training is BPR with uniformly sampled
unseen negatives and L2 on the ego embeddings of the batch, with Adam over mini-batches of positive edges.

Edges are the user's distinct items. Each edge is weighted by the strongest event type of the pair
(``event_weights``, by default purchase 4 > cart 3 > fav 2 > view 1, as in ``params.yaml``): the weight is the
edge's value in A (before normalisation) and scales the edge's BPR term (normalised to mean 1).

Only ``fit`` touches TensorFlow (imported there, so importing this module stays cheap). The fitted model keeps
numpy arrays only: ego embeddings plus the propagated user/item embeddings of the current graph, so it pickles
without any TF state. ``with_history`` re-runs the propagation (scipy) over the new graph with the trained
ego embeddings: users' and items' embeddings then reflect the longer history without any retraining.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import scipy.sparse as sp

from pipelines.core.config import EVENT_WEIGHTS, LightGCNParams, with_overrides
from pipelines.core.keras_runtime import tensorflow
from pipelines.evaluation.metrics import ndcg_at_k
from pipelines.features.interactions import Interactions
from pipelines.models.base import Targets
from pipelines.models.retrieval import VectorRecommender
from pipelines.models.stopping import TIME_CAP, StoppedBy, training_record

if TYPE_CHECKING:
    import tensorflow as tf

log = logging.getLogger(__name__)

SCORE_BATCH = 1024
MAX_RESAMPLE = 10  # rounds of redrawing negatives that hit a positive; leftovers are rare and harmless


@dataclass(frozen=True)
class Edges:
    """Distinct (user, item) pairs sorted by ``user * n_items + item`` (``keys``), each with its weight."""

    users: np.ndarray
    items: np.ndarray
    weights: np.ndarray
    keys: np.ndarray

    @classmethod
    def from_history(cls, history: Interactions, event_weights: dict[str, float]) -> Edges:
        """One edge per pair, weighted by its strongest event (a purchase outweighs the views before it)."""
        keys, inverse = np.unique(history.user.astype(np.int64) * history.n_items + history.item, return_inverse=True)
        weights = np.zeros(len(keys), dtype=np.float32)
        np.maximum.at(weights, inverse, history.event_weights(event_weights))
        users, items = np.divmod(keys, history.n_items)
        return cls(users.astype(np.int32), items.astype(np.int32), weights, keys)

    def __len__(self) -> int:
        return len(self.keys)

    def contains(self, users: np.ndarray, items: np.ndarray, n_items: int) -> np.ndarray:
        """Boolean mask (shape of ``items``): is (user, item) an edge; ``users`` broadcasts against ``items``."""
        query = users.astype(np.int64) * n_items + items
        at = np.minimum(np.searchsorted(self.keys, query), len(self.keys) - 1)
        return self.keys[at] == query


def normalized_adjacency(edges: Edges, n_users: int, n_items: int) -> sp.csr_matrix:
    """D^-1/2 A D^-1/2 over nodes [users, items]; isolated nodes get empty rows rather than a division by 0."""
    n = n_users + n_items
    rows = np.concatenate([edges.users, edges.items + n_users])
    cols = np.concatenate([edges.items + n_users, edges.users])
    a = sp.csr_matrix((np.concatenate([edges.weights, edges.weights]), (rows, cols)), shape=(n, n))
    degree = np.asarray(a.sum(axis=1)).ravel()
    inv_sqrt = sp.diags(np.divide(1.0, np.sqrt(degree), out=np.zeros(n), where=degree > 0))
    return (inv_sqrt @ a @ inv_sqrt).astype(np.float32).tocsr()


def propagate(adjacency: sp.csr_matrix, ego: np.ndarray, layers: int) -> np.ndarray:
    """LightGCN's final embeddings: the mean of E, AE, ..., A^K E (the scipy twin of the training graph)."""
    layer, total = ego, ego.copy()
    for _ in range(layers):
        layer = adjacency @ layer
        total += layer
    return (total / (layers + 1)).astype(np.float32)


def sample_negatives(
    users: np.ndarray, count: int, edges: Edges, n_items: int, rng: np.random.Generator
) -> np.ndarray:
    """(len(users), count) uniform item codes, redrawn where they hit one of the user's own items."""
    negatives = rng.integers(0, n_items, size=(len(users), count))
    for _ in range(MAX_RESAMPLE):
        hit = edges.contains(users[:, None], negatives, n_items)
        if not hit.any():
            break
        negatives[hit] = rng.integers(0, n_items, size=int(hit.sum()))
    return negatives.astype(np.int32)


class _Trainer:
    """The TF side of ``fit``: ego embeddings as one Keras variable, the graph as a tf.sparse matrix, a BPR step."""

    def __init__(self, adjacency: sp.csr_matrix, ego: np.ndarray, n_users: int, p: LightGCNParams):
        import keras

        tf = tensorflow()
        coo = adjacency.tocoo()
        indices = np.stack([coo.row, coo.col], axis=1).astype(np.int64)
        self.adjacency = tf.sparse.reorder(tf.SparseTensor(indices, coo.data, adjacency.shape))
        self.ego = keras.Variable(ego, name="lightgcn_ego")
        self.n_users, self.p = n_users, p
        self.optimizer = keras.optimizers.Adam(learning_rate=p.lr)
        self.optimizer.build([self.ego])
        spec = [tf.TensorSpec([None], "int32"), tf.TensorSpec([None], "int32"),
                tf.TensorSpec([None, p.negatives], "int32"), tf.TensorSpec([None], "float32")]
        self.step = tf.function(self._step, input_signature=spec, autograph=False)

    def ego_numpy(self) -> np.ndarray:
        return np.array(self.ego.numpy(), dtype=np.float32)

    def _propagate(self) -> tf.Tensor:
        """Layer mean over the graph in CSR form: on CPU its matmul is several times faster than COO's."""
        tf = tensorflow()
        a = self.adjacency
        # Built inside the step: a CSR matrix captured from outside loses its shape info in tf.function.
        csr = tf.raw_ops.SparseTensorToCSRSparseMatrix(indices=a.indices, values=a.values, dense_shape=a.dense_shape)

        @tf.custom_gradient
        def smooth(x: tf.Tensor) -> tuple[tf.Tensor, Any]:
            # The normalised adjacency is symmetric, so the gradient A^T g is A g (no slow adjoint kernel).
            return tf.raw_ops.SparseMatrixMatMul(a=csr, b=x), lambda g: tf.raw_ops.SparseMatrixMatMul(a=csr, b=g)

        layer = total = tf.convert_to_tensor(self.ego)
        for _ in range(self.p.layers):
            layer = smooth(layer)
            total = total + layer
        return total / (self.p.layers + 1)

    def _loss(self, users: tf.Tensor, pos: tf.Tensor, neg: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
        """Edge-weighted BPR over the final embeddings + L2 (1/2 squared norm per batch row) on the ego ones."""
        tf = tensorflow()
        final = self._propagate()
        pos_node, neg_node = pos + self.n_users, neg + self.n_users
        u = tf.gather(final, users)
        pos_score = tf.reduce_sum(u * tf.gather(final, pos_node), axis=-1)
        neg_score = tf.einsum("bd,bnd->bn", u, tf.gather(final, neg_node))
        bpr = tf.reduce_mean(-tf.math.log_sigmoid(pos_score[:, None] - neg_score), axis=1)
        ego = tf.convert_to_tensor(self.ego)
        squared = (tf.reduce_sum(tf.gather(ego, users) ** 2, axis=-1) + tf.reduce_sum(tf.gather(ego, pos_node) ** 2, -1)
                   + tf.reduce_mean(tf.reduce_sum(tf.gather(ego, neg_node) ** 2, -1), axis=1))
        return tf.reduce_mean(weight * bpr) + self.p.l2 * 0.5 * tf.reduce_mean(squared)

    def _step(self, users: tf.Tensor, pos: tf.Tensor, neg: tf.Tensor, weight: tf.Tensor) -> tf.Tensor:
        tf = tensorflow()
        with tf.GradientTape() as tape:
            loss = self._loss(users, pos, neg, weight)
        self.optimizer.apply_gradients([(tape.gradient(loss, self.ego), self.ego)])
        return loss


class _Budget:
    """The wall-clock safety cap of ``fit``: the slowest epoch and evaluation so far predict whether another round
    still fits. Training length is ``max_epochs`` with patience; the cap only guards against a runaway fit."""

    def __init__(self, seconds: float | None):
        self.seconds = seconds
        self.start = time.perf_counter()
        self.slowest: dict[str, float] = {"epoch": 0.0, "evaluation": 0.0}

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @contextmanager
    def timing(self, phase: str) -> Iterator[None]:
        begin = time.perf_counter()
        yield
        self.slowest[phase] = max(self.slowest[phase], time.perf_counter() - begin)

    def allows_epoch(self) -> bool:
        """Room for one more epoch and an evaluation after it (so stopping never skips the last evaluation)."""
        if self.seconds is None:
            return True
        return self.elapsed() + self.slowest["epoch"] + self.slowest["evaluation"] <= self.seconds


class LightGCN(VectorRecommender):
    """Graph-smoothed matrix factorisation; ``LightGCN(dim=32)`` or ``LightGCN(LightGCNParams(...))``.

    After ``fit``: ``history_`` (one row per evaluation: epoch, mean loss since the previous row, valid ndcg@10,
    seconds since fit started) and ``best_epoch_``. Nodes without edges in the training graph keep zero ego
    embeddings, so users without history score 0 for every item (and gain a signal from their neighbours alone
    once ``with_history`` gives them edges). A sequence outside the graph has no embedding: ``score_sequence``
    answers None (a user's embedding only changes by propagating over a new graph).
    """

    name = "lightgcn"

    def __init__(self, params: LightGCNParams | None = None, seed: int = 0,
                 event_weights: dict[str, float] | None = None, **overrides: Any):
        """Hyper-parameters and their defaults: ``pipelines.core.config.LightGCNParams`` (``train.lightgcn``)."""
        self.params = with_overrides(params or LightGCNParams(), overrides)
        self.seed = seed
        self.event_weights = dict(event_weights or EVENT_WEIGHTS)
        if any(w <= 0 for w in self.event_weights.values()):
            raise ValueError("lightgcn: event weights must be positive")
        self.history_: list[dict[str, float]] = []
        self.best_epoch_ = 0
        self.training_: dict[str, Any] = {}
        self.ego_: np.ndarray | None = None
        self.user_emb_: np.ndarray | None = None
        self.item_emb_: np.ndarray | None = None

    def fit(self, history: Interactions, valid: Targets | None = None) -> Self:
        """Train on ``history``; with ``valid``, keep the ego embeddings of the best validation NDCG@10."""
        p, budget = self.params, _Budget(self.params.time_budget_s)  # the clock includes importing Keras
        import keras

        edges = Edges.from_history(history, self.event_weights)
        if not len(edges):
            raise ValueError("lightgcn: cannot fit an empty history")
        keras.utils.set_random_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self._history = history
        adjacency = normalized_adjacency(edges, history.n_users, history.n_items)
        ego = rng.normal(0.0, p.init_std, size=(adjacency.shape[0], p.dim)).astype(np.float32)
        ego[np.diff(adjacency.indptr) == 0] = 0.0  # never trained: zero, so they add no noise to any score
        trainer = _Trainer(adjacency, ego, history.n_users, p)
        log.info("lightgcn: %d users, %d items, %d edges", history.n_users, history.n_items, len(edges))
        self.ego_ = self._train(trainer, edges, adjacency, valid, rng, budget)
        self._embed(adjacency, self.ego_)
        self.index_items(p.ann_min_items)
        return self

    def _train(
        self, trainer: _Trainer, edges: Edges, adjacency: sp.csr_matrix, valid: Targets | None,
        rng: np.random.Generator, budget: _Budget,
    ) -> np.ndarray:
        """Epoch loop; evaluates every ``eval_every`` epochs and before a stop; returns the best ego embeddings."""
        p = self.params
        self.history_, self.best_epoch_, best_ndcg, best_ego = [], 0, -np.inf, trainer.ego_numpy()
        losses: list[float] = []
        stopped_by: StoppedBy = "max_epochs"
        for epoch in range(1, p.max_epochs + 1):
            with budget.timing("epoch"):
                losses.append(self._train_epoch(trainer, edges, rng))
            capped = epoch < p.max_epochs and not budget.allows_epoch()
            if epoch % p.eval_every and epoch < p.max_epochs and not capped:
                continue
            with budget.timing("evaluation"):
                ndcg = self._evaluate(trainer.ego_numpy(), adjacency, valid)
            self._record(epoch, float(np.mean(losses)), ndcg, budget.elapsed())
            losses = []
            if valid is None or ndcg > best_ndcg:  # without targets the latest epoch is the best
                best_ndcg, best_ego, self.best_epoch_ = ndcg, trainer.ego_numpy(), epoch
            if (epoch - self.best_epoch_) >= p.patience * p.eval_every:
                stopped_by = "patience"
                break
            if capped:
                stopped_by = TIME_CAP
                break
        self.training_ = training_record(epoch, self.best_epoch_, stopped_by, budget.elapsed(), p.time_budget_s)
        log.info("lightgcn: best epoch %d of %d (valid ndcg@10 %.4f, stopped by %s)", self.best_epoch_, epoch,
                 best_ndcg, stopped_by)
        return best_ego

    def _train_epoch(self, trainer: _Trainer, edges: Edges, rng: np.random.Generator) -> float:
        """One shuffled pass over the positive edges, fresh negatives per batch; returns the mean batch loss."""
        p = self.params
        order = rng.permutation(len(edges))
        weight = edges.weights / edges.weights.mean()
        losses = []
        for begin in range(0, len(order), p.batch_size):
            rows = order[begin: begin + p.batch_size]
            users = edges.users[rows]
            negatives = sample_negatives(users, p.negatives, edges, self.history.n_items, rng)
            losses.append(float(trainer.step(users, edges.items[rows], negatives, weight[rows])))
        return float(np.mean(losses))

    def _evaluate(self, ego: np.ndarray, adjacency: sp.csr_matrix, valid: Targets | None) -> float:
        """Validation NDCG@10 with full ranking over unseen items (nan without targets)."""
        if valid is None:
            return float("nan")
        self._embed(adjacency, ego)
        users, items = valid
        recs, _ = self.recommend(np.asarray(users), 10)
        return float(ndcg_at_k(recs, items, 10).mean())

    def _record(self, epoch: int, loss: float, ndcg: float, seconds: float) -> None:
        self.history_.append({"epoch": epoch, "loss": loss, "valid_ndcg@10": ndcg, "seconds": seconds})
        log.info("lightgcn epoch %d: loss %.4f valid ndcg@10 %.4f (%.0f s)", epoch, loss, ndcg, seconds)

    @property
    def report(self) -> dict[str, Any]:
        """The index's report and how training stopped."""
        return super().report | ({"training": self.training_} if self.training_ else {})

    def _embed(self, adjacency: sp.csr_matrix, ego: np.ndarray) -> None:
        """Propagate ``ego`` over ``adjacency`` into the user and item tables used for scoring; any item index is
        stale then, so it is dropped (validation during training scores exactly)."""
        final = propagate(adjacency, ego, self.params.layers)
        n_users = self.history.n_users
        self.user_emb_, self.item_emb_ = final[:n_users], final[n_users:]
        self.index_, self.ann_ = None, None

    def attach(self, part: Interactions) -> Self:
        """The embeddings propagated over the whole history score the part's users; the part says what they saw."""
        other = copy.copy(self)
        other._history = part
        return other

    def with_history(self, history: Interactions) -> Self:
        """Re-propagate the trained ego embeddings over ``history``'s graph (e.g. train + valid); no training."""
        ego = self.ego_
        if ego is None:
            raise RuntimeError(f"{self.name}: call fit() before with_history()")
        if history.n_users + history.n_items != len(ego) or history.n_items != self.history.n_items:
            raise ValueError(f"{self.name}: history has another vocabulary than the one the model was fitted on")
        self._history = history
        edges = Edges.from_history(history, self.event_weights)
        self._embed(normalized_adjacency(edges, history.n_users, history.n_items), ego)
        self.index_items(self.params.ann_min_items)
        return self

    def score(self, users: np.ndarray) -> np.ndarray:
        """User-item affinity ``user_emb . item_emb`` (float32), computed in batches of users."""
        users = np.asarray(users, dtype=np.int64)
        items = self.item_vectors()
        out = np.empty((len(users), len(items)), dtype=np.float32)
        for begin in range(0, len(users), SCORE_BATCH):
            out[begin: begin + SCORE_BATCH] = self.user_vectors(users[begin: begin + SCORE_BATCH]) @ items.T
        return out

    def user_vectors(self, users: np.ndarray) -> np.ndarray:
        return self._embeddings()[0][np.asarray(users, dtype=np.int64)]

    def item_vectors(self) -> np.ndarray:
        return self._embeddings()[1]

    def _embeddings(self) -> tuple[np.ndarray, np.ndarray]:
        """The user and item tables; scoring before ``fit`` is a clear error, not an attribute error."""
        if self.user_emb_ is None or self.item_emb_ is None:
            raise RuntimeError(f"{self.name}: call fit() before scoring")
        return self.user_emb_, self.item_emb_
