"""A bounded LRU of what the normalize stage built from a record's bytes.

Alerting sends the same bytes again and again: Alertmanager re-sends a group every
`group_interval` and `repeat_interval`, monitors re-send a firing alert until it resolves, and a
producer's retry re-sends a whole batch. What normalizing a record yields depends only on its bytes,
its topic, its tenant/provider headers and the process's configuration (rules, limits), apart from
its position and its time, which the normalize stage writes into each result afterwards. So a
record seen before costs a lookup instead of a normalization.

Keys are the first 128 bits of the SHA-256 of the record's value (SHA-256 has CPU instructions
here, and is faster than BLAKE2b on them) beside its topic and headers: the cache holds what
was built, not the input (the input is as large again). The bound is in bytes, counted as the
entries' own `size` (the caller's estimate of what an entry holds); the least recently used entries
go first, and an entry larger than 1/64 of the bound is not kept (one huge record would evict the
many small ones that pay).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Generic, Hashable, TypeVar

V = TypeVar("V")

KEY_BYTES = 16  # 128 bits: no collision among any number of records a process will ever hold
_ENTRY_OVERHEAD = 640  # an entry's key tuple, digest and header bytes, its tuples and list, the OrderedDict's node (measured: tests)


def digest(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()[:KEY_BYTES]


class ResendCache(Generic[V]):
    """LRU bounded by `max_bytes` (0: keeps nothing). `hits` and `misses` count lookups."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_bytes // 64
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[Hashable, tuple[V, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry[0]

    def put(self, key: Hashable, value: V, size: int) -> None:
        size += _ENTRY_OVERHEAD
        if size > self.max_entry_bytes or key in self._entries:
            return
        self._entries[key] = (value, size)
        self.bytes += size
        while self.bytes > self.max_bytes:
            self.bytes -= self._entries.popitem(last=False)[1][1]

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
