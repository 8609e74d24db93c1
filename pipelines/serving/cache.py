"""Response cache: an in-process LRU by default, Redis when ``SHOPREC_REDIS_URL`` is set.

Bodies are stored by *group* (one shopper, one item) and *field* (model id, rules' fingerprint and the request's
parameters), so a reload or new rules never serve old lists, and a shopper's new event drops every cached list of
that shopper at once (``invalidate``). In Redis a group is one hash. Redis is an optimisation only: when it fails
the API answers from the model (see ``RedisLink``).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Protocol

from pipelines.serving.redis_link import RedisLink

log = logging.getLogger(__name__)

CacheKey = tuple[str, str]  # (group, field)


class Cache(Protocol):
    backend: str

    async def get(self, key: CacheKey) -> bytes | None: ...

    async def set(self, key: CacheKey, value: bytes) -> None: ...

    async def invalidate(self, groups: Iterable[str]) -> None: ...

    def status(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


class LRUCache:
    """Bounded least-recently-used map of groups of response bodies: at most ``size`` bodies (0 disables it) and
    ``max_bytes`` of them in all. The byte bound keeps the process from growing with every new list: a list of
    200 items is ~20 KB, so 100,000 of them held 2 GB, and a process still growing into new memory served cache
    misses at half speed (the kernel's page faults)."""

    backend = "memory"

    def __init__(self, size: int, max_bytes: int):
        self.size, self.max_bytes = size, max_bytes
        self._groups: OrderedDict[str, dict[str, bytes]] = OrderedDict()
        self._entries = self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    async def get(self, key: CacheKey) -> bytes | None:
        group, field = key
        with self._lock:
            bodies = self._groups.get(group)
            value = bodies.get(field) if bodies is not None else None
            if value is None:
                self.misses += 1
            else:
                self.hits += 1
                self._groups.move_to_end(group)
            return value

    async def set(self, key: CacheKey, value: bytes) -> None:
        if self.size <= 0 or len(value) > self.max_bytes:
            return
        group, field = key
        with self._lock:
            bodies = self._groups.setdefault(group, {})
            old = bodies.get(field)
            self._entries += old is None
            self._bytes += len(value) - (0 if old is None else len(old))
            bodies[field] = value
            self._groups.move_to_end(group)
            while self._entries > self.size or self._bytes > self.max_bytes:
                self._drop(self._groups.popitem(last=False)[1])

    async def invalidate(self, groups: Iterable[str]) -> None:
        with self._lock:
            for group in groups:
                self._drop(self._groups.pop(group, {}))

    def _drop(self, bodies: dict[str, bytes]) -> None:
        self._entries -= len(bodies)
        self._bytes -= sum(len(body) for body in bodies.values())

    def status(self) -> dict[str, Any]:
        return {"backend": self.backend, "available": True, "entries": self._entries, "bytes": self._bytes,
                "hits": self.hits, "misses": self.misses}

    async def close(self) -> None:
        with self._lock:
            self._groups.clear()
            self._entries = self._bytes = 0


class RedisCache:
    """Response bodies in Redis hashes (one per group) that expire ``ttl_s`` after their last write."""

    backend = "redis"

    def __init__(self, url: str, ttl_s: int):
        self.ttl_s = ttl_s
        self.redis = RedisLink(url, "cache", log)
        self.hits = self.misses = 0

    @staticmethod
    def _name(group: str) -> str:
        return f"shoprec:cache:{group}"

    async def get(self, key: CacheKey) -> bytes | None:
        group, field = key
        value: bytes | None = await self.redis.call(lambda r: r.hget(self._name(group), field), None)
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    async def set(self, key: CacheKey, value: bytes) -> None:
        group, field = key

        async def write(r: Any) -> None:
            async with r.pipeline(transaction=True) as pipe:
                await pipe.hset(self._name(group), field, value).expire(self._name(group), self.ttl_s).execute()

        await self.redis.call(write, None)

    async def invalidate(self, groups: Iterable[str]) -> None:
        names = [self._name(g) for g in groups]
        if names:
            await self.redis.call(lambda r: r.delete(*names), None)

    def status(self) -> dict[str, Any]:
        return {"backend": self.backend, "available": self.redis.available, "hits": self.hits,
                "misses": self.misses}

    async def close(self) -> None:
        await self.redis.close()


def make_cache(redis_url: str | None, size: int, ttl_s: int, max_mb: int) -> Cache:
    return RedisCache(redis_url, ttl_s) if redis_url else LRUCache(size, max_mb * 2**20)
