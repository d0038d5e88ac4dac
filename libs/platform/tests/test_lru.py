from __future__ import annotations

import pytest
from tailor_platform.lru import LruCache


def test_keeps_the_most_recently_used() -> None:
    cache: LruCache[int, str] = LruCache(2)
    assert cache.put(1, "a") is None
    assert cache.put(2, "b") is None
    assert cache.get(1) == "a"  # 1 is now the most recent: 2 goes first
    assert cache.put(3, "c") == 2
    assert (cache.get(2), cache.get(1), cache.get(3), len(cache)) == (None, "a", "c", 2)
    assert (cache.hits, cache.misses) == (3, 1)
    cache.discard([1, 99])
    assert cache.get(1) is None and len(cache) == 1
    cache.clear()
    assert len(cache) == 0


def test_capacity_zero_caches_nothing() -> None:
    cache: LruCache[int, str] = LruCache(0)
    cache.put(1, "a")
    assert cache.get(1) is None and len(cache) == 0
    with pytest.raises(ValueError):
        LruCache(-1)
