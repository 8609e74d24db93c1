"""The recommendation API: ``create_app(settings)`` builds it, ``shoprec serve`` runs it under uvicorn.

Hot path: a known user's list comes from the response cache or the precomputed store in well under a millisecond
inside the event loop; anything that runs a model (sessions, stale store) goes to the thread pool. The served
model is one reference, replaced only by a fully loaded and warmed-up model, and every request reads it once,
so a reload never fails a request. See docs/serving.md.

Modules: ``schemas`` (wire models), ``state`` (the served model, reloads, cache keys), ``middleware`` (cached fast
path, body limit); here, the routes, added by concern around the app's ``ServingState``. They go on the app
itself rather than on an ``APIRouter`` each: an included router adds 10-20 us to every routed request (FastAPI 0.150).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError

from pipelines.core.errors import ShoprecError
from pipelines.serving.impressions import ImpressionBacklog
from pipelines.serving.lists import ranked, recommendations_body, shopper_list, similar_list
from pipelines.serving.live import session_shopper, shopper_of, user_shopper
from pipelines.serving.middleware import BodyLimit, ListFastPath
from pipelines.serving.model import ServingModel, UnknownCategory, UnknownItem
from pipelines.serving.schemas import (
    JSON,
    CatalogueAck,
    CatalogueIn,
    CategoryParam,
    EventsAck,
    EventsIn,
    Health,
    K,
    ModelInfo,
    PathId,
    Ready,
    RecommendationsOut,
    ReloadOut,
    SessionRequest,
    SimilarOut,
    error_responses,
)
from pipelines.serving.settings import Settings
from pipelines.serving.state import ServingState

BEARER = HTTPBearer(auto_error=False, description="SHOPREC_ADMIN_TOKEN")


def create_app(settings: Settings | None = None, model: ServingModel | None = None) -> FastAPI:
    """The API; ``model`` serves a preloaded model (tests) instead of loading the configured one at start-up."""
    settings = settings or Settings()
    state = ServingState(settings, model)
    app = FastAPI(title="shoprec recommendations", version="1", lifespan=state.lifespan,
                  description="Real-time recommendations with cold start, session-aware results and caching. "
                              "See docs/serving.md.")
    app.state.serving = state
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(ListFastPath, state=state)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(UnknownCategory, _not_found)
    app.add_exception_handler(UnknownItem, _not_found)
    app.add_exception_handler(ImpressionBacklog, _unavailable)
    for add_routes in (_ops, _recommendations, _admin):
        add_routes(app, state)
    return app


async def _invalid(request: Request, exc: RequestValidationError) -> Response:
    # ASCII-escaped: the echoed input may hold text (lone surrogates) that plain UTF-8 cannot encode
    body = json.dumps({"detail": jsonable_encoder(exc.errors())}, ensure_ascii=True, separators=(",", ":"))
    return Response(body, status_code=422, media_type=JSON)


async def _not_found(request: Request, exc: ShoprecError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _unavailable(request: Request, exc: ShoprecError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=503)


def _ops(app: FastAPI, state: ServingState) -> None:
    """Liveness, readiness and what is being served."""

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

    @app.get("/v1/model", response_model=ModelInfo, responses=error_responses(503), tags=["ops"])
    async def model_info() -> dict[str, Any]:
        """The served model: version, training time, data version, metrics, and the serving configuration."""
        model = state.current()
        rules = {"blocked_items": len(model.rules.blocked), "max_per_category": model.rules.max_per_category}
        return model.describe() | {"cache": state.cache.status(), "live": state.live.status(), "rules": rules,
                                   "experiment": state.experiment_status()}


def _recommendations(app: FastAPI, state: ServingState) -> None:
    """User, session and similar-item lists; GET answers are cached (see ``ListFastPath``) until the shopper's
    next event."""

    @app.get("/v1/users/{user_id}/recommendations", response_model=RecommendationsOut,
             responses=error_responses(404, 422, 503), tags=["recommendations"])
    async def user_recommendations(user_id: PathId, k: K = 20, exclude_seen: bool = True,
                                   category: CategoryParam = None) -> Response:
        """Top-k for a user from their history and the events posted since training; unknown users without
        posted events get category then global popularity (``known_user`` false)."""
        body, arm = await shopper_list(state, user_shopper(user_id), user_id, None, k, exclude_seen, category)
        return Response(await state.served(body, "user", arm), media_type=JSON)

    @app.get("/v1/sessions/{session_id}/recommendations", response_model=RecommendationsOut,
             responses=error_responses(404, 422, 503), tags=["recommendations"])
    async def anonymous_recommendations(session_id: PathId, k: K = 20, exclude_seen: bool = True,
                                        category: CategoryParam = None) -> Response:
        """Top-k for an anonymous shopper from the events posted with this ``session_id``."""
        body, arm = await shopper_list(state, session_shopper(session_id), None, session_id, k, exclude_seen,
                                        category)
        return Response(await state.served(body, "session", arm), media_type=JSON)

    @app.post("/v1/recommendations", response_model=RecommendationsOut,
              responses=error_responses(400, 404, 413, 422, 503), tags=["recommendations"])
    async def session_recommendations(request: SessionRequest) -> Response:
        """Session-aware top-k from the shopper's posted events (the user's, else the session's) followed by the
        events sent here (known, new or anonymous users); not cached."""
        shopper = shopper_of(request.user_id, request.session_id)
        model, arm = state.model_for(shopper)
        posted = model.unseen((await state.live.recent(shopper)).events) if shopper is not None else []
        events = [*posted, *(e.model_dump() for e in request.recent_events)]
        scoring = model.needs_scoring(request.user_id, events, request.exclude_seen)
        recs = await ranked(model, scoring, request.user_id, request.k, request.exclude_seen, request.category,
                                events)
        known = request.user_id is not None and model.known_user(request.user_id)
        body = recommendations_body(model, arm, request.user_id, request.session_id, known, recs)
        surface = "session" if request.user_id is None else "user"
        return Response(await state.served(body, surface, arm), media_type=JSON)

    @app.get("/v1/items/{item_id}/similar", response_model=SimilarOut, responses=error_responses(404, 422, 503),
             tags=["recommendations"])
    async def similar_items(item_id: PathId, k: K = 20) -> Response:
        """Items related to one item (404 if the model does not know it), filled from its category's bestsellers."""
        return Response(await state.served(await similar_list(state, item_id, k), "similar"), media_type=JSON)


