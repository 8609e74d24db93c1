"""The serving view of a trained model: explained, rule-abiding top-K lists that are always full.

Every list is assembled from *parts*, in order: the model's own list (precomputed, scored on the fly, or from
the session just sent), then category popularity, then global popularity. Items already taken, seen (when
excluded), blocked, outside the requested category or over the per-category cap are skipped, so a list is
full whenever the catalogue allows it. Importing this module is cheap: TensorFlow, XGBoost and MLflow load
only when a model that needs them is loaded or scored.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import scipy.sparse as sp

from pipelines.core.errors import ShoprecError
from pipelines.data.schema import EVENT_TYPES
from pipelines.features.interactions import Interactions
from pipelines.features.ranking import pair_values
from pipelines.models.base import Recommender, top_k
from pipelines.models.popularity import popularity_scores

log = logging.getLogger(__name__)

ITEM_TO_ITEM = ("transitions", "covisit", "itemcos")  # sources with an item x item ``matrix_``, session order
RECENT_ITEMS = 10  # how far back "because you viewed X" looks for the most related item
FILL_CATEGORY, FILL_GLOBAL = "category_popularity", "popularity"
REASONS = {
    "sasrec": "based on your recent activity",
    "lightgcn": "shoppers like you liked it",
    "popularity": "popular right now",
}
SIMILAR_REASONS = {"covisit": "often viewed together with {}", "itemcos": "liked by the same shoppers as {}",
                   "transitions": "often viewed next after {}"}
DEFAULT_WEIGHTS = {"view": 1.0, "cart": 3.0, "fav": 2.0, "purchase": 4.0}
EVENT_CODE = {name: code for code, name in enumerate(EVENT_TYPES)}


class UnknownItem(ShoprecError):
    """The item id is not in the served model's catalogue."""


class UnknownCategory(ShoprecError):
    """The category id is not in the served model's catalogue."""


@dataclass(frozen=True)
class Recommendation:
    """One recommended item; ``score`` is its generator's score, comparable only within one ``source``."""

    item_id: str
    score: float
    rank: int
    source: str
    reason: str


@dataclass(frozen=True)
class Rules:
    """Business rules for every list: blocked (or out-of-stock) items never appear; at most N per category.

    Items without a known category are not capped, nor are lists filtered to one category (asked for by name).
    """

    blocked: frozenset[str] = frozenset()
    max_per_category: int | None = None

    def fingerprint(self) -> str:
        """Short digest, part of cache keys: lists cached under other rules are never served."""
        text = f"{self.max_per_category}|" + "\n".join(sorted(self.blocked))
        return hashlib.md5(text.encode()).hexdigest()[:8]


@dataclass
class Lists:
    """Top lists of a batch of users: item codes (-1 = padding), score, source index and the related item code."""

    items: np.ndarray  # int64 (n, depth)
    scores: np.ndarray  # float32 (n, depth)
    sources: np.ndarray  # int16 (n, depth) index into ServingModel.source_names, -1 for padding
    related: np.ndarray  # int64 (n, depth) item the reason names (-1: none)


@dataclass
class _Part:
    """A ranked run of candidate items from one generator (or a row of ``Lists``)."""

    items: np.ndarray
    scores: np.ndarray
    sources: np.ndarray
    related: np.ndarray


def within_group_rank(groups: np.ndarray) -> np.ndarray:
    """For each element, how many earlier elements share its group (0 for the first of each group)."""
    order = np.argsort(groups, kind="stable")
    ordered = groups[order]
    starts = np.r_[True, ordered[1:] != ordered[:-1]] if len(ordered) else np.zeros(0, dtype=bool)
    first = np.maximum.accumulate(np.where(starts, np.arange(len(ordered)), 0))
    rank = np.empty(len(groups), dtype=np.int64)
    rank[order] = np.arange(len(ordered)) - first
    return rank


def registry_available(root: str | Path) -> bool:
    """Whether there is a registry to ask: ``MLFLOW_TRACKING_URI`` or the project's ``mlflow.db``."""
    return bool(os.environ.get("MLFLOW_TRACKING_URI")) or (Path(root) / "mlflow.db").exists()


