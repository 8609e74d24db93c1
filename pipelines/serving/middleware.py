"""The two ASGI middlewares in front of FastAPI: list GETs answered before routing, and the body limit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from fastapi import HTTPException
from pydantic import TypeAdapter, ValidationError

from pipelines.core.errors import ShoprecError
from pipelines.serving.lists import shopper_list, similar_list
from pipelines.serving.live import session_shopper, user_shopper
from pipelines.serving.schemas import JSON, CategoryParam, K, PathId, encode
from pipelines.serving.state import ServingState

USERS_PREFIX, SESSIONS_PREFIX, USERS_SUFFIX = "/v1/users/", "/v1/sessions/", "/recommendations"
ITEMS_PREFIX, ITEMS_SUFFIX = "/v1/items/", "/similar"


async def _send_json(send: Callable[..., Any], status: int, body: bytes) -> None:
    """A complete JSON response in two ASGI messages."""
    headers = [(b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ListFastPath:
    """ASGI middleware: a canonical, valid GET of a list is answered before FastAPI's routing and parameter handling.

    That handling costs more than the rest of a cached answer and about as much as ranking a precomputed list. A
    request qualifies when each parameter appears at most once, ``k`` is digits, ``exclude_seen`` is true or false,
    and the path id, ``k`` and category pass the routes' own parameter types (``schemas.PathId``, ``K``,
    ``CategoryParam``). It is then served by the routes' own functions (``lists``): the same body, under a new
    request id, logged as impressions first. Anything else, and any request whose list raises (unknown category or
    item, impression backlog), goes through FastAPI, which answers it as the API documents.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], state: ServingState):
        self.app, self.state = app, state

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and self.state.model is not None:
            request = _list_request(scope["path"], scope["query_string"])
            if request is not None:
                try:
                    body = await self._served(*request)
                except (ShoprecError, HTTPException):
                    pass  # FastAPI's exception handlers answer it
                else:
                    await _send_json(send, 200, body)
                    return
        await self.app(scope, receive, send)

    async def _served(self, prefix: str, ident: str, k: int, exclude_seen: bool, category: str | None) -> bytes:
        if prefix == ITEMS_PREFIX:
            return await self.state.served(await similar_list(self.state, ident, k), "similar")
        if prefix == USERS_PREFIX:
            body, arm = await shopper_list(self.state, user_shopper(ident), ident, None, k, exclude_seen, category)
            return await self.state.served(body, "user", arm)
        body, arm = await shopper_list(self.state, session_shopper(ident), None, ident, k, exclude_seen, category)
        return await self.state.served(body, "session", arm)


_VALID_ID, _VALID_K, _VALID_CATEGORY = TypeAdapter(PathId), TypeAdapter(K), TypeAdapter(CategoryParam)
_ROUTES = ((USERS_PREFIX, USERS_SUFFIX), (SESSIONS_PREFIX, USERS_SUFFIX), (ITEMS_PREFIX, ITEMS_SUFFIX))


def _list_request(path: str, query_string: bytes) -> tuple[str, str, int, bool, str | None] | None:
    """(route prefix, path id, k, exclude_seen, category) of a canonical, valid list request; None otherwise."""
    for prefix, suffix in _ROUTES:
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
    k, exclude = params.get("k", "20"), {"true": True, "false": False}.get(params.get("exclude_seen", "true"))
    category = params.get("category")
    if "/" in ident or not (k.isascii() and k.isdigit()) or exclude is None:
        return None
    if prefix == ITEMS_PREFIX and (len(params.keys() - {"k"}) or "exclude_seen" in params):
        return None  # the similar-items route takes k only
    try:
        _VALID_ID.validate_python(ident)
        _VALID_K.validate_python(int(k))
        _VALID_CATEGORY.validate_python(category)
    except ValidationError:
        return None
    return prefix, ident, int(k), exclude, category


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
        await _send_json(send, 413, encode({"detail": f"request body larger than {self.max_bytes} bytes"}))
