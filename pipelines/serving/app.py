"""The recommendation API: ``create_app(settings)`` builds it, ``shoprec serve`` runs it under uvicorn.

Hot path: a known user's list comes from the response cache or the precomputed store in well under a millisecond
inside the event loop; anything that runs a model (sessions, stale store) goes to the thread pool. The served
model is one reference, replaced only by a fully loaded and warmed-up model, and every request reads it once,
so a reload never fails a request. See docs/serving.md.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import asdict
from pathlib import Path as FilePath
from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError

from pipelines.core.errors import ShoprecError
from pipelines.serving.cache import Cache, make_cache
from pipelines.serving.events import (
    ID_PATTERN,
    MAX_ID_CHARS,
    Event,
    EventLog,
    EventType,
    Id,
    Timestamp,
)
from pipelines.serving.model import (
    Recommendation,
    ServingModel,
    UnknownCategory,
    UnknownItem,
    registry_available,
)
from pipelines.serving.settings import Settings
from pipelines.serving.store import MANIFEST_FILE, attach_store

log = logging.getLogger(__name__)

MAX_K = 200
MAX_SESSION_EVENTS = 200
MAX_BATCH_EVENTS = 1000
SEP = "\x1f"  # cache key separator: ids cannot contain control characters
JSON = "application/json"
BEARER = HTTPBearer(auto_error=False, description="SHOPREC_ADMIN_TOKEN")

# URL decoding replaces invalid bytes, so path and query text is always valid Unicode: the pattern suffices
PathId = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN,
                             description=f"1-{MAX_ID_CHARS} characters, no control characters")]
K = Annotated[int, Query(ge=1, le=MAX_K, description=f"list length, 1-{MAX_K}")]
CategoryParam = Annotated[str | None, Query(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN,
                                            description="only items of this category (404 if unknown)")]


# -- wire models (they make the OpenAPI spec precise) --------------------------------------------------------------
class RecommendationOut(BaseModel):
    item_id: str
    score: float = Field(description="the generator's score; comparable only within one source")
    rank: int = Field(ge=1)
    source: str = Field(description="candidate generator that proposed the item, or the fallback "
                                    "(category_popularity, popularity)")
    reason: str = Field(description="short human explanation")


class RecommendationsOut(BaseModel):
    user_id: str | None
    known_user: bool = Field(description="false: a new or anonymous user, answered by the fallback chain")
    model_version: str | None
    items: list[RecommendationOut]


class SimilarOut(BaseModel):
    item_id: str
    model_version: str | None
    items: list[RecommendationOut]


class SessionEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: Id = Field(description="items the model does not know are ignored")
    event_type: EventType
    ts: Timestamp


class SessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: Id | None = Field(None, description="omit for an anonymous session")
    recent_events: list[SessionEvent] = Field(default_factory=list, max_length=MAX_SESSION_EVENTS)
    k: int = Field(20, ge=1, le=MAX_K)
    exclude_seen: StrictBool = True
    category: Id | None = None


class EventsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[Event] = Field(min_length=1, max_length=MAX_BATCH_EVENTS)


class EventsAck(BaseModel):
    accepted: int = Field(description="events durably appended to the log")
    batch: str = Field(description="file of the batch in the event log")


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    ready: bool
    version: str | None = None
    detail: str | None = None


class ModelInfo(BaseModel):
    version: str | None
    model_id: str
    trained_at: str | None
    loaded_at: str
    model: str
    ranker: str | None
    sources: list[str]
    data_version: dict[str, str]
    metrics: dict[str, float]
    users: int
    items: int
    precomputed: bool = Field(description="known users are answered from the precomputed store")
    cache: dict[str, Any]
    rules: dict[str, Any]


class ReloadOut(BaseModel):
    version: str | None
    previous_version: str | None
    reloaded: bool = Field(description="false: the registry still points at the served model")


class ErrorOut(BaseModel):
    detail: Any = Field(description="what was wrong: a message, or a list of validation errors")


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    texts = {400: "the body could not be read (e.g. not UTF-8)", 401: "missing or wrong bearer token",
             403: "admin actions disabled (no token configured)", 404: "unknown item, category or path",
             413: "request body too large", 422: "invalid input", 503: "no model loaded yet, or the reload failed"}
    return {code: {"model": ErrorOut, "description": texts[code]} for code in codes}


# -- state ---------------------------------------------------------------------------------------------------------
class ServingState:
    """The served model (one reference), the cache, the event log and the reload machinery."""

    def __init__(self, settings: Settings, model: ServingModel | None):
        self.settings = settings
        self.model = model
        self.cache: Cache = make_cache(settings.redis_url, settings.cache_size, settings.cache_ttl_s)
        self.events = EventLog(settings.events_path)
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
        model.warm_up()
        return model

    def _registry_version(self) -> str | None:
        """The version the configured ref points at now (None when not serving from the registry).

        One alias lookup on a kept client (about 2 ms): polls run beside the requests and share their interpreter.
        """
        s = self.settings
        if s.model_dir is not None or not registry_available(s.root):
            return None
        if s.model_ref.isdigit():
            return s.model_ref
        from pipelines.registry import versions as registry

        if self._registry is None:
            self._registry = registry.client(s.root)
        return str(self._registry.get_model_version_by_alias(registry.MODEL_NAME, s.model_ref).version)

    async def reload(self, force: bool = False) -> ReloadOut:
        """Load the configured model if it differs from the served one, then swap it in with one assignment."""
        async with self._reload_lock:
            old = self.model
            previous = old.version if old is not None else None
            try:
                if old is not None and not force:
                    target = await asyncio.to_thread(self._registry_version)
                    if target is None or target == old.version:
                        return ReloadOut(version=previous, previous_version=previous, reloaded=False)
                new = await asyncio.to_thread(self._load)
            except Exception as exc:  # anything: the old model keeps serving
                self.load_error = f"{type(exc).__name__}: {exc}"
                log.error("model load failed, still serving version %s: %s", previous, self.load_error)
                raise
            self.load_error = None
            self.model = new
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
        mtime = self.settings.rules_mtime()
        if mtime != self.rules_mtime:
            rules = await asyncio.to_thread(self.settings.rules)
            self.rules_mtime = mtime
            self.model = self.model.with_rules(rules) if self.model is not None else None
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


# -- helpers -------------------------------------------------------------------------------------------------------
def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


def _items(recs: list[Recommendation]) -> list[dict[str, Any]]:
    return [asdict(r) for r in recs]


def user_key(model: ServingModel, user_id: str, k: int, exclude_seen: bool, category: str | None) -> str:
    """Cache key of a user list: model and rules included, so a reload or new rules never serve old bodies."""
    return SEP.join(("u", model.model_id, str(model.version), model.rules_key, user_id, str(k), str(int(exclude_seen)),
                     category or ""))


def similar_key(model: ServingModel, item_id: str, k: int) -> str:
    return SEP.join(("s", model.model_id, str(model.version), model.rules_key, item_id, str(k)))


USERS_PREFIX, USERS_SUFFIX = "/v1/users/", "/recommendations"
ITEMS_PREFIX, ITEMS_SUFFIX = "/v1/items/", "/similar"


class CachedFastPath:
    """ASGI middleware: a GET whose response body is cached is answered before routing and parameter parsing.

    FastAPI's per-request parameter handling costs more than the rest of a cached answer. Only canonical requests
    are looked up (``k`` in digits, ``exclude_seen`` true or false, each parameter at most once); a hit means the
    endpoint validated exactly these parameters when it stored the body. Everything else, and every miss, goes
    through FastAPI unchanged.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], state: ServingState):
        self.app, self.state = app, state

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            key = self._key(scope["path"], scope["query_string"])
            body = await self.state.cache.get(key) if key is not None else None
            if body is not None:
                headers = [(b"content-length", str(len(body)).encode()), (b"content-type", JSON.encode())]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def _key(self, path: str, query_string: bytes) -> str | None:
        model = self.state.model
        if model is None:
            return None
        for prefix, suffix in ((USERS_PREFIX, USERS_SUFFIX), (ITEMS_PREFIX, ITEMS_SUFFIX)):
            if path.startswith(prefix) and path.endswith(suffix):
                ident = path[len(prefix): -len(suffix)]
                break
        else:
            return None
        params: dict[str, str] = {}
        for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
            if name in params:
                return None
            params[name] = value
        k = params.get("k", "20")
        if not ident or "/" in ident or not (k.isascii() and k.isdigit()):
            return None
        if prefix == ITEMS_PREFIX:
            return similar_key(model, ident, int(k))
        exclude = {"true": True, "false": False}.get(params.get("exclude_seen", "true"))
        category = params.get("category")
        if exclude is None or category == "":
            return None
        return user_key(model, ident, int(k), exclude, category)


