"""The hot-identity LRU cache: bounded, counted, and dropped per partition on a rebalance."""

from __future__ import annotations

import pytest

from tables.hot_cache import HotCache


def test_lru_eviction_and_counters() -> None:
    cache: HotCache[bytes, str] = HotCache(max_entries=2)
    cache.put(b"a", "A", 0)
    cache.put(b"b", "B", 0)
    assert cache.get(b"a") == "A"      # a is now most recent
    cache.put(b"c", "C", 1)            # evicts b
    assert cache.get(b"b") is None
    assert cache.get(b"c") == "C" and cache.get(b"a") == "A"
    assert (cache.hits, cache.misses, cache.evictions, len(cache)) == (3, 1, 1, 2)
    assert cache.hit_ratio == 0.75
    assert cache.stats()["entries"] == 2


def test_put_updates_in_place_and_refreshes() -> None:
    cache: HotCache[bytes, int] = HotCache(max_entries=2)
    cache.put(b"a", 1, 0)
    cache.put(b"b", 2, 0)
    cache.put(b"a", 3, 0)              # a refreshed: b is the oldest
    cache.put(b"c", 4, 0)
    assert list(cache) == [b"a", b"c"] and cache.peek(b"a") == 3


def test_peek_does_not_count_or_refresh() -> None:
    cache: HotCache[bytes, int] = HotCache(max_entries=2)
    cache.put(b"a", 1, 0)
    cache.put(b"b", 2, 0)
    assert cache.peek(b"a") == 1 and cache.peek(b"zz") is None
    cache.put(b"c", 3, 0)
    assert b"a" not in cache and cache.hits == cache.misses == 0


def test_drop_partition_and_clear() -> None:
    cache: HotCache[bytes, int] = HotCache(max_entries=100)
    for i in range(30):
        cache.put(f"k{i}".encode(), i, i % 3)
    assert cache.drop_partition(1) == 10
    assert all(cache.peek(f"k{i}".encode()) is None for i in range(1, 30, 3))
    assert cache.peek(b"k0") == 0
    assert cache.drop_partitions({0, 2}) == 20 and len(cache) == 0
    cache.put(b"x", 1, 5)
    cache.discard(b"x")
    cache.discard(b"missing")
    cache.put(b"y", 1, 5)
    cache.clear()
    assert len(cache) == 0


def test_a_key_moves_with_its_latest_partition() -> None:
    cache: HotCache[bytes, int] = HotCache(max_entries=10)
    cache.put(b"k", 1, 0)
    cache.put(b"k", 2, 1)
    assert cache.drop_partition(0) == 0 and cache.drop_partition(1) == 1


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        HotCache(0)
