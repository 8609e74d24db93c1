"""The list bodies the API serves, from the response cache or ranked by the shopper's arm's model.

One implementation for the FastAPI routes and for the fast path in front of them (``middleware.ListFastPath``),
which answers canonical, valid GETs without FastAPI's routing and parameter handling: both send the same bytes.
"""

from __future__ import annotations

from typing import Any

from fastapi.concurrency import run_in_threadpool

from pipelines.experiments.arms import Arm
from pipelines.serving.model import Recommendation, ServingModel
from pipelines.serving.schemas import encode
from pipelines.serving.state import ServingState, list_key, similar_key


async def ranked(model: ServingModel, scoring: bool, *args: Any) -> list[Recommendation]:
    """Lists that run a model go to the thread pool; store and fallback lists are answered in the event loop."""
    return await run_in_threadpool(model.recommend, *args) if scoring else model.recommend(*args)


def recommendations_body(model: ServingModel, arm: Arm, user_id: str | None, session_id: str | None, known: bool,
                         recs: list[Recommendation]) -> bytes:
    return encode({"user_id": user_id, "session_id": session_id, "known_user": known, "model_version": model.version,
                   "arm": arm, "items": recs})


async def shopper_list(state: ServingState, shopper: str, user_id: str | None, session_id: str | None, k: int,
                       exclude_seen: bool, category: str | None) -> tuple[bytes, Arm]:
    """A shopper's cached list, or one ranked by their arm's model from its history of them plus their live
    events; with the arm."""
    model, arm = state.model_for(shopper)
    key = list_key(model, shopper, k, exclude_seen, category, arm)
    body = await state.cache.get(key)
    if body is None:
        live = await state.live.recent(shopper)
        events = model.unseen(live.events)
        scoring = model.needs_scoring(user_id, events, exclude_seen)
        recs = await ranked(model, scoring, user_id, k, exclude_seen, category, events)
        known = user_id is not None and model.known_user(user_id)
        body = recommendations_body(model, arm, user_id, session_id, known, recs)
        await state.cache_unless_changed(key, body, shopper, live)
    return body, arm


async def similar_list(state: ServingState, item_id: str, k: int) -> bytes:
    """An item's cached similar-items body, or the model's (``UnknownItem`` if it does not know the item)."""
    model = state.current()
    key = similar_key(model, item_id, k)
    body = await state.cache.get(key)
    if body is None:
        body = encode({"item_id": item_id, "model_version": model.version, "items": model.similar(item_id, k)})
        await state.cache.set(key, body)
    return body
