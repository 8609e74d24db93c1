"""The in-process response cache holds at most its entries and its bytes, dropping the least recently used
shoppers first, and its byte count follows replacements and invalidations."""

from __future__ import annotations

import asyncio

from pipelines.serving.cache import LRUCache


def _fill(cache: LRUCache, items: list[tuple[str, str, int]]) -> None:
    async def fill() -> None:
        for group, field, size in items:
            await cache.set((group, field), b"x" * size)

    asyncio.run(fill())


def _get(cache: LRUCache, group: str, field: str) -> bytes | None:
    return asyncio.run(cache.get((group, field)))


def test_the_byte_bound_drops_the_least_recently_used_shoppers():
    cache = LRUCache(size=100, max_bytes=1000)
    _fill(cache, [("a", "k1", 400), ("b", "k1", 400)])
    assert _get(cache, "a", "k1") is not None  # a is now the most recently used
    _fill(cache, [("c", "k1", 400)])
    assert _get(cache, "b", "k1") is None and _get(cache, "a", "k1") is not None
    assert cache.status()["bytes"] == 800 and cache.status()["entries"] == 2


def test_replacing_and_invalidating_keep_the_byte_count():
    cache = LRUCache(size=100, max_bytes=10_000)
    _fill(cache, [("a", "k1", 300), ("a", "k2", 200), ("a", "k1", 100), ("b", "k1", 50)])
    assert cache.status()["bytes"] == 350 and cache.status()["entries"] == 3
    asyncio.run(cache.invalidate(["a", "unknown"]))
    assert cache.status()["bytes"] == 50 and cache.status()["entries"] == 1


def test_a_body_over_the_bound_is_not_cached_and_evicts_nothing():
    cache = LRUCache(size=100, max_bytes=1000)
    _fill(cache, [("a", "k1", 500), ("b", "k1", 1001)])
    assert _get(cache, "b", "k1") is None and _get(cache, "a", "k1") is not None


def test_the_entry_bound_still_holds():
    cache = LRUCache(size=2, max_bytes=10_000)
    _fill(cache, [("a", "k1", 10), ("b", "k1", 10), ("c", "k1", 10)])
    assert cache.status()["entries"] == 2 and _get(cache, "a", "k1") is None
