"""A Redis connection for each of the API's optional Redis uses (response cache, live shopper state), with the
outage policy they share: short timeouts, no retries, and while Redis is down it is tried again only every
``retry_after_s``, the outage logged once when it starts and once when it ends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


class RedisLink:
    """An asyncio Redis client whose failures become the caller's default answer instead of errors."""

    def __init__(self, url: str, purpose: str, logger: logging.Logger, timeout_s: float = 0.1,
                 retry_after_s: float = 5.0):
        import redis.asyncio as redis
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        self.url, self.purpose, self.log, self.retry_after_s = url, purpose, logger, retry_after_s
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                           retry=Retry(NoBackoff(), 0))
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError, asyncio.TimeoutError)
        self._down_since: float | None = None
        self._retry_at = 0.0

    @property
    def available(self) -> bool:
        return self._down_since is None

    async def call(self, request: Callable[[Any], Awaitable[T]], default: T) -> T:
        """``await request(client)``, or ``default`` when Redis fails (or is known to be down)."""
        if self._down_since is not None and time.monotonic() < self._retry_at:
            return default
        try:
            result = await request(self.client)
        except self._errors as exc:
            self._retry_at = time.monotonic() + self.retry_after_s
            if self._down_since is None:
                self._down_since = time.time()
                self.log.warning("redis %s unavailable: %s: %s", self.purpose, type(exc).__name__, exc)
            return default
        if self._down_since is not None:
            self.log.warning("redis %s available again after %.0f s", self.purpose, time.time() - self._down_since)
            self._down_since = None
        return result

    async def close(self) -> None:
        with contextlib.suppress(*self._errors):
            await self.client.aclose()