class BodyLimit:
    """ASGI middleware: bodies over ``max_bytes`` get 413 before any parsing (declared or streamed size)."""

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._reject(send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return  # client went away
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self._reject(send)
                return
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _reject(self, send: Callable[..., Any]) -> None:
        body = _encode({"detail": f"request body larger than {self.max_bytes} bytes"})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def require_admin(request: Request,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
    """Admin actions need ``Authorization: Bearer <SHOPREC_ADMIN_TOKEN>``; without a configured token they are off."""
    token = request.app.state.serving.settings.admin_token
    if token is None:
        raise HTTPException(403, "admin actions are disabled: set SHOPREC_ADMIN_TOKEN")
    given = credentials.credentials.encode() if credentials is not None else b""
    if not secrets.compare_digest(given, token.get_secret_value().encode()):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


# -- the app -------------------------------------------------------------------------------------------------------
def create_app(settings: Settings | None = None, model: ServingModel | None = None) -> FastAPI:
    """The API; ``model`` serves a preloaded model (tests) instead of loading the configured one at start-up."""
    settings = settings or Settings()
    state = ServingState(settings, model)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        tasks = []
        if state.model is None:
            tasks.append(asyncio.create_task(_initial_load(state)))
        if settings.reload_poll_s > 0:
            tasks.append(asyncio.create_task(state.poll(settings.reload_poll_s)))
        yield
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await state.cache.close()

    app = FastAPI(title="shoprec recommendations", version="1", lifespan=lifespan,
                  description="Real-time recommendations with cold start, session-aware results and caching. "
                              "See docs/serving.md.")
    app.state.serving = state
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(CachedFastPath, state=state)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        # ASCII-escaped: the echoed input may hold text (lone surrogates) that plain UTF-8 cannot encode
        body = json.dumps({"detail": jsonable_encoder(exc.errors())}, ensure_ascii=True, separators=(",", ":"))
        return Response(body, status_code=422, media_type=JSON)

    @app.exception_handler(UnknownItem)
    @app.exception_handler(UnknownCategory)
    async def _not_found(request: Request, exc: ShoprecError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz() -> Response:
        """The process answers (says nothing about the model: see /readyz)."""
        return Response(b'{"status":"ok"}', media_type=JSON)

    @app.get("/readyz", response_model=Ready, responses={503: {"model": Ready, "description": "not ready"}},
             tags=["ops"])
    async def readyz() -> JSONResponse:
        """Ready once a model is loaded and warmed up."""
        model = state.model
        if model is None:
            return JSONResponse({"ready": False, "detail": state.load_error or "loading the model"}, 503)
        return JSONResponse({"ready": True, "version": model.version})

    @app.get("/v1/model", response_model=ModelInfo, responses=_errors(503), tags=["ops"])
    async def model_info() -> dict[str, Any]:
        """The served model: version, training time, data version, metrics, and the serving configuration."""
        model = state.current()
        rules = {"blocked_items": len(model.rules.blocked), "max_per_category": model.rules.max_per_category}
        return model.describe() | {"cache": state.cache.status(), "rules": rules}

    @app.get("/v1/users/{user_id}/recommendations", response_model=RecommendationsOut,
             responses=_errors(404, 422, 503), tags=["recommendations"])
    async def user_recommendations(user_id: PathId, k: K = 20, exclude_seen: bool = True,
                                   category: CategoryParam = None) -> Response:
        """Top-k for a user; unknown users get category then global popularity (``known_user`` false)."""
        model = state.current()
        key = user_key(model, user_id, k, exclude_seen, category)
        body = await state.cache.get(key)
        if body is None:
            args = (user_id, k, exclude_seen, category)
            recs = (await run_in_threadpool(model.recommend, *args) if model.needs_scoring(user_id, None, exclude_seen)
                    else model.recommend(*args))
            body = _encode({"user_id": user_id, "known_user": model.known_user(user_id),
                            "model_version": model.version, "items": _items(recs)})
            await state.cache.set(key, body)
        return Response(body, media_type=JSON)

    @app.post("/v1/recommendations", response_model=RecommendationsOut, responses=_errors(400, 404, 413, 422, 503),
              tags=["recommendations"])
    async def session_recommendations(request: SessionRequest) -> Response:
        """Session-aware top-k from the events just sent (known, new or anonymous users); not cached."""
        model = state.current()
        events = [e.model_dump() for e in request.recent_events]
        args = (request.user_id, request.k, request.exclude_seen, request.category, events)
        recs = (await run_in_threadpool(model.recommend, *args)
                if model.needs_scoring(request.user_id, events, request.exclude_seen) else model.recommend(*args))
        known = request.user_id is not None and model.known_user(request.user_id)
        return Response(_encode({"user_id": request.user_id, "known_user": known, "model_version": model.version,
                                 "items": _items(recs)}), media_type=JSON)

    @app.get("/v1/items/{item_id}/similar", response_model=SimilarOut, responses=_errors(404, 422, 503),
             tags=["recommendations"])
    async def similar_items(item_id: PathId, k: K = 20) -> Response:
        """Items related to one item (404 if the model does not know it), filled from its category's bestsellers."""
        model = state.current()
        key = similar_key(model, item_id, k)
        body = await state.cache.get(key)
        if body is None:
            body = _encode({"item_id": item_id, "model_version": model.version,
                            "items": _items(model.similar(item_id, k))})
            await state.cache.set(key, body)
        return Response(body, media_type=JSON)

    @app.post("/v1/events", response_model=EventsAck, dependencies=[Depends(require_admin)],
              responses=_errors(400, 401, 403, 413, 422), tags=["admin"])
    async def ingest_events(batch: EventsIn) -> EventsAck:
        """Append feedback events to the event log; acknowledged only once they are on disk (fsync)."""
        name = await run_in_threadpool(state.events.append, batch.events)
        return EventsAck(accepted=len(batch.events), batch=name)

    @app.post("/v1/admin/reload", response_model=ReloadOut, dependencies=[Depends(require_admin)],
              responses=_errors(401, 403, 503), tags=["admin"])
    async def admin_reload() -> ReloadOut:
        """Load the version the registry alias points at now, if it is not the served one; no request fails."""
        try:
            return await state.reload()
        except Exception as exc:
            raise HTTPException(503, f"reload failed, still serving the previous model: {state.load_error}") from exc

    return app


async def _initial_load(state: ServingState) -> None:
    """Load at start-up without blocking the server: /healthz answers at once, /readyz once loaded."""
    try:
        await state.reload(force=True)
    except Exception:  # logged by reload(); the poll (or an admin reload) tries again
        return


def run(host: str, port: int, settings: Settings) -> None:
    """Serve with uvicorn: one worker (the model is in process memory), no access log, loopback by default."""
    import uvicorn

    app = create_app(settings)
    uvicorn.run(app, host=host, port=port, workers=1, access_log=False, log_level="warning",
                timeout_graceful_shutdown=10)


def settings_for(root: FilePath | None) -> Settings:
    """Environment settings, with the project root from the command line when given."""
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(f"SHOPREC_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise ShoprecError(f"invalid setting: {problems}") from None
    return settings if root is None else settings.model_copy(update={"root": root})
