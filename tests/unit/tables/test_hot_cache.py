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


def test_put_updates_in_place_and_refreshes() -> None:
    cache: HotCache[bytes, int] = HotCache(max_entries=2)
    cache.put(b"a", 1, 0)
    cache.put(b"b", 2, 0)
    cache.put(b"a", 3, 0)              # a refreshed: b is the oldest
    cache.put(b"c", 4, 0)
    assert cache.get(b"b") is None and cache.get(b"a") == 3 and cache.get(b"c") == 4 and len(cache) == 2


def test_drop_partitions_and_discard() -> None:
    cache: HotCache[bytes, int] = HotCache(max_entries=100)
    for i in range(30):
        cache.put(f"k{i}".encode(), i, i % 3)
    assert cache.drop_partitions({1}) == 10
    assert all(cache.get(f"k{i}".encode()) is None for i in range(1, 30, 3))
    assert cache.get(b"k0") == 0
    assert cache.drop_partitions({0, 2}) == 20 and len(cache) == 0
    cache.put(b"x", 1, 5)
    cache.discard(b"x")
    cache.discard(b"missing")
    assert len(cache) == 0


def test_a_key_moves_with_its_latest_partition() -> None:
    cache: HotCache[bytes, int] = HotCache(max_entries=10)
    cache.put(b"k", 1, 0)
    cache.put(b"k", 2, 1)
    assert cache.drop_partitions({0}) == 0 and cache.drop_partitions({1}) == 1


def test_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        HotCache(0)
