"""The two ASGI middlewares in front of FastAPI: cached GET bodies answered before routing, and the body limit."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from pipelines.experiments.arms import Arm
from pipelines.serving.cache import CacheKey
from pipelines.serving.impressions import ImpressionBacklog
from pipelines.serving.live import session_shopper, user_shopper
from pipelines.serving.schemas import JSON, encode
from pipelines.serving.state import ServingState, list_key, similar_key

USERS_PREFIX, SESSIONS_PREFIX, USERS_SUFFIX = "/v1/users/", "/v1/sessions/", "/recommendations"
ITEMS_PREFIX, ITEMS_SUFFIX = "/v1/items/", "/similar"


async def _send_json(send: Callable[..., Any], status: int, body: bytes) -> None:
    """A complete JSON response in two ASGI messages."""
    headers = [(b"content-type", JSON.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _surface(path: str) -> str:
    """Which kind of list a route serves, as impressions record it."""
    if path.startswith(ITEMS_PREFIX):
        return "similar"
    return "session" if path.startswith(SESSIONS_PREFIX) else "user"


class CachedFastPath:
    """ASGI middleware: a GET whose response body is cached is answered before routing and parameter parsing.

    FastAPI's per-request parameter handling costs more than the rest of a cached answer. Only canonical requests
    are looked up (``k`` in digits, ``exclude_seen`` true or false, each parameter at most once); a hit means the
    endpoint validated exactly these parameters when it stored the body. A hit is served as a miss is: under a new
    request id, logged as impressions first. Everything else, and every miss, goes
    through FastAPI unchanged.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], state: ServingState):
        self.app, self.state = app, state

    async def __call__(self, scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            key, arm = self._key(scope["path"], scope["query_string"])
            body = await self.state.cache.get(key) if key is not None else None
            if body is not None:
                try:
                    body = await self.state.served(body, _surface(scope["path"]), arm)
                except ImpressionBacklog as exc:
                    await _send_json(send, 503, encode({"detail": str(exc)}))
                    return
                await _send_json(send, 200, body)
                return
        await self.app(scope, receive, send)

    def _key(self, path: str, query_string: bytes) -> tuple[CacheKey | None, Arm]:
        """The cache key of a canonical list request and the arm its shopper is in (no key: not canonical)."""
        if self.state.model is None:
            return None, "champion"
        routes = ((USERS_PREFIX, USERS_SUFFIX), (SESSIONS_PREFIX, USERS_SUFFIX), (ITEMS_PREFIX, ITEMS_SUFFIX))
        for prefix, suffix in routes:
            if path.startswith(prefix) and path.endswith(suffix):
                ident = path[len(prefix): -len(suffix)]
                break
        else:
            return None, "champion"
        params: dict[str, str] = {}
        for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
            if name in params:
                return None, "champion"
            params[name] = value
        k = params.get("k", "20")
        if not ident or "/" in ident or not (k.isascii() and k.isdigit()):
            return None, "champion"
        if prefix == ITEMS_PREFIX:
            return similar_key(self.state.current(), ident, int(k)), "champion"
        exclude = {"true": True, "false": False}.get(params.get("exclude_seen", "true"))
        category = params.get("category")
        if exclude is None or category == "":
            return None, "champion"
        shopper = user_shopper(ident) if prefix == USERS_PREFIX else session_shopper(ident)
        model, arm = self.state.model_for(shopper)
        return list_key(model, shopper, int(k), exclude, category, arm), arm


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
