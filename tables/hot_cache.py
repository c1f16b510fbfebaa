"""An in-process LRU cache of hot identities' dedup state, in front of the RocksDB table.

Most sightings at volume are repeats of a few hot identities; a hit costs a dict look-up instead of
a Faust table read (contextvar, key encoding, RocksDB get, msgpack decode). Bounded by entries,
least recently used evicted first. (`cachetools` is not a dependency; an OrderedDict does it.)

Entries remember the table partition they belong to, so a rebalance can drop exactly the
partitions that left this worker (`drop_partitions`).

Rules that keep it correct (the cache must never be ahead of, or disagree with, the table):
- write through: `put` the state at the moment it is written to the table (after the sinks), not
  at decide time, so a batch that fails before its table write leaves no trace here;
- drop a partition when it is revoked: another worker may change its state, and this worker may
  get it back later with a stale cache;
- a cached value is the table's value: a miss reads the table and `put`s what it read.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class HotCache(Generic[K, V]):
    __slots__ = ("max_entries", "_data", "hits", "misses", "evictions")

    def __init__(self, max_entries: int = 100_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be >= 1")
        self.max_entries = max_entries
        self._data: OrderedDict[K, tuple[int, V]] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def get(self, key: K) -> V | None:
        """The cached value (and it becomes most recent), or None on a miss."""
        entry = self._data.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._data.move_to_end(key)
        self.hits += 1
        return entry[1]

    def put(self, key: K, value: V, partition: int) -> None:
        data = self._data
        if key in data:
            data.move_to_end(key)
        data[key] = (partition, value)
        if len(data) > self.max_entries:
            data.popitem(last=False)
            self.evictions += 1

    def discard(self, key: K) -> None:
        self._data.pop(key, None)

    def drop_partitions(self, partitions: set[int]) -> int:
        """Forget every entry of `partitions` (revoked in a rebalance); returns how many. O(entries)."""
        stale = [key for key, (p, _) in self._data.items() if p in partitions]
        for key in stale:
            del self._data[key]
        return len(stale)

    def __len__(self) -> int:
        return len(self._data)

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0

    def __repr__(self) -> str:
        return f"HotCache({len(self._data)}/{self.max_entries} entries, hit ratio {self.hit_ratio:.1%})"


__all__ = ["HotCache"]
