"""The serving view of a trained model: explained, rule-abiding top-K lists that are always full.

Every list is assembled from *parts*, in order: the model's own list (precomputed, scored on the fly, or from
the session just sent), then category popularity, then global popularity. The model's own list always comes
from the model's ``rank`` (``rank_sequence`` for a session): the path evaluation scores and the store keeps.
Items already taken, seen (when excluded), blocked, outside the requested category or over the per-category cap
are skipped, so a list is full whenever the catalogue allows it. Importing this module is cheap: TensorFlow,
XGBoost and MLflow load only when a model that needs them is loaded or scored.
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

from pipelines.core.config import TrainParams
from pipelines.core.errors import ShoprecError
from pipelines.data.schema import EVENT_TYPES
from pipelines.features.interactions import Interactions, event_weight_table
from pipelines.models.base import RECENT_ITEMS, Ranked, Recommender
from pipelines.models.content import CONTENT_FILE, ContentIndex, closest_new, explore_slots, interleave
from pipelines.models.popularity import popularity_scores
from pipelines.serving.picking import admissible, merged_heads

log = logging.getLogger(__name__)

FILL_CATEGORY, FILL_GLOBAL = "category_popularity", "popularity"
CONTENT, NEW_ITEMS = "content", "new_items"  # content neighbours of an added product; the exploration slots
REASONS = {
    "sasrec": "based on your recent activity",
    "lightgcn": "shoppers like you liked it",
    "popularity": "popular right now",
}
SIMILAR_REASONS = {"covisit": "often viewed together with {}", "itemcos": "liked by the same shoppers as {}",
                   "transitions": "often viewed next after {}"}  # other item-to-item sources: "related to {}"
EVENT_CODE = {name: code for code, name in enumerate(EVENT_TYPES)}
_FIXED, _BY_RELATED, _BY_CATEGORY = range(3)  # reason-table kinds: a fixed text, naming the related item, the category


class UnknownItem(ShoprecError):
    """The item id is not in the served model's catalogue."""


class UnknownCategory(ShoprecError):
    """The category id is not in the served model's catalogue."""


@dataclass  # plain: frozen makes __init__ 3x slower, slots make orjson 4x slower (a list holds up to 200)
class Recommendation:
    """One recommended item; ``score`` is its generator's score, comparable only within one ``source``."""

    item_id: str
    score: float
    rank: int
    source: str
    reason: str


@dataclass(frozen=True)
class Rules:
    """Business rules for every list: blocked (or out-of-stock) items never appear; at most N per category; a
    share of the slots for products added since training.

    Items without a known category are not capped, nor are lists filtered to one category (asked for by name).
    """

    blocked: frozenset[str] = frozenset()
    max_per_category: int | None = None
    explore_share: float = 0.0  # of each list's slots, at most this share go to new products (see ``explore``)

    def fingerprint(self) -> str:
        """Short digest, part of cache keys: lists cached under other rules are never served."""
        text = f"{self.max_per_category}|{self.explore_share}|" + "\n".join(sorted(self.blocked))
        return hashlib.md5(text.encode()).hexdigest()[:8]


def _same(n: int, value: int) -> np.ndarray:
    """``n`` copies of ``value`` as a read-only view (no memory in proportion to a part of a 4M catalogue)."""
    return np.broadcast_to(np.int64(value), (n,))


class _Taken:
    """Items a list may not take again (excluded or already in it): a small sorted array, so that a request
    costs nothing in proportion to the catalogue (a boolean mask of 4M items is 4 MB to clear per request)."""

    def __init__(self, codes: np.ndarray):
        self.codes = np.sort(codes)

    def add(self, items: np.ndarray) -> None:
        self.codes = np.sort(np.concatenate([self.codes, items]))


@dataclass
class _Part:
    """A ranked run of candidate items from one generator (or a row of ``Ranked``); sources index source_names."""

    items: np.ndarray
    scores: np.ndarray
    sources: np.ndarray
    related: np.ndarray


