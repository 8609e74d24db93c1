"""The API's wire format: request and response models and parameter types (they make the OpenAPI spec precise),
and the compact JSON encoding the hot path writes bodies with."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import orjson
from fastapi import Path, Query
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from pipelines.serving.catalogue import CatalogueItem
from pipelines.serving.events import ID_PATTERN, MAX_ID_CHARS, Event, EventType, Id, Timestamp

MAX_K = 200
MAX_SESSION_EVENTS = 200
MAX_BATCH_EVENTS = 1000
MAX_BATCH_ITEMS = 1000
JSON = "application/json"

# URL decoding replaces invalid bytes, so path and query text is always valid Unicode: the pattern suffices
PathId = Annotated[str, Path(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN,
                             description=f"1-{MAX_ID_CHARS} characters, no control characters")]
K = Annotated[int, Query(ge=1, le=MAX_K, description=f"list length, 1-{MAX_K}")]
CategoryParam = Annotated[str | None, Query(min_length=1, max_length=MAX_ID_CHARS, pattern=ID_PATTERN,
                                            description="only items of this category (404 if unknown)")]


def encode(payload: dict[str, Any]) -> bytes:
    """Compact JSON bytes, built once and then cached or sent as they are. orjson writes dataclasses (the
    recommendations) natively: a 100-item list costs ~0.2 ms with ``json`` after ``asdict``, ~10 us here."""
    return orjson.dumps(payload)


class RecommendationOut(BaseModel):
    item_id: str
    score: float = Field(description="the generator's score; comparable only within one source")
    rank: int = Field(ge=1)
    source: str = Field(description="candidate generator that proposed the item, or the fallback "
                                    "(category_popularity, popularity)")
    reason: str = Field(description="short human explanation")


REQUEST_ID = Field(description="this response's id (a new one per response, cached or not), logged with the "
                              "list's items as impressions; feedback events may carry it to attribute themselves")


class RecommendationsOut(BaseModel):
    request_id: str = REQUEST_ID
    user_id: str | None
    session_id: str | None = Field(None, description="the anonymous session the list is for")
    known_user: bool = Field(description="false: a new or anonymous user, answered by the fallback chain")
    model_version: str | None
    arm: Literal["champion", "challenger"] = Field(description="the online experiment's arm this shopper is in "
                                                             "(champion when none runs)")
    items: list[RecommendationOut]


class SimilarOut(BaseModel):
    request_id: str = REQUEST_ID
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
    session_id: Id | None = Field(None, description="an anonymous session whose posted events to use (with no "
                                                    "user_id)")
    recent_events: list[SessionEvent] = Field(default_factory=list, max_length=MAX_SESSION_EVENTS,
                                              description="events not posted to /v1/events, after the posted ones")
    k: int = Field(20, ge=1, le=MAX_K)
    exclude_seen: StrictBool = True
    category: Id | None = None


class EventsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    events: list[Event] = Field(min_length=1, max_length=MAX_BATCH_EVENTS)


class EventsAck(BaseModel):
    accepted: int = Field(description="events durably appended to the log")
    batch: str = Field(description="file of the batch in the event log")
    live: bool = Field(description="the shoppers' next lists reflect the events (false: live state unavailable)")


class CatalogueIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    items: list[CatalogueItem] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)


class CatalogueAck(BaseModel):
    accepted: int = Field(description="items durably logged and served from now on")
    added: int = Field(description="of them, ids the served catalogue did not have")
    updated: int = Field(description="of them, ids it had (their category, content and stock replaced)")
    batch: str = Field(description="file of the batch in the catalogue log")


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    ready: bool
    version: str | None = None
    detail: str | None = None


class Experiment(BaseModel):
    experiment: str = Field(description="experiment id: salts the hash that puts shoppers in arms")
    champion_version: str | None
    challenger_version: str | None
    challenger_share: float = Field(description="share of shoppers served by the challenger")


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
    new_items: int = Field(0, description="products added through /v1/catalogue/items since training")
    cache: dict[str, Any]
    live: dict[str, Any] = Field(description="live shopper state: backend, availability")
    rules: dict[str, Any]
    experiment: Experiment | None = Field(None, description="the online experiment being served (none: every "
                                                            "shopper gets this model)")


class ReloadOut(BaseModel):
    version: str | None
    previous_version: str | None
    reloaded: bool = Field(description="false: the registry still points at the served model")


class ErrorOut(BaseModel):
    detail: Any = Field(description="what was wrong: a message, or a list of validation errors")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route that can fail with ``codes``, each documented with its usual cause."""
    texts = {400: "the body could not be read (e.g. not UTF-8)", 401: "missing or wrong bearer token",
             403: "admin actions disabled (no token configured)", 404: "unknown item, category or path",
             413: "request body too large", 422: "invalid input", 503: "no model loaded yet, or the reload failed"}
    return {code: {"model": ErrorOut, "description": texts[code]} for code in codes}
