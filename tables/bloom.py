"""Bloom filters for the dedup stage's new-fingerprint fast path: skip the RocksDB read of a key
that is certainly not in the table.

- `BloomFilter`: m bits in a bytearray and k bit positions per key, from one 128-bit blake2b digest
  by double hashing (Kirsch–Mitzenmacher: position_i = h1 + i·h2 mod m). Sized from the expected
  items n and the target false-positive rate p: m = ceil(-n·ln p / ln²2), k = round(m/n · ln 2).
  A negative answer is certain; a positive one is wrong with probability ~p while the filter holds
  at most n keys (past n it grows: `fp_rate_estimate()` tells, from the bits actually set).
- `RotatingBloomFilter`: the same with a TTL, as two generations (current, previous) rotated on a
  fixed grid every ttl/2. A key is added to the current generation; a lookup checks both. A key
  last added at t is therefore remembered at least ttl/2 and at most ttl after t (it sits in the
  generation it was added to until the next grid point, then one more half period as previous).
  Each generation gets half the target rate, since a lookup checks two filters.
- `PartitionBlooms`: one filter per table partition, for rebalances: a partition's filter answers
  "maybe" until it was built from that partition's keys, and is dropped when the partition goes.

Correctness for dedup: a negative may skip the read only if the filter holds every key the table
holds for that partition (built from the table's keys at assignment, then every new key added no
later than it is written). With a TTL, a negative means "not seen for ttl/2 .. ttl", not "not in
the table": use it only if identity state is meant to expire after that long. See docs/dedup.md.

Stdlib only: hashlib (a pre-keyed blake2b state copied per key) and int arithmetic.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Callable, Iterable

_M64 = (1 << 64) - 1
_BLAKE = hashlib.blake2b(digest_size=16, person=b"alertstream.bf1")  # copied per key: no constructor cost
_from_bytes = int.from_bytes


def optimal_size(capacity: int, fp_rate: float) -> tuple[int, int]:
    """(m bits, k hashes) for `capacity` keys at false-positive rate `fp_rate`."""
    if capacity < 1:
        raise ValueError("capacity must be >= 1")
    if not 0 < fp_rate < 1:
        raise ValueError("fp_rate must be in (0, 1)")
    m = max(8, math.ceil(-capacity * math.log(fp_rate) / math.log(2) ** 2))
    k = max(1, round(m / capacity * math.log(2)))
    return m, k


def _key_hash(key: bytes | str) -> int:
    if isinstance(key, str):
        key = key.encode()
    h = _BLAKE.copy()
    h.update(key)
    return _from_bytes(h.digest(), "little")


class BloomFilter:
    __slots__ = ("m", "k", "capacity", "fp_rate", "_bits", "_rounds")

    def __init__(self, capacity: int, fp_rate: float = 0.01) -> None:
        self.m, self.k = optimal_size(capacity, fp_rate)
        self.capacity = capacity
        self.fp_rate = fp_rate
        self._bits = bytearray((self.m + 7) // 8)
        self._rounds = range(self.k)

    def add(self, key: bytes | str) -> bool:
        """Add `key`; True if it was (probably) new, i.e. it set at least one bit."""
        h = _key_hash(key)
        m, bits = self.m, self._bits
        pos = (h & _M64) % m
        step = (h >> 64) % m or 1
        new = False
        for _ in self._rounds:
            byte, mask = pos >> 3, 1 << (pos & 7)
            if not bits[byte] & mask:
                bits[byte] |= mask
                new = True
            pos += step
            if pos >= m:
                pos -= m
        return new

    def __contains__(self, key: bytes | str) -> bool:
        h = _key_hash(key)
        m, bits = self.m, self._bits
        pos = (h & _M64) % m
        step = (h >> 64) % m or 1
        for _ in self._rounds:
            if not bits[pos >> 3] & (1 << (pos & 7)):
                return False
            pos += step
            if pos >= m:
                pos -= m
        return True

    def bits_set(self) -> int:
        return _from_bytes(self._bits, "little").bit_count()

    def fp_rate_estimate(self) -> float:
        """The false-positive rate now: (bits set / m)^k, from the bits actually set."""
        return (self.bits_set() / self.m) ** self.k

    def clear(self) -> None:
        self._bits[:] = bytes(len(self._bits))

    @property
    def nbytes(self) -> int:
        return len(self._bits)

    def __repr__(self) -> str:
        return (f"BloomFilter(capacity={self.capacity}, fp_rate={self.fp_rate}, m={self.m}, k={self.k}, "
                f"{self.nbytes} bytes)")


class RotatingBloomFilter:
    """A Bloom filter whose keys expire: remembered ttl/2 .. ttl after their last `add`."""

    __slots__ = ("ttl_s", "capacity", "fp_rate", "_half", "_clock", "_started", "current", "previous")

    def __init__(self, capacity: int, fp_rate: float, ttl_s: float, *, clock: Callable[[], float] = time.time) -> None:
        """`capacity`: distinct keys added within one ttl/2 period; `fp_rate`: of a lookup (both generations)."""
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0")
        self.ttl_s, self.capacity, self.fp_rate = ttl_s, capacity, fp_rate
        self._half = ttl_s / 2
        self._clock = clock
        self._started = clock()
        self.current = BloomFilter(capacity, fp_rate / 2)
        self.previous = BloomFilter(capacity, fp_rate / 2)

    def _rotate(self) -> None:
        steps = int((self._clock() - self._started) // self._half)
        if steps <= 0:
            return
        if steps == 1:
            self.previous, self.current = self.current, self.previous
            self.current.clear()
        else:  # idle for a whole ttl: everything expired
            self.current.clear()
            self.previous.clear()
        self._started += steps * self._half  # stay on the grid: the bounds above hold whenever operations come

    def add(self, key: bytes | str) -> bool:
        self._rotate()
        return self.current.add(key)

    def __contains__(self, key: bytes | str) -> bool:
        self._rotate()
        return key in self.current or key in self.previous

    def fp_rate_estimate(self) -> float:
        self._rotate()
        a, b = self.current.fp_rate_estimate(), self.previous.fp_rate_estimate()
        return a + b - a * b


class PartitionBlooms:
    """One filter per partition of the dedup table; "maybe" for a partition not built yet.

    `may_contain` is False only when the partition's filter was built from the table's keys
    (`build`) and the key was never added since: then the key is certainly absent (no TTL) and the
    table read can be skipped.
    """

    def __init__(self, capacity_per_partition: int, fp_rate: float = 0.01, ttl_s: float | None = None,
                 *, clock: Callable[[], float] = time.time) -> None:
        self.capacity = capacity_per_partition
        self.fp_rate = fp_rate
        self.ttl_s = ttl_s
        self._clock = clock
        self._filters: dict[int, BloomFilter | RotatingBloomFilter] = {}
        self.skipped_reads = 0  # negatives: table reads saved

    def _new(self) -> BloomFilter | RotatingBloomFilter:
        if self.ttl_s is None:
            return BloomFilter(self.capacity, self.fp_rate)
        return RotatingBloomFilter(self.capacity, self.fp_rate, self.ttl_s, clock=self._clock)

    def build(self, partition: int, keys: Iterable[bytes]) -> int:
        """(Re)build a partition's filter from every key its table store holds; returns the count."""
        bf = self._new()
        n = 0
        for key in keys:
            bf.add(key)
            n += 1
        self._filters[partition] = bf
        return n

    def ready(self, partition: int) -> bool:
        return partition in self._filters

    def may_contain(self, partition: int, key: bytes) -> bool:
        bf = self._filters.get(partition)
        if bf is not None and key not in bf:
            self.skipped_reads += 1
            return False
        return True

    def add(self, partition: int, key: bytes) -> None:
        """Record a key written (or about to be written) to the partition's table."""
        bf = self._filters.get(partition)
        if bf is not None:
            bf.add(key)

    def drop_partition(self, partition: int) -> None:
        self._filters.pop(partition, None)


__all__ = ["BloomFilter", "PartitionBlooms", "RotatingBloomFilter", "optimal_size"]