def resolve_model_dir(root: str | Path = ".", ref: str = "champion") -> Path:
    """The model directory to serve: the registry's ``ref`` if there is a registry, else ``models/champion``."""
    if registry_available(root):
        from pipelines.registry import versions as registry

        return registry.local_dir(registry.show(ref, root)["source"], root)
    champion = Path(root) / "models" / "champion"
    if (champion / "serving.joblib").exists():
        return champion
    raise ShoprecError(f"nothing to serve under {Path(root).resolve()}: no model registry and no models/champion")


class ServingModel:
    """A trained ``Recommender`` (two-stage or single) with its catalogue, explanations and fallbacks.

    Immutable after loading except for ``attach_store``: the API swaps whole instances on reload.
    """

    def __init__(self, model: Recommender, items: pd.DataFrame, meta: dict[str, Any], version: str | None = None,
                 rules: Rules | None = None, model_id: str | None = None):
        self.model, self.meta, self.version = model, meta, version
        # identifies the trained model across copies (models/candidate, registry artifacts): precomputed lists
        # are valid exactly for the model with the same id
        self.model_id = model_id or hashlib.md5(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.rules = rules or Rules()
        self.rules_key = self.rules.fingerprint()
        self.history_: Interactions = model.history
        vocab = self.history_.vocab
        self.item_ids = np.asarray(vocab.items, dtype=object)
        self.user_index, self.item_index = vocab.user_index, vocab.item_index
        category = pd.Series(items["category_id"].to_numpy(), index=items["item_id"]).reindex(self.item_ids)
        cats = pd.Categorical(category.to_numpy())
        self.categories = np.asarray(cats.categories, dtype=object)
        self.category_index = pd.Index(self.categories)
        self.item_category = np.asarray(cats.codes, dtype=np.int64)  # -1 unknown
        sources = getattr(model, "sources", None)
        self.sources: dict[str, Recommender] = dict(sources) if sources else {model.name: model}
        self.source_names = list(dict.fromkeys([*self.sources, FILL_CATEGORY, FILL_GLOBAL]))
        self.source_index = {name: i for i, name in enumerate(self.source_names)}
        params = meta.get("params", {})
        self.event_weights = params.get("event_weights", DEFAULT_WEIGHTS)
        self._event_weight = np.array([self.event_weights.get(e, 1.0) for e in EVENT_TYPES], dtype=np.float32)
        pop_source = self.sources.get("popularity")
        pop = (pop_source.item_scores_ if pop_source is not None else
               popularity_scores(self.history_, self.event_weights, params.get("popularity_half_life_days", 3.0)))
        self.popularity = np.asarray(pop, dtype=np.float32) / max(float(np.max(pop, initial=0.0)), 1e-9)
        self.pop_order = np.argsort(-self.popularity, kind="stable")
        slots = np.where(self.item_category >= 0, self.item_category, len(self.categories))
        cat_total = np.bincount(slots, weights=self.popularity, minlength=len(self.categories) + 1)
        self.category_share = (self.popularity / np.maximum(cat_total[slots], 1e-9)).astype(np.float32)
        self.allowed = ~np.isin(self.item_ids, list(self.rules.blocked))
        self._category_orders: dict[int, np.ndarray] = {}
        self.store: Lists | None = None
        self.loaded_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    # -- loading -------------------------------------------------------------------------------------------
    @classmethod
    def load(cls, model_dir: str | Path, version: str | None = None, rules: Rules | None = None) -> ServingModel:
        """The serving model of a model directory (``serving.joblib``, ``items.parquet``, ``meta.json``)."""
        directory = Path(model_dir)
        if not (directory / "serving.joblib").exists():
            raise ShoprecError(f"{directory}: no serving.joblib (not a trained model directory)")
        model = joblib.load(directory / "serving.joblib")
        meta_path = directory / "meta.json"
        raw = meta_path.read_bytes() if meta_path.exists() else b"{}"
        meta = json.loads(raw)
        model_id = hashlib.md5(raw if meta else (directory / "serving.joblib").read_bytes()).hexdigest()[:16]
        items_file = directory / "items.parquet"
        items = (pd.read_parquet(items_file) if items_file.exists() else
                 pd.DataFrame({"item_id": model.history.vocab.items, "category_id": None}))
        meta["model_dir"] = str(directory.resolve())
        return cls(model, items, meta, version, rules, model_id)

    @classmethod
    def from_registry(cls, root: str | Path = ".", ref: str = "champion", rules: Rules | None = None) -> ServingModel:
        """The registered version ``ref`` (number or alias) of the project's MLflow registry."""
        from pipelines.registry import versions as registry

        info = registry.show(ref, root)
        served = cls.load(registry.local_dir(info["source"], root), info["version"], rules)
        served.meta["registry"] = {k: info.get(k) for k in ("version", "run_id", "source", "aliases", "tags")}
        served.meta["metrics"] = info.get("metrics", {})
        return served

    def with_rules(self, rules: Rules) -> ServingModel:
        """The same model under other business rules (a new instance: the old one keeps serving meanwhile)."""
        other = copy.copy(self)
        other.rules, other.rules_key = rules, rules.fingerprint()
        other.allowed = ~np.isin(self.item_ids, list(rules.blocked))
        return other

    def attach_store(self, store: Lists, model_id: str) -> bool:
        """Answer known users from precomputed lists, if they were computed by this very model."""
        if model_id != self.model_id or store.items.shape[0] != self.history_.n_users:
            log.warning("serving store is stale (model %s, store %s): scoring on the fly", self.model_id, model_id)
            return False
        self.store = store
        return True

    def warm_up(self) -> None:
        """Run every code path once (TensorFlow graphs, feature context, ranker libraries) before serving."""
        if self.history_.n_users:
            self.top_lists(np.array([0]), 10)
            last = self._user_events(0)[0][-1:]
            if len(last):
                self.recommend(None, 5, recent_events=[{"item_id": self.item_ids[last[0]], "event_type": "view"}])
        if len(self.item_ids):
            self.similar(str(self.item_ids[self.pop_order[0]]), 5)

    # -- lookups -------------------------------------------------------------------------------------------
    def known_user(self, user_id: str) -> bool:
        return self._user_code(user_id) >= 0

    def known_item(self, item_id: str) -> bool:
        return self._item_code(item_id) >= 0

    def _user_code(self, user_id: str | None) -> int:
        if user_id is None:
            return -1
        try:
            return int(self.user_index.get_loc(user_id))
        except (KeyError, TypeError):
            return -1

    def _item_code(self, item_id: str) -> int:
        try:
            return int(self.item_index.get_loc(item_id))
        except (KeyError, TypeError):
            return -1

    def _category_code(self, category: str | None) -> int | None:
        if category is None:
            return None
        try:
            return int(self.category_index.get_loc(category))
        except (KeyError, TypeError):
            raise UnknownCategory(f"unknown category '{category}'") from None

    def _user_events(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        """Item and event-type codes of a known user's history, oldest first (empty for -1)."""
        if user < 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        bounds = self.history_.user_bounds
        span = slice(bounds[user], bounds[user + 1])
        return self.history_.item[span].astype(np.int64), self.history_.event[span].astype(np.int64)

    def history(self, user_id: str) -> pd.DataFrame:
        """A user's events (item_id, category_id, event_type, ts in UTC), oldest first; empty when unknown."""
        user = self._user_code(user_id)
        items, events = self._user_events(user)
        span = slice(self.history_.user_bounds[user], self.history_.user_bounds[user + 1]) if user >= 0 else slice(0)
        return pd.DataFrame({
            "item_id": self.item_ids[items].astype(str),
            "category_id": np.append(self.categories, None)[self.item_category[items]],  # -1 (unknown) -> None
            "event_type": np.asarray(EVENT_TYPES, dtype=object)[events],
            "ts": pd.to_datetime(self.history_.ts[span], unit="s", utc=True),
        })

    def describe(self) -> dict[str, Any]:
        """Version, training time, data version, metrics and what this instance serves from."""
        tags = self.meta.get("registry", {}).get("tags") or {}
        return {
            "version": self.version,
            "model_id": self.model_id,
            "trained_at": self.meta.get("trained_at"),
            "loaded_at": self.loaded_at,
            "model": self.meta.get("model", self.model.name),
            "ranker": getattr(self.model, "ranker_name_", None),
            "sources": list(self.sources),
            "data_version": {k.removeprefix("data."): v for k, v in tags.items() if k.startswith("data.")},
            "metrics": self.meta.get("metrics", {}),
            "users": int(self.history_.n_users),
            "items": len(self.item_ids),
            "precomputed": self.store is not None,
        }

    # -- the model's own lists -----------------------------------------------------------------------------
    def top_lists(self, users: np.ndarray, depth: int) -> Lists:
        """Each known user's top ``depth`` items (seen items excluded), with source and related item."""
        users = np.asarray(users, dtype=np.int64)
        if hasattr(self.model, "ranker_name_"):
            items, scores, sources = self._two_stage_lists(users, depth)
        else:
            items, scores = self.model.recommend(users, depth, exclude_seen=True)
            items = np.where(np.isfinite(scores), items, -1)
            sources = np.where(items >= 0, self.source_index[self.model.name], -1).astype(np.int16)
        recent = self._recent_items(users)
        related = self._related(recent, items, sources)
        return Lists(items.astype(np.int64), scores.astype(np.float32), sources, related)

    def _two_stage_lists(self, users: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Candidates ordered by the chosen ranker; the source is the proposer that ranked the item best."""
        model: Any = self.model
        scored = model._score_batch(users, model.context)  # candidates + features, as TwoStage.score does
        row_scores = model.rankers[model.ranker_name_].predict(scored.data)
        cands = scored.cands
        width = max(int(cands.group.max(initial=0)), 1)
        table = np.full((len(users), width), -np.inf, dtype=np.float32)
        cand_items = np.full(table.shape, -1, dtype=np.int64)
        row = np.repeat(np.arange(len(users)), cands.group)
        pos = np.arange(len(cands.item)) - np.repeat(np.r_[0, np.cumsum(cands.group)[:-1]], cands.group)
        table[row, pos], cand_items[row, pos] = row_scores, cands.item
        idx, scores = top_k(table, min(depth, width))
        items = np.take_along_axis(cand_items, idx, axis=1)
        items[~np.isfinite(scores)] = -1
        return items, scores, self._best_source(items, cands.source_top)

    def _best_source(self, items: np.ndarray, tops: dict[str, np.ndarray]) -> np.ndarray:
        """Per item, the index of the source whose own list ranks it highest (first source on ties)."""
        n_items = len(self.item_ids)
        rows = np.arange(len(items))[:, None]
        query = (rows * n_items + items).ravel()
        best_rank = np.full(query.shape, np.iinfo(np.int64).max)
        best = np.full(query.shape, -1, dtype=np.int16)
        for name, top in tops.items():
            keys = (rows * n_items + top).ravel()
            ranks = np.broadcast_to(np.arange(top.shape[1]), top.shape).ravel()
            order = np.argsort(keys, kind="stable")
            keys, ranks = keys[order], ranks[order]
            pos = np.minimum(np.searchsorted(keys, query), len(keys) - 1)
            rank = np.where(keys[pos] == query, ranks[pos], np.iinfo(np.int64).max)
            better = rank < best_rank
            best_rank[better], best[better] = rank[better], self.source_index[name]
        best[items.ravel() < 0] = -1
        return best.reshape(items.shape)

    def _recent_items(self, users: np.ndarray) -> np.ndarray:
        """(n, RECENT_ITEMS) each user's latest items, newest first, -1 padded."""
        bounds, hist_items = self.history_.user_bounds, self.history_.item
        end = bounds[users + 1]
        back = end[:, None] - 1 - np.arange(RECENT_ITEMS)[None]
        valid = back >= bounds[users][:, None]
        return np.where(valid, hist_items[np.clip(back, 0, max(len(hist_items) - 1, 0))], -1) if len(hist_items) \
            else np.full(back.shape, -1)

    def _related(self, recent: np.ndarray, items: np.ndarray, sources: np.ndarray) -> np.ndarray:
        """For items from item-to-item sources, the recent item most related to them under that source."""
        related = np.full(items.shape, -1, dtype=np.int64)
        for name in ITEM_TO_ITEM:
            if name not in self.sources or not hasattr(self.sources[name], "matrix_"):
                continue
            rows, cols = np.nonzero(sources == self.source_index[name])
            if not len(rows):
                continue
            anchors = recent[rows]  # (m, RECENT_ITEMS)
            targets = np.repeat(items[rows, cols][:, None], anchors.shape[1], axis=1)
            values = pair_values(self.sources[name].matrix_, anchors.ravel(), targets.ravel()).reshape(anchors.shape)
            best = values.argmax(axis=1)
            found = values[np.arange(len(rows)), best] > 0
            related[rows[found], cols[found]] = anchors[found, best[found]]
        return related

    # -- lists for a request -------------------------------------------------------------------------------
    def needs_scoring(self, user_id: str | None, recent_events: Sequence[Mapping[str, Any]] | None = None,
                      exclude_seen: bool = True) -> bool:
        """Whether ``recommend`` will run a model (milliseconds) rather than read precomputed lists (microseconds)."""
        if recent_events:
            return True
        user = self._user_code(user_id)
        return user >= 0 and not self._store_serves(exclude_seen)

    def _store_serves(self, exclude_seen: bool) -> bool:
        """Precomputed lists exclude seen items; they serve exclude_seen=false only if the model never proposes them."""
        return self.store is not None and (exclude_seen or bool(getattr(self.model, "exclude_seen", False)))

    def recommend(self, user_id: str | None, k: int = 20, exclude_seen: bool = True, category: str | None = None,
                  recent_events: Sequence[Mapping[str, Any]] | None = None) -> list[Recommendation]:
        """Top ``k`` for a known, new or anonymous user, optionally from the events of the current session.

        ``recent_events``: mappings with ``item_id``, ``event_type`` and optionally ``ts``; items the model does
        not know are ignored. With events, the sequential model (or item-to-item sources) scores the user's
        history followed by them; without, a known user gets the model's list. Category and global popularity
        fill the rest. ``exclude_seen`` drops the history and the session's items.
        """
        if k < 1:
            raise ValueError("k must be at least 1")
        cat = self._category_code(category)
        user = self._user_code(user_id)
        hist_items, hist_events = self._user_events(user)
        sess_items, sess_events = self._session(recent_events or [])
        seq_items, seq_events = np.r_[hist_items, sess_items], np.r_[hist_events, sess_events]
        exclude = np.unique(seq_items) if exclude_seen else np.zeros(0, dtype=np.int64)
        depth = min(len(self.item_ids), 2 * k + len(exclude) + 50)

        def parts() -> Iterator[_Part]:
            session = self._session_part(seq_items, seq_events, depth) if len(sess_items) else None
            if session is not None:
                yield session
            elif user >= 0:
                yield self._user_part(user, depth, exclude_seen)
            yield from self._fill_parts(seq_items, seq_events, cat)

        return self._compose(parts(), k, exclude, cat)

    def similar(self, item_id: str, k: int = 20) -> list[Recommendation]:
        """Items related to ``item_id`` by the first item-to-item source, then its category's and global bestsellers."""
        code = self._item_code(item_id)
        if code < 0:
            raise UnknownItem(f"unknown item '{item_id}'")
        cat = int(self.item_category[code])

        def parts() -> Iterator[_Part]:
            for name in ("covisit", "itemcos", "transitions"):
                matrix = getattr(self.sources.get(name), "matrix_", None)
                if matrix is not None:
                    row = matrix.getrow(code)
                    order = np.argsort(-row.data, kind="stable")
                    order = order[row.data[order] > 0]
                    yield _Part(row.indices[order].astype(np.int64), row.data[order],
                                np.full(len(order), self.source_index[name]), np.full(len(order), code))
                    break
            if cat >= 0:
                yield self._category_part(cat)
            yield self._global_part()

        return self._compose(parts(), k, np.array([code]), None, similar=True)

    def _session(self, events: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """Item and event codes of the known items among ``events``, in time order (given order on ties)."""
        if not events:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        frame = pd.DataFrame({
            "item": [self._item_code(str(e.get("item_id"))) for e in events],
            "event": [EVENT_CODE.get(str(e.get("event_type")), 0) for e in events],
            "ts": pd.to_datetime([e.get("ts") for e in events], utc=True, errors="coerce", format="mixed"),
        })
        frame = frame[frame["item"] >= 0]
        if frame["ts"].notna().all():
            frame = frame.sort_values("ts", kind="stable")
        return frame["item"].to_numpy(np.int64), frame["event"].to_numpy(np.int64)

    def _user_part(self, user: int, depth: int, exclude_seen: bool) -> _Part:
        if self.store is not None and self._store_serves(exclude_seen):
            lists, row = self.store, user
        else:
            lists, row = self.top_lists(np.array([user]), depth), 0
        return _Part(lists.items[row], lists.scores[row], lists.sources[row], lists.related[row])

    def _session_part(self, seq_items: np.ndarray, seq_events: np.ndarray, depth: int) -> _Part | None:
        """The sequential model on history + session; else item-to-item sources; None if the model has neither."""
        if "sasrec" in self.sources:
            scores, name = self._sasrec_scores(seq_items), "sasrec"
        else:
            name = next((n for n in ITEM_TO_ITEM if hasattr(self.sources.get(n), "matrix_")), "")
            if not name:
                return None
            scores = self._item_to_item_scores(name, seq_items, seq_events)
        items, values = top_k(scores[None], depth)
        items, values = items[0], values[0]
        if name != "sasrec":
            items, values = items[values > 0], values[values > 0]
        sources = np.full(len(items), self.source_index[name], dtype=np.int16)
        recent = np.full((1, RECENT_ITEMS), -1, dtype=np.int64)
        tail = seq_items[::-1][:RECENT_ITEMS]
        recent[0, : len(tail)] = tail
        related = self._related(recent, items[None], sources[None])[0]
        return _Part(items.astype(np.int64), values, sources, related)

    def _sasrec_scores(self, seq_items: np.ndarray) -> np.ndarray:
        """Next-item logits of the SASRec source for one sequence (its network scores any sequence)."""
        sasrec: Any = self.sources["sasrec"]
        tail = seq_items[-sasrec.params.max_len:].astype(np.int32) + 1  # SASRec feeds item c as c + 1
        return sasrec._network().score_last(tail[None]).numpy()[0]

    def _item_to_item_scores(self, name: str, seq_items: np.ndarray, seq_events: np.ndarray) -> np.ndarray:
        """The source's own profile of a sequence (its recency weighting) times its item x item matrix."""
        source: Any = self.sources[name]
        back = np.arange(len(seq_items))[::-1]
        if name == "transitions":
            keep = back < source.last_n
            weights = np.power(source.decay, back[keep])
        else:
            keep = back < source.history_len
            table = np.array([source.event_weights.get(e, 1.0) for e in EVENT_TYPES], dtype=np.float32)
            weights = table[seq_events[keep]] / (1.0 + back[keep])
        n = len(self.item_ids)
        profile = sp.csr_matrix((weights.astype(np.float32), (np.zeros(keep.sum(), dtype=np.int64), seq_items[keep])),
                                shape=(1, n))
        return np.asarray((profile @ source.matrix_).todense(), dtype=np.float32).ravel()

    def _fill_parts(self, seq_items: np.ndarray, seq_events: np.ndarray, cat: int | None) -> Iterator[_Part]:
        """Category popularity (the requested category, else the user's categories), then global popularity."""
        if cat is not None:
            yield self._category_part(cat)
            return
        known = self.item_category[seq_items] >= 0 if len(seq_items) else np.zeros(0, dtype=bool)
        if known.any():
            affinity = np.bincount(self.item_category[seq_items[known]], minlength=len(self.categories),
                                   weights=self._event_weight[seq_events[known]])
            scores = np.where(self.item_category >= 0, affinity[np.maximum(self.item_category, 0)], 0.0)
            scores = scores * self.category_share
            items = np.argsort(-scores, kind="stable")
            items = items[scores[items] > 0]
            yield _Part(items, scores[items].astype(np.float32), np.full(len(items), self.source_index[FILL_CATEGORY]),
                        np.full(len(items), -1))
        yield self._global_part()

    def _category_part(self, cat: int) -> _Part:
        order = self._category_orders.get(cat)
        if order is None:
            order = self.pop_order[self.item_category[self.pop_order] == cat]
            self._category_orders[cat] = order
        return _Part(order, self.popularity[order], np.full(len(order), self.source_index[FILL_CATEGORY]),
                     np.full(len(order), -1))

    def _global_part(self) -> _Part:
        return _Part(self.pop_order, self.popularity[self.pop_order],
                     np.full(len(self.pop_order), self.source_index[FILL_GLOBAL]), np.full(len(self.pop_order), -1))

    def _compose(self, parts: Iterator[_Part], k: int, exclude: np.ndarray, cat: int | None,
                 similar: bool = False) -> list[Recommendation]:
        """The first ``k`` admissible items over the parts, in order; later parts are only built when needed."""
        taken = np.zeros(len(self.item_ids), dtype=bool)
        taken[exclude] = True
        cap = self.rules.max_per_category if cat is None else None
        per_category = np.zeros(len(self.categories), dtype=np.int64)
        picked: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        need = k
        for part in parts:
            chunk = max(4 * need, 256)
            for start in range(0, len(part.items), chunk):
                items = part.items[start: start + chunk]
                ok = items >= 0
                safe = np.where(ok, items, 0)
                ok &= ~taken[safe] & self.allowed[safe] & np.isfinite(part.scores[start: start + chunk])
                if cat is not None:
                    ok &= self.item_category[safe] == cat
                idx = np.flatnonzero(ok)
                idx = idx[np.sort(np.unique(items[idx], return_index=True)[1])]
                if cap is not None:
                    cats = self.item_category[items[idx]]
                    slot = np.maximum(cats, 0)
                    idx = idx[(cats < 0) | (per_category[slot] + within_group_rank(cats) < cap)]
                idx = idx[:need]
                chosen = items[idx]
                taken[chosen] = True
                if cap is not None:
                    cats = self.item_category[chosen]
                    np.add.at(per_category, cats[cats >= 0], 1)
                i = start + idx
                picked.append((chosen, part.scores[i], part.sources[i], part.related[i]))
                need -= len(idx)
                if need == 0:
                    break
            if need == 0:
                break
        return [Recommendation(str(self.item_ids[item]), float(score), rank, self.source_names[src],
                               self.reason(self.source_names[src], int(rel), int(item), similar))
                for rank, (item, score, src, rel) in enumerate(
                    (row for block in picked for row in zip(*block, strict=True)), start=1)]

    def reason(self, source: str, related: int, item: int, similar: bool) -> str:
        """A short human text for why ``item`` is in the list."""
        if source in ITEM_TO_ITEM:
            if related < 0:
                return "related to what you viewed"
            template = SIMILAR_REASONS[source] if similar else "because you viewed {}"
            return template.format(self.item_ids[related])
        if source == FILL_CATEGORY:
            cat = self.item_category[item]
            return f"popular in category {self.categories[cat]}" if cat >= 0 else "popular in your categories"
        return REASONS.get(source, "recommended for you")