def category_share(popularity: np.ndarray, item_category: np.ndarray, n_categories: int) -> np.ndarray:
    """float32 per item: its share of its category's popularity (items of unknown category share one pool)."""
    slots = np.where(item_category >= 0, item_category, n_categories)
    totals = np.bincount(slots, weights=popularity, minlength=n_categories + 1)
    return (popularity / np.maximum(totals[slots], 1e-9)).astype(np.float32)


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


@dataclass(frozen=True)
class Recent:
    """Known users' newest events (item and event-type codes, oldest first): user u's are [bounds[u]:bounds[u+1]]."""

    bounds: np.ndarray
    items: np.ndarray
    events: np.ndarray


class ServingModel:
    """A trained ``Recommender`` (two-stage or single) with its catalogue, explanations and fallbacks.

    Immutable after loading except for ``attach_store``: the API swaps whole instances on reload.
    """

    def __init__(self, model: Recommender, items: pd.DataFrame, meta: dict[str, Any], version: str | None = None,
                 rules: Rules | None = None, model_id: str | None = None, content: ContentIndex | None = None):
        self.model, self.meta, self.version = model, meta, version
        # identifies the trained model across copies (models/candidate, registry artifacts): precomputed lists
        # are valid exactly for the model with the same id
        self.model_id = model_id or hashlib.md5(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.rules = rules or Rules()
        self.rules_key = self.rules.fingerprint()
        self.history_: Interactions = model.history
        # the newest event the model learned from: live events up to it are already in the history
        self.history_end = pd.Timestamp(int(self.history_.ts.max(initial=0)), unit="s", tz="UTC")
        vocab = self.history_.vocab
        self.item_ids = np.asarray(vocab.items, dtype=object)
        self.user_index, self.item_index = vocab.user_index, vocab.item_index
        category = pd.Series(items["category_id"].to_numpy(), index=items["item_id"]).reindex(self.item_ids)
        cats = pd.Categorical(category.to_numpy())
        self.categories = np.asarray(cats.categories, dtype=object)
        self.category_index = pd.Index(self.categories)
        self.item_category = np.asarray(cats.codes, dtype=np.int64)  # -1 unknown
        self.sources: dict[str, Recommender] = dict(model.components)
        # the model's source names come first, so the source indices of its Ranked lists index this list too
        self.source_names = list(dict.fromkeys([*model.source_names, FILL_CATEGORY, FILL_GLOBAL, CONTENT, NEW_ITEMS]))
        self.source_index = {name: i for i, name in enumerate(self.source_names)}
        self.relating = {name for name, source in self.sources.items() if source.relates_items}
        self._reason_table = {similar: self._reasons_by_source(similar) for similar in (False, True)}
        # the parameters the model was trained with (meta.json); the pipeline's defaults where meta has none
        params, defaults = meta.get("params", {}), TrainParams()
        self.event_weights: dict[str, float] = params.get("event_weights", defaults.event_weights)
        self._event_weight = event_weight_table(self.event_weights)
        pop = popularity_scores(self.history_, self.event_weights,
                                params.get("popularity_half_life_days", defaults.popularity_half_life_days))
        self.popularity = np.asarray(pop, dtype=np.float32) / max(float(np.max(pop, initial=0.0)), 1e-9)
        self.pop_order = np.argsort(-self.popularity, kind="stable")
        self.category_share = category_share(self.popularity, self.item_category, len(self.categories))
        # products added through the catalogue API get the codes after the model's own
        self.n_model_items = len(self.item_ids)
        self.content = content if content is not None else ContentIndex.fit(items)
        self.out_of_stock: frozenset[str] = frozenset()
        self.catalogue_key = "0"
        self.allowed = self._allowed()
        self._by_category: tuple[np.ndarray, np.ndarray] | None = None
        self._global: _Part | None = None
        self.store: Ranked | None = None
        self.recent: Recent | None = None
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
        content_file = directory / CONTENT_FILE
        content = joblib.load(content_file) if content_file.exists() else None  # older models: built here
        return cls(model, items, meta, version, rules, model_id, content)

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
        other.allowed = other._allowed()
        return other

    def _allowed(self) -> np.ndarray:
        """bool per item code: neither blocked by the rules nor out of stock."""
        return ~np.isin(self.item_ids, [*self.rules.blocked, *self.out_of_stock])

    def with_catalogue(self, records: Sequence[Mapping[str, Any]], revision: str) -> ServingModel:
        """The same model serving the products of ``records`` (catalogue API rows in the order sent; of an id sent
        more than once, the last row counts): new ids get new codes, known ids their new category, content and
        stock. The model's own lists never hold the new codes; the content index proposes them (``similar``,
        exploration slots).

        A new instance (the old one keeps serving meanwhile); ``revision`` names the catalogue state in cache keys.
        """
        other = copy.copy(self)
        if not records:
            return other
        records = list({str(r["item_id"]): r for r in records}.values())  # an id sent twice: the later row wins
        ids = [str(r["item_id"]) for r in records]
        known = self.item_index.get_indexer(ids)
        new_ids = [i for i, code in zip(ids, known, strict=True) if code < 0]
        other.item_ids = np.r_[self.item_ids, np.asarray(new_ids, dtype=object)]
        other.item_index = pd.Index(other.item_ids)
        codes = other.item_index.get_indexer(ids).astype(np.int64)
        categories = [r.get("category_id") for r in records]
        other.categories = np.asarray(list(dict.fromkeys([*self.categories, *(c for c in categories if c)])),
                                      dtype=object)
        other.category_index = pd.Index(other.categories)
        other.item_category = np.r_[self.item_category, np.full(len(new_ids), -1, dtype=np.int64)]
        other.item_category[codes] = [other.category_index.get_loc(c) if c else -1 for c in categories]
        grown = len(new_ids)
        other.popularity = np.r_[self.popularity, np.zeros(grown, dtype=np.float32)]
        other.pop_order = np.r_[self.pop_order, np.arange(self.n_model_items, len(other.item_ids))]
        other.category_share = category_share(other.popularity, other.item_category, len(other.categories))
        stock = {i: bool(r.get("in_stock", True)) for i, r in zip(ids, records, strict=True)}
        other.out_of_stock = (self.out_of_stock - stock.keys()) | {i for i, available in stock.items() if not available}
        other.content = copy.copy(self.content)
        other.content.add(codes, records)
        other.catalogue_key = revision
        other.allowed = other._allowed()
        other._by_category, other._global = None, None
        return other

    @property
    def new_items(self) -> np.ndarray:
        """Codes of the products added since training: what exploration slots and content neighbours propose."""
        return np.arange(self.n_model_items, len(self.item_ids))

    def attach_store(self, store: Ranked, model_id: str, recent: Recent | None = None) -> bool:
        """Answer known users from precomputed lists, if they were computed by this very model; ``recent``: the
        store's newest events per user, the history of users the model itself holds none of (trained on parts)."""
        if model_id != self.model_id or store.items.shape[0] != self.history_.n_users:
            log.warning("serving store is stale (model %s, store %s): scoring on the fly", self.model_id, model_id)
            return False
        self.store, self.recent = store, recent
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
        if bounds[user + 1] == bounds[user] and self.recent is not None:  # a model trained on parts: the store's
            span = slice(self.recent.bounds[user], self.recent.bounds[user + 1])
            return self.recent.items[span], self.recent.events[span]
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
            "ranker": self.model.ranker_name,
            "sources": list(self.sources),
            "data_version": {k.removeprefix("data."): v for k, v in tags.items() if k.startswith("data.")},
            "metrics": self.meta.get("metrics", {}),
            "users": int(self.history_.n_users),
            "items": len(self.item_ids),
            "precomputed": self.store is not None,
            "new_items": len(self.new_items),
        }

    def unseen(self, events: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The live events newer than the model's history (a retrained model already holds the older ones)."""
        return [e for e in events if pd.Timestamp(e["ts"]) > self.history_end]

    # -- the model's own lists -----------------------------------------------------------------------------
    def top_lists(self, users: np.ndarray, depth: int, exclude_seen: bool = True) -> Ranked:
        """Each known user's top ``depth`` items from the model's ``rank``, with source and related item."""
        return self.model.rank(np.asarray(users, dtype=np.int64), depth, exclude_seen)

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
        return self.store is not None and (exclude_seen or self.model.exclude_seen)

    def recommend(self, user_id: str | None, k: int = 20, exclude_seen: bool = True, category: str | None = None,
                  recent_events: Sequence[Mapping[str, Any]] | None = None) -> list[Recommendation]:
        """Top ``k`` for a known, new or anonymous user, optionally from the events of the current session.

        ``recent_events``: mappings with ``item_id``, ``event_type`` and optionally ``ts``; items the model does
        not know are ignored. With events, the model ranks the user's history followed by them (``rank_sequence``:
        a two-stage model runs its whole path, sources to chosen ranker); without, a known user gets the model's
        list. Category and global popularity fill the rest. ``exclude_seen`` drops the history and the session's
        items (a model that never proposes seen items keeps them out of its own list either way).
        """
        if k < 1:
            raise ValueError("k must be at least 1")
        cat = self._category_code(category)
        user = self._user_code(user_id)
        hist_items, hist_events = self._user_events(user)
        sess_items, sess_events = self._session(recent_events or [])
        seq_items, seq_events = np.concatenate([hist_items, sess_items]), np.concatenate([hist_events, sess_events])
        exclude = np.unique(seq_items) if exclude_seen else np.zeros(0, dtype=np.int64)
        depth = min(len(self.item_ids), 2 * k + len(exclude) + 50)
        own = sess_items < self.n_model_items  # products added since training are not the model's to rank
        model_items = np.concatenate([hist_items, sess_items[own]])
        model_events = np.concatenate([hist_events, sess_events[own]])

        def parts() -> Iterator[_Part]:
            session = None
            if own.any():
                session = self.model.rank_sequence(model_items, model_events, depth, exclude_seen, user)
            if session is not None:
                yield _Part(session.items[0], session.scores[0], session.sources[0], session.related[0])
            elif user >= 0:
                yield self._user_part(user, depth, exclude_seen)
            yield from self._fill_parts(seq_items, seq_events, cat, 2 * k + len(exclude))

        return self._compose(parts(), k, exclude, cat, self._explore_part(seq_items[::-1][:RECENT_ITEMS], k))

    def similar(self, item_id: str, k: int = 20) -> list[Recommendation]:
        """Items related to ``item_id`` by the model's first source that relates items (for a product added since
        training: its content neighbours), then its category's and global bestsellers; new products similar in
        content take the exploration slots."""
        code = self._item_code(item_id)
        if code < 0:
            raise UnknownItem(f"unknown item '{item_id}'")
        cat = int(self.item_category[code])

        def parts() -> Iterator[_Part]:
            name = next((n for n in self.sources if n in self.relating), None)
            if code >= self.n_model_items:  # added since training: its content neighbours, old and new
                items, strength = self.content.neighbours(self.content.item_vectors(np.array([code])), 4 * k + 50,
                                                          exclude=[code])
                yield _Part(items, strength, _same(len(items), self.source_index[CONTENT]),
                            _same(len(items), code))
            elif name is not None:
                items, strength = self.sources[name].related(code)
                yield _Part(items, strength, _same(len(items), self.source_index[name]), _same(len(items), code))
            if cat >= 0:
                yield self._category_part(cat)
            yield self._global_part()

        return self._compose(parts(), k, np.array([code]), None, self._explore_part(np.array([code]), k), similar=True)

    def _explore_part(self, recent: np.ndarray, k: int) -> _Part | None:
        """The new products closest in content to ``recent`` (item codes, newest first), for the exploration slots
        of a list of ``k``; None when the rules give them no slot, nothing was added or nothing is recent."""
        if not explore_slots(k, self.rules.explore_share) or not len(self.new_items) or not len(recent):
            return None
        items, strength = closest_new(self.content, [recent], self.new_items, k)[0]
        anchors = np.zeros(0, dtype=np.int64)
        if len(items):  # the explanation: the recent item closest in content to each proposed one
            similarity = (self.content.item_vectors(items) @ self.content.item_vectors(recent).T).toarray()
            anchors = recent[similarity.argmax(axis=1)].astype(np.int64)
        return _Part(items, strength, _same(len(items), self.source_index[NEW_ITEMS]), anchors)

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
            lists, row = self.top_lists(np.array([user]), depth, exclude_seen), 0
        return _Part(lists.items[row], lists.scores[row], lists.sources[row], lists.related[row])

    def _fill_parts(self, seq_items: np.ndarray, seq_events: np.ndarray, cat: int | None,
                    width: int) -> Iterator[_Part]:
        """Category popularity (the requested category, else the user's categories), then global popularity.

        The user's categories' bestsellers come as their best ``width`` first (enough unless more than ``width``
        minus the list's length of them are excluded or blocked), then, only if the list still needs items, the
        rest in the same order.
        """
        if cat is not None:
            yield self._category_part(cat)
            return
        known = self.item_category[seq_items] >= 0 if len(seq_items) else np.zeros(0, dtype=bool)
        affinity = np.bincount(self.item_category[seq_items[known]], minlength=len(self.categories),
                               weights=self._event_weight[seq_events[known]])
        liked = np.flatnonzero(affinity > 0)
        if len(liked):  # only the items of the shopper's categories, each category's in popularity order already
            grouped, ends = self._grouped_by_category()
            starts, stops = ends[liked], ends[liked + 1]
            for limit, skip in ((width, 0), (int((stops - starts).sum()), width)):
                items, scores = merged_heads(grouped, starts, stops, affinity[liked], self.category_share, limit)
                items, scores = items[skip:], scores[skip:]
                yield _Part(items, scores.astype(np.float32), _same(len(items), self.source_index[FILL_CATEGORY]),
                            _same(len(items), -1))
                if skip + len(items) < limit:
                    break  # the heads held every item with a share
        yield self._global_part()

    def _category_order(self, cat: int) -> np.ndarray:
        """The category's items, most popular first: a slice of ``_grouped_by_category``."""
        grouped, ends = self._grouped_by_category()
        return grouped[ends[cat]: ends[cat + 1]]  # slot 0 holds the unknown category (-1)

    def _grouped_by_category(self) -> tuple[np.ndarray, np.ndarray]:
        """Every item grouped by category in popularity order, and where category c's run ends (``ends[c + 1]``):
        one stable sort on first use, then kept (one category at a time cost a 4M-item pass each)."""
        if self._by_category is None:
            grouped = self.pop_order[np.argsort(self.item_category[self.pop_order], kind="stable")]
            ends = np.cumsum(np.bincount(self.item_category + 1, minlength=len(self.categories) + 1))
            self._by_category = (grouped, ends)
        return self._by_category

    def _category_part(self, cat: int) -> _Part:
        order = self._category_order(cat)
        return _Part(order, self.popularity[order], _same(len(order), self.source_index[FILL_CATEGORY]),
                     _same(len(order), -1))

    def _global_part(self) -> _Part:
        """Global popularity: built once per model (at 4M items, gathering the scores is 16 MB per request)."""
        if self._global is None:
            n = len(self.pop_order)
            self._global = _Part(self.pop_order, self.popularity[self.pop_order],
                                 _same(n, self.source_index[FILL_GLOBAL]), _same(n, -1))
        return self._global

    def _compose(self, parts: Iterator[_Part], k: int, exclude: np.ndarray, cat: int | None,
                 explore: _Part | None = None, similar: bool = False) -> list[Recommendation]:
        """The first ``k`` admissible items over the parts, in order, with the exploration slots (if any) given to
        ``explore``'s items at evenly spread ranks; later parts are only built when needed."""
        taken = _Taken(exclude)
        cap = self.rules.max_per_category if cat is None else None
        per_category = np.zeros(len(self.categories), dtype=np.int64)
        fresh = []
        if explore is not None:
            fresh = self._pick(iter([explore]), explore_slots(k, self.rules.explore_share), taken, per_category, cat,
                               cap)
        rows = interleave(self._pick(parts, k - len(fresh), taken, per_category, cat, cap), fresh)
        if not rows:
            return []
        items, scores, sources, related = zip(*rows, strict=True)
        ids, names = self.item_ids[list(items)].tolist(), self.source_names
        return [Recommendation(item_id, score, rank, names[src], reason) for rank, item_id, score, src, reason in
                zip(range(1, len(rows) + 1), ids, scores, sources, self.reasons(sources, related, items, similar),
                    strict=True)]

    def _pick(self, parts: Iterator[_Part], need: int, taken: _Taken, per_category: np.ndarray, cat: int | None,
              cap: int | None) -> list[tuple[Any, Any, Any, Any]]:
        """Up to ``need`` admissible (item, score, source, related) rows from the parts in order; marks them taken."""
        picked: list[tuple[list[int], list[float], list[int], list[int]]] = []
        category, limit = -1 if cat is None else cat, -1 if cap is None else cap
        while need > 0:  # checked before the next part is built: a full list never builds its fallbacks
            part = next(parts, None)
            if part is None:
                break
            i = admissible(part.items, part.scores, taken.codes, self.allowed, self.item_category, category, limit,
                           per_category, need)
            chosen = part.items[i]
            taken.add(chosen)
            # Python scalars: building the response from numpy scalars costs twice as much
            picked.append((chosen.tolist(), part.scores[i].tolist(), part.sources[i].tolist(),
                           part.related[i].tolist()))
            need -= len(i)
        return [row for block in picked for row in zip(*block, strict=True)]

    def reasons(self, sources: Sequence[int], related: Sequence[int], items: Sequence[int],
                similar: bool) -> list[str]:
        """A short human text per row (source indices, related and item codes) for why the item is listed: one table
        lookup per row, since a list of 200 items built its texts one method call at a time (a fifth of a miss)."""
        table, ids = self._reason_table[similar], self.item_ids
        out = []
        for src, rel, item in zip(sources, related, items, strict=True):
            kind, template, otherwise = table[src]
            if kind == _FIXED:
                out.append(otherwise)
            elif kind == _BY_CATEGORY:
                cat = self.item_category[item]
                out.append(f"popular in category {self.categories[cat]}" if cat >= 0 else otherwise)
            else:
                out.append(template.format(ids[rel]) if rel >= 0 else otherwise)
        return out

    def _reasons_by_source(self, similar: bool) -> list[tuple[int, str, str]]:
        """Per source index: (kind, template taking the related item's id, the text without a related item or
        the fixed text)."""
        table: list[tuple[int, str, str]] = []
        for source in self.source_names:
            if source in self.relating:
                template = SIMILAR_REASONS.get(source, "related to {}") if similar else "because you viewed {}"
                table.append((_BY_RELATED, template, "related to what you viewed"))
            elif source == NEW_ITEMS:
                table.append((_BY_RELATED, "new: similar to {}", "new in the shop"))
            elif source == CONTENT:
                table.append((_BY_RELATED, "similar to {}", "similar to what you viewed"))
            elif source == FILL_CATEGORY:
                table.append((_BY_CATEGORY, "", "popular in your categories"))
            else:
                table.append((_FIXED, "", REASONS.get(source, "recommended for you")))
        return table