def require_admin(request: Request,
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
    """Admin actions need ``Authorization: Bearer <SHOPREC_ADMIN_TOKEN>``; without a configured token they are off."""
    token = request.app.state.serving.settings.admin_token
    if token is None:
        raise HTTPException(403, "admin actions are disabled: set SHOPREC_ADMIN_TOKEN")
    given = credentials.credentials.encode() if credentials is not None else b""
    if not secrets.compare_digest(given, token.get_secret_value().encode()):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


def _admin(app: FastAPI, state: ServingState) -> None:
    """Token-protected writes: feedback events, catalogue items and model reloads."""
    admin = [Depends(require_admin)]

    @app.post("/v1/events", response_model=EventsAck, dependencies=admin,
              responses=error_responses(400, 401, 403, 413, 422), tags=["admin"])
    async def ingest_events(batch: EventsIn) -> EventsAck:
        """Append feedback events to the event log; acknowledged only once they are on disk (fsync). Then each
        shopper's next list ranks with them (live state) and their cached lists are dropped."""
        name = await run_in_threadpool(state.events.append, batch.events)
        live = await state.record(batch.events)
        return EventsAck(accepted=len(batch.events), batch=name, live=live)

    @app.post("/v1/catalogue/items", response_model=CatalogueAck, dependencies=admin,
              responses=error_responses(400, 401, 403, 413, 422, 503), tags=["admin"])
    async def add_catalogue_items(batch: CatalogueIn) -> CatalogueAck:
        """Add or update products without retraining; acknowledged once logged on disk (fsync). New products are
        answered by ``similar``, proposed by content similarity in each list's exploration slots
        (``SHOPREC_EXPLORE_SHARE``), and shown in category fills; ``in_stock: false`` keeps an item out of lists."""
        return await state.add_items(batch.items)

    @app.post("/v1/admin/reload", response_model=ReloadOut, dependencies=admin,
              responses=error_responses(401, 403, 503), tags=["admin"])
    async def admin_reload() -> ReloadOut:
        """Load the version the registry alias points at now, if it is not the served one; no request fails."""
        try:
            return await state.reload()
        except Exception as exc:
            raise HTTPException(503, f"reload failed, still serving the previous model: {state.load_error}") from exc


def run(host: str, port: int, settings: Settings) -> None:
    """Serve with uvicorn: one worker (the model is in process memory), no access log, loopback by default."""
    import uvicorn

    app = create_app(settings)
    uvicorn.run(app, host=host, port=port, workers=1, access_log=False, log_level="warning",
                timeout_graceful_shutdown=10)


def settings_for(root: Path | None) -> Settings:
    """Environment settings, with the project root from the command line when given."""
    try:
        settings = Settings()
    except ValidationError as exc:
        problems = "; ".join(f"SHOPREC_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors())
        raise ShoprecError(f"invalid setting: {problems}") from None
    return settings if root is None else settings.model_copy(update={"root": root})
