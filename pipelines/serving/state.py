"""What the API serves: one model reference, swapped only for a fully loaded and warmed-up model (and, during an
online experiment, a challenger model for a stable share of shoppers), with the response cache (and its keys), the
event log, the shoppers' live events, registry polling and the background tasks of the app's lifespan."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException

from pipelines.core.errors import ShoprecError
from pipelines.experiments.arms import Arm, arm_of
from pipelines.serving.cache import Cache, CacheKey, make_cache
from pipelines.serving.catalogue import CatalogueItem, CatalogueLog
from pipelines.serving.events import Event, EventLog
from pipelines.serving.impressions import ImpressionLog, with_request_id
from pipelines.serving.live import LiveEvents, LiveHistory, event_shoppers, make_live
from pipelines.serving.model import ServingModel, registry_available
from pipelines.serving.schemas import CatalogueAck, ReloadOut
from pipelines.serving.settings import Settings
from pipelines.serving.store import MANIFEST_FILE, attach_store

log = logging.getLogger(__name__)

SEP = "\x1f"  # cache field separator: ids cannot contain control characters


def _field(model: ServingModel, *parts: str) -> str:
    return SEP.join((model.model_id, str(model.version), model.rules_key, model.catalogue_key, *parts))


def list_key(model: ServingModel, shopper: str, k: int, exclude_seen: bool, category: str | None,
             arm: Arm = "champion") -> CacheKey:
    """Cache key of a shopper's list: the shopper's group (dropped on their next event); model, rules and arm in
    the field, so a reload or new rules never serve old bodies (and the body's arm is the shopper's)."""
    return shopper, _field(model, arm, str(k), str(int(exclude_seen)), category or "")


def similar_key(model: ServingModel, item_id: str, k: int) -> CacheKey:
    return f"i:{item_id}", _field(model, str(k))


class ServingState:
    """The served model (one reference), the cache, the event log, live shopper state and the reload machinery."""

    def __init__(self, settings: Settings, model: ServingModel | None):
        self.settings = settings
        self.model = model
        self.challenger: ServingModel | None = None  # an online experiment's other arm
        self.experiment: str | None = None  # its id, which salts the shoppers' arm hash
        self.cache: Cache = make_cache(settings.redis_url, settings.cache_size, settings.cache_ttl_s,
                                       settings.cache_max_mb)
        self.events = EventLog(settings.events_path)
        self.catalogue = CatalogueLog(settings.events_path)
        self.impressions = (ImpressionLog(settings.events_path, settings.impressions_max_pending)
                            if settings.impressions else None)
        self._catalogue_applied: list[str] = []  # batches the served model holds
        self.live: LiveHistory = make_live(settings.redis_url, settings.live_max_events, settings.live_ttl_s,
                                           settings.live_max_shoppers)
        self.load_error: str | None = None
        self.rules_mtime = settings.rules_mtime()
        self._reload_lock = asyncio.Lock()
        self._registry: Any = None  # MlflowClient, created on the first poll
        self._store_mtime: float | None = None

    def current(self) -> ServingModel:
        model = self.model
        if model is None:
            raise HTTPException(503, f"no model loaded yet{': ' + self.load_error if self.load_error else ''}")
        return model

    def model_for(self, shopper: str | None) -> tuple[ServingModel, Arm]:
        """The model of the shopper's arm: the challenger for its share of shoppers (a stable hash of the shopper
        id, so one shopper keeps one arm), the champion for everyone else and for lists with no shopper."""
        model, challenger, experiment = self.current(), self.challenger, self.experiment
        if (challenger is not None and shopper is not None and experiment is not None
                and arm_of(shopper, self.settings.challenger_share, experiment) == "challenger"):
            return challenger, "challenger"
        return model, "champion"

    def experiment_status(self) -> dict[str, Any] | None:
        """The running experiment as /v1/model reports it (None without one)."""
        champion, challenger = self.model, self.challenger
        if challenger is None or champion is None:
            return None
        return {"experiment": self.experiment, "champion_version": champion.version,
                "challenger_version": challenger.version, "challenger_share": self.settings.challenger_share}

    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        """The app's background work: the first load (unless a model was given) and the registry poll."""
        tasks = []
        if self.model is None:
            tasks.append(asyncio.create_task(self._initial_load()))
        if self.settings.reload_poll_s > 0:
            tasks.append(asyncio.create_task(self.poll(self.settings.reload_poll_s)))
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.cache.close()
        await self.live.close()
        if self.impressions is not None:
            self.impressions.close()

    async def served(self, body: bytes, surface: str, arm: Arm = "champion") -> bytes:
        """A list's response body as sent: with a new ``request_id``, and logged as impressions (on disk first)."""
        request_id, sent = with_request_id(body)
        if self.impressions is not None:
            await self.impressions.log(request_id, body, surface, arm)
        return sent

    async def record(self, events: list[Event]) -> bool:
        """After the events are in the log: add them to their shoppers' live state and drop those shoppers'
        cached lists; False when the live state could not take them (Redis down)."""
        live = await self.live.add(events)
        await self.cache.invalidate({shopper for event in events for shopper in event_shoppers(event)})
        return live

    async def cache_unless_changed(self, key: CacheKey, body: bytes, shopper: str, seen: LiveEvents) -> None:
        """Cache a shopper's list only if no event arrived while it was computed (it would be stale at once)."""
        if await self.live.version(shopper) == seen.version:
            await self.cache.set(key, body)

    async def _initial_load(self) -> None:
        """Load at start-up without blocking the server: /healthz answers at once, /readyz once loaded."""
        try:
            await self.reload(force=True)
        except Exception:  # logged by reload(); the poll (or an admin reload) tries again
            return

    def _load(self) -> ServingModel:
        """Load, attach the store and warm up (blocking: runs in a worker thread)."""
        s = self.settings
        rules = s.rules()
        if s.model_dir is not None:
            model = ServingModel.load(s.model_dir, rules=rules)
        elif registry_available(s.root):
            model = ServingModel.from_registry(s.root, s.model_ref, rules)
            self._registry_version()  # creates the polling client now, not in the middle of traffic
        elif (s.root / "models" / "champion" / "serving.joblib").exists():
            log.warning("no model registry under %s: serving models/champion", s.root)
            model = ServingModel.load(s.root / "models" / "champion", rules=rules)
        else:
            raise ShoprecError(f"nothing to serve under {s.root.resolve()}: no registry and no models/champion")
        attach_store(model, s.store_path)
        return self._ready(model)

    def _ready(self, model: ServingModel) -> ServingModel:
        """``model`` with every logged catalogue batch applied, warmed up."""
        batches = self.catalogue.batches()
        model = model.with_catalogue(self.catalogue.read(batches), batches[-1] if batches else "0")
        model.warm_up()
        self._catalogue_applied = batches
        return model

    def _challenger_version(self) -> str | None:
        """The version the challenger ref points at now; None without an experiment (no ref, no share, not
        serving from the registry, or the alias is not set)."""
        s = self.settings
        if s.challenger_ref is None or s.challenger_share <= 0:
            return None
        try:
            return self._registry_version(s.challenger_ref)
        except Exception:  # MlflowException: the alias is not set, i.e. no experiment runs
            return None

    def _load_challenger(self, version: str) -> ServingModel:
        """The challenger, ready to serve (blocking). Its lists are ranked live: the precomputed store holds the
        champion's."""
        return self._ready(ServingModel.from_registry(self.settings.root, version, self.settings.rules()))

    async def _challenger_for(self, champion: ServingModel) -> tuple[ServingModel | None, str | None]:
        """The challenger the ref points at now and the experiment's id against ``champion`` (the served
        challenger is kept when its version has not moved)."""
        version = await asyncio.to_thread(self._challenger_version)
        old = self.challenger
        if old is not None and old.version == version:
            challenger: ServingModel | None = old
        else:
            challenger = await asyncio.to_thread(self._load_challenger, version) if version is not None else None
            log.warning("experiment: challenger version %s (share %s), previous %s", version,
                        self.settings.challenger_share, old.version if old is not None else None)
        experiment = (self.settings.experiment or f"v{champion.version}-vs-v{version}") if version is not None else None
        return challenger, experiment

    async def add_items(self, items: list[CatalogueItem]) -> CatalogueAck:
        """Log the items durably, then serve a copy of the model that knows them (a new cache namespace)."""
        async with self._reload_lock:
            model = self.current()
            name = await asyncio.to_thread(self.catalogue.append, items)
            records = [item.model_dump() for item in items]
            known = sum(model.known_item(item.item_id) for item in {i.item_id: i for i in items}.values())
            await self._with_catalogue(records, name)
            self._catalogue_applied.append(name)
        distinct = len({item.item_id for item in items})
        return CatalogueAck(accepted=len(items), added=distinct - known, updated=known, batch=name)

    async def _catch_up_catalogue(self) -> None:
        """Apply the batches other API processes on this root logged since this one last looked."""
        async with self._reload_lock:
            model = self.model
            done = set(self._catalogue_applied)
            fresh = [name for name in await asyncio.to_thread(self.catalogue.batches) if name not in done]
            if model is None or not fresh:
                return
            records = await asyncio.to_thread(self.catalogue.read, fresh)
            await self._with_catalogue(records, fresh[-1])
            self._catalogue_applied.extend(fresh)
            log.warning("catalogue: %d items from %d batches of other processes", len(records), len(fresh))

    async def _with_catalogue(self, records: list[dict[str, Any]], revision: str) -> None:
        """Serve copies of the champion and the challenger that know the catalogue ``records``."""
        for attr in ("model", "challenger"):
            model = getattr(self, attr)
            if model is not None:
                setattr(self, attr, await asyncio.to_thread(model.with_catalogue, records, revision))

    def _registry_version(self, ref: str | None = None) -> str | None:
        """The version ``ref`` (default: the served ref) points at now (None when not serving from the registry).

        One alias lookup on a kept client (about 2 ms): polls run beside the requests and share their interpreter.
        """
        s = self.settings
        ref = ref or s.model_ref
        if s.model_dir is not None or not registry_available(s.root):
            return None
        if ref.isdigit():
            return ref
        from pipelines.registry import versions as registry

        if self._registry is None:
            self._registry = registry.client(s.root)
        return str(self._registry.get_model_version_by_alias(registry.MODEL_NAME, ref).version)

    async def reload(self, force: bool = False) -> ReloadOut:
        """Load the configured model if it differs from the served one, then swap it in with one assignment."""
        async with self._reload_lock:
            old = self.model
            previous = old.version if old is not None else None
            try:
                if old is not None and not force:
                    target = await asyncio.to_thread(self._registry_version)
                    if target is None or target == old.version:
                        self.challenger, self.experiment = await self._challenger_for(old)
                        return ReloadOut(version=previous, previous_version=previous, reloaded=False)
                new = await asyncio.to_thread(self._load)
                challenger, experiment = await self._challenger_for(new)  # ready before the first request
            except Exception as exc:  # anything: the old models keep serving
                self.load_error = f"{type(exc).__name__}: {exc}"
                log.error("model load failed, still serving version %s: %s", previous, self.load_error)
                raise
            self.load_error = None
            self.model, self.challenger, self.experiment = new, challenger, experiment
            del old  # the replaced model may now be collected
            await asyncio.to_thread(_settle_heap)
            log.warning("serving model version %s (id %s), previous %s", new.version, new.model_id, previous)
            return ReloadOut(version=new.version, previous_version=previous, reloaded=True)

    async def refresh(self) -> None:
        """One poll: a newly promoted version, changed blocked items, or a store written for the served model."""
        model = self.model
        if model is None:
            await self.reload(force=True)
            return
        await self.reload()
        await self._catch_up_catalogue()
        mtime = self.settings.rules_mtime()
        if mtime != self.rules_mtime:
            rules = await asyncio.to_thread(self.settings.rules)
            self.rules_mtime = mtime
            self.model = self.model.with_rules(rules) if self.model is not None else None
            self.challenger = self.challenger.with_rules(rules) if self.challenger is not None else None
            log.warning("business rules reloaded: %d blocked items", len(rules.blocked))
        current = self.model
        manifest = self.settings.store_path / MANIFEST_FILE
        store_mtime = manifest.stat().st_mtime if manifest.exists() else None
        if current is not None and current.store is None and store_mtime != self._store_mtime:
            self._store_mtime = store_mtime  # a store is (re)considered only when a new one is written
            await asyncio.to_thread(attach_store, current, self.settings.store_path)

    async def poll(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.refresh()
            except Exception as exc:  # a broken registry must not stop the polling (or the API)
                log.warning("refresh failed: %s: %s", type(exc).__name__, exc)


def _settle_heap() -> None:
    """Collect the replaced model once, then freeze the survivors (the served model: millions of long-lived
    objects) out of the collector's full passes, which would otherwise stall requests for tens of milliseconds."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
