"""Live shopper state: the events a shopper posted since the served model was trained, so their next list
reflects what they just did.

Accepted events (``POST /v1/events``) are kept per *shopper*: a user (``u:<user_id>``) and, when the event names
one, a session (``a:<session_id>``, for anonymous shoppers). Each shopper keeps at most ``max_events`` (the newest)
and is forgotten ``ttl_s`` after their last event. Every write bumps the shopper's *version*, which tells a list
computed from older state not to be cached. In process by default (bounded to ``max_shoppers``, least recently
active dropped first); with ``SHOPREC_REDIS_URL`` in Redis, shared by every API process and kept across restarts.
When Redis is down, lists are answered without live events (the events themselves are already in the log).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipelines.serving.events import Event
from pipelines.serving.redis_link import RedisLink

log = logging.getLogger(__name__)


def user_shopper(user_id: str) -> str:
    return f"u:{user_id}"


def session_shopper(session_id: str) -> str:
    return f"a:{session_id}"


def shopper_of(user_id: str | None, session_id: str | None) -> str | None:
    """The shopper a request is for: the user when it names one, else the anonymous session (None: neither)."""
    if user_id is not None:
        return user_shopper(user_id)
    return session_shopper(session_id) if session_id is not None else None


def event_shoppers(event: Event) -> list[str]:
    """The shoppers an event belongs to: its user, and its session when it names one."""
    keys = [user_shopper(event.user_id)] if event.user_id is not None else []
    return keys + ([session_shopper(event.session_id)] if event.session_id is not None else [])


def _entry(event: Event) -> dict[str, str]:
    return {"item_id": event.item_id, "event_type": event.event_type, "ts": event.ts.isoformat()}


def by_shopper(events: Iterable[Event]) -> dict[str, list[dict[str, str]]]:
    """The events' entries (item, type, ISO time) grouped by shopper, in the order given."""
    grouped: dict[str, list[dict[str, str]]] = {}
    for event in events:
        for shopper in event_shoppers(event):
            grouped.setdefault(shopper, []).append(_entry(event))
    return grouped


@dataclass(frozen=True)
class LiveEvents:
    """A shopper's live events, oldest posted first, and the version they were read at."""

    events: list[dict[str, str]] = field(default_factory=list)
    version: int = 0


class LiveHistory(Protocol):
    backend: str

    async def add(self, events: Iterable[Event]) -> bool: ...

    async def recent(self, shopper: str) -> LiveEvents: ...

    async def version(self, shopper: str) -> int: ...

    def status(self) -> dict[str, Any]: ...

    async def close(self) -> None: ...


@dataclass
class _Shopper:
    events: deque[dict[str, str]]
    version: int
    expires_at: float


class MemoryLiveHistory:
    """Live state in this process: lost on restart, not shared between API processes."""

    backend = "memory"

    def __init__(self, max_events: int, ttl_s: float, max_shoppers: int,
                 clock: Callable[[], float] = time.monotonic):
        self.max_events, self.ttl_s, self.max_shoppers, self.clock = max_events, ttl_s, max_shoppers, clock
        self._shoppers: OrderedDict[str, _Shopper] = OrderedDict()
        self._lock = threading.Lock()

    async def add(self, events: Iterable[Event]) -> bool:
        now = self.clock()
        with self._lock:
            for shopper, entries in by_shopper(events).items():
                state = self._live(shopper, now)
                if state is None:
                    state = self._shoppers[shopper] = _Shopper(deque(maxlen=self.max_events), 0, 0.0)
                state.events.extend(entries)
                state.version += 1
                state.expires_at = now + self.ttl_s
                self._shoppers.move_to_end(shopper)
            while len(self._shoppers) > self.max_shoppers:
                self._shoppers.popitem(last=False)
        return True

    def _live(self, shopper: str, now: float) -> _Shopper | None:
        state = self._shoppers.get(shopper)
        if state is not None and state.expires_at <= now:
            del self._shoppers[shopper]
            return None
        return state

    async def recent(self, shopper: str) -> LiveEvents:
        with self._lock:
            state = self._live(shopper, self.clock())
            return LiveEvents(list(state.events), state.version) if state is not None else LiveEvents()

    async def version(self, shopper: str) -> int:
        with self._lock:
            state = self._live(shopper, self.clock())
            return state.version if state is not None else 0

    def status(self) -> dict[str, Any]:
        return {"backend": self.backend, "available": True, "shoppers": len(self._shoppers)}

    async def close(self) -> None:
        with self._lock:
            self._shoppers.clear()


class RedisLiveHistory:
    """Live state in Redis: per shopper a capped list of JSON entries and a version counter, both expiring."""

    backend = "redis"

    def __init__(self, url: str, max_events: int, ttl_s: int):
        self.max_events, self.ttl_s = max_events, ttl_s
        self.redis = RedisLink(url, "live state", log)

    @staticmethod
    def _names(shopper: str) -> tuple[str, str]:
        return f"shoprec:live:{shopper}", f"shoprec:live-version:{shopper}"

    async def add(self, events: Iterable[Event]) -> bool:
        grouped = by_shopper(events)

        async def write(r: Any) -> bool:
            async with r.pipeline(transaction=True) as pipe:
                for shopper, entries in grouped.items():
                    events_key, version_key = self._names(shopper)
                    pipe.rpush(events_key, *(json.dumps(e, separators=(",", ":")) for e in entries))
                    pipe.ltrim(events_key, -self.max_events, -1).expire(events_key, self.ttl_s)
                    pipe.incr(version_key).expire(version_key, self.ttl_s)
                await pipe.execute()
            return True

        return await self.redis.call(write, False)

    async def recent(self, shopper: str) -> LiveEvents:
        events_key, version_key = self._names(shopper)

        async def read(r: Any) -> LiveEvents:
            async with r.pipeline(transaction=True) as pipe:
                raw, version = await pipe.lrange(events_key, 0, -1).get(version_key).execute()
            return LiveEvents([json.loads(e) for e in raw], int(version or 0))

        return await self.redis.call(read, LiveEvents())

    async def version(self, shopper: str) -> int:
        value = await self.redis.call(lambda r: r.get(self._names(shopper)[1]), None)
        return int(value or 0)

    def status(self) -> dict[str, Any]:
        return {"backend": self.backend, "available": self.redis.available}

    async def close(self) -> None:
        await self.redis.close()


def make_live(redis_url: str | None, max_events: int, ttl_s: int, max_shoppers: int) -> LiveHistory:
    if redis_url:
        return RedisLiveHistory(redis_url, max_events, ttl_s)
    return MemoryLiveHistory(max_events, ttl_s, max_shoppers)
