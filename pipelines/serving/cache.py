"""Response cache: an in-process LRU by default, Redis when ``SHOPREC_REDIS_URL`` is set.

Keys carry the model id and the rules' fingerprint, so a reload or new rules never serve old lists. Redis is an
optimisation only: when it fails the API answers from the model, logs the outage once, and tries Redis again
after ``retry_after_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Cache(Protocol):
    backend: str

    async def get(self, key: str) -> bytes | None: ...

    async def set(self, key: str, value: bytes) -> None: ...

    def status(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class LRUCache:
    """Bounded least-recently-used map of response bodies; ``size=0`` disables caching."""

    backend = "memory"

    def __init__(self, size: int):
        self.size = size
        self._data: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    async def get(self, key: str) -> bytes | None:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
                self._data.move_to_end(key)
            return value

    async def set(self, key: str, value: bytes) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def status(self) -> dict[str, Any]:
        return {"backend": self.backend, "available": True, "entries": len(self._data), "hits": self.hits,
                "misses": self.misses}

    async def close(self) -> None:
        self._data.clear()


class RedisCache:
    """Response bodies in Redis with a TTL; every Redis failure degrades to a cache miss."""

    backend = "redis"

    def __init__(self, url: str, ttl_s: int, timeout_s: float = 0.1, retry_after_s: float = 5.0):
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url, self.ttl_s, self.retry_after_s = url, ttl_s, retry_after_s
        self._client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                            retry=Retry(NoBackoff(), 0))
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError, asyncio.TimeoutError)
        self._down_since: float | None = None
        self._retry_at = 0.0
        self.hits = self.misses = 0

    async def get(self, key: str) -> bytes | None:
        if self._skip():
            return None
        try:
            value = await self._client.get(key)
        except self._errors as exc:
            self._failed(exc)
            return None
        self._succeeded()
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    async def set(self, key: str, value: bytes) -> None:
        if self._skip():
            return
        try:
            await self._client.set(key, value, ex=self.ttl_s)
        except self._errors as exc:
            self._failed(exc)
            return
        self._succeeded()

    def _skip(self) -> bool:
        """While Redis is down, only try it again every ``retry_after_s`` (no latency spent on a dead server)."""
        return self._down_since is not None and time.monotonic() < self._retry_at

    def _failed(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + self.retry_after_s
        if self._down_since is None:
            self._down_since = time.time()
            log.warning("redis cache unavailable, answering from the model: %s: %s", type(exc).__name__, exc)

    def _succeeded(self) -> None:
        if self._down_since is not None:
            log.warning("redis cache available again after %.0f s", time.time() - self._down_since)
            self._down_since = None

    def status(self) -> dict[str, Any]:
        return {"backend": self.backend, "available": self._down_since is None, "hits": self.hits,
                "misses": self.misses}

    async def close(self) -> None:
        with contextlib.suppress(*self._errors):
            await self._client.aclose()


def make_cache(redis_url: str | None, size: int, ttl_s: int) -> Cache:
    return RedisCache(redis_url, ttl_s) if redis_url else LRUCache(size)
