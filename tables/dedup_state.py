"""Dedup state: one small record per (tenant, fingerprint) in a RocksDB-backed Faust table.

The table is written only when an identity's content changes (new
fingerprint, new content hash, which includes a status change), and, for an
identity that only repeats, at most once per half TTL to mark it as still
alive. Sighting counts and last-received times live in Postgres `last_alert`,
coalesced per batch, not here.

In front of the table: an LRU cache of hot identities and, optionally, one
Bloom filter per partition that answers "certainly new" without a RocksDB
read. Behind it: a sweep that deletes identities not seen for the TTL.
"""

from __future__ import annotations

from collections.abc import Iterator
from enum import Enum
from typing import Any, Protocol

import faust
import msgspec
from rocksdict import WriteBatch

from tables.bloom import PartitionBlooms
from tables.hot_cache import HotCache


class DedupState(msgspec.Struct, array_like=True):
    content_hash: str
    status: str
    first_seen_ms: int
    changed_ms: int
    seen_ms: int  # refreshed at most once per half TTL, so the TTL sweep spares active identities


class Outcome(str, Enum):
    NEW = "new"              # first sighting of the identity: stored
    CHANGED = "changed"      # same identity, different content (Keep's partial duplicate): stored
    DUPLICATE = "duplicate"  # same identity and content (Keep's full duplicate): not stored


SWEEP_REST_FRACTION = 0.01  # after a full TTL pass over a partition, rest this share of the TTL
encode_state = msgspec.msgpack.Encoder().encode  # the table's value bytes (RocksDB and the changelog)
decode_state = msgspec.msgpack.Decoder(DedupState).decode


def state_key(tenant: str, fingerprint: str) -> bytes:
    return f"{tenant}\x00{fingerprint}".encode()


# Per internal partition and lane: each flow's highest source position already decided (see
# pipeline/deduplicator.py `sighting_flow`). A sighting at or below it was made durable before (it
# is a record read again after a crash, or the normalizer's second copy of it) and is skipped. The
# key starts with 0xFF, which no UTF-8 state key does; the lane keeps the two dedup stages, which
# share the table, from overwriting each other's positions.
FlowPositions = dict[str, int]
encode_positions = msgspec.msgpack.Encoder().encode
decode_positions = msgspec.msgpack.Decoder(FlowPositions).decode


def positions_key(lane: str) -> bytes:
    return b"\xffflow-positions" + lane.encode()


def is_state_key(key: bytes) -> bool:
    return not key.startswith(b"\xff")


def decide(previous: DedupState | None, content_hash: str, status: str, received_ms: int,
           refresh_after_ms: int | None = None) -> tuple[Outcome, DedupState | None]:
    """Pure: the outcome of one sighting, and the state to write (None: nothing to write).

    A duplicate writes state only to refresh `seen_ms`, once `refresh_after_ms` has passed.
    """
    if previous is None:
        return Outcome.NEW, DedupState(content_hash, status, received_ms, received_ms, received_ms)
    if previous.content_hash == content_hash:
        if refresh_after_ms is not None and received_ms - previous.seen_ms >= refresh_after_ms:
            return Outcome.DUPLICATE, msgspec.structs.replace(previous, seen_ms=received_ms)
        return Outcome.DUPLICATE, None
    return Outcome.CHANGED, DedupState(content_hash, status, previous.first_seen_ms, received_ms, received_ms)


def make_table(app: faust.App, partitions: int) -> faust.Table:
    return app.Table(
        "dedup-state",
        partitions=partitions,
        key_type=bytes,
        value_type=bytes,
        help="Last content hash per (tenant, fingerprint), for exact-duplicate detection.",
    )


class Changelog(Protocol):
    """Where the table's changes go before RocksDB: its compacted changelog topic."""

    async def send(self, records: list[tuple[int, bytes, bytes | None]]) -> dict[int, int]:
        """Send (partition, key, value; None: a tombstone) records; return once every one is acked,
        with the highest offset written per partition."""
        ...


class DedupStore:
    """Typed, partition-correct access to the table, with the hot cache and Bloom filters in front.

    Writes are checkpointed, not per key: a batch's changes (the last one per key) go to the
    changelog in bulk, acked once, then to RocksDB in one write batch per partition together with
    the changelog offset Faust's recovery resumes from (its `persisted_offset`). The table stays a
    Faust RocksDB table, rebuilt by Faust from the same changelog, in the same record format (raw
    key and value); what is gone is Faust's per-write path (one buffered changelog send per key,
    which paused every stream while its buffer was full).
    """

    def __init__(self, table: faust.Table, changelog: Changelog | None = None, cache: HotCache | None = None,
                 blooms: PartitionBlooms | None = None) -> None:
        self._table = table
        self._changelog = changelog
        self._cache = cache
        self._blooms = blooms
        self._sweeps: dict[int, Iterator[tuple[bytes, bytes]]] = {}
        self._swept_until: dict[int, int] = {}  # partition → when its next full pass may start (ms)
        self._positions: dict[tuple[int, str], FlowPositions] = {}  # (partition, lane): as RocksDB holds them

    def get(self, key: bytes, event: Any) -> DedupState | None:
        partition = event.message.partition
        if self._cache is not None:
            state = self._cache.get(key)
            if state is not None:
                return state
        if self._blooms is not None:
            if not self._blooms.ready(partition):
                self._blooms.build(partition, self._partition_keys(partition))
            if not self._blooms.may_contain(partition, key):
                return None  # certainly never written: skip the RocksDB read
        raw = self._partition_db(partition).get(key)
        state = decode_state(raw) if raw is not None else None
        if state is not None and self._cache is not None:
            self._cache.put(key, state, partition)
        return state

    def flow_positions(self, partition: int, lane: str) -> FlowPositions:
        """The partition's durable flow positions for `lane` (read-only: the caller copies to change)."""
        positions = self._positions.get((partition, lane))
        if positions is None:
            raw = self._partition_db(partition).get(positions_key(lane))
            positions = self._positions[(partition, lane)] = decode_positions(raw) if raw is not None else {}
        return positions

    async def checkpoint(self, changes: dict[bytes, tuple[DedupState | None, int]],
                         positions: dict[int, FlowPositions] | None = None, lane: str = "") -> None:
        """Make a batch's state changes durable: key → (state, None to delete; partition), and, in
        the same writes, the flow positions it decided up to (partition → flow → position).

        The changelog first: a crash after it and before RocksDB leaves the changelog ahead, and
        recovery replays it into RocksDB. Never RocksDB first: a state that is not in the changelog
        would be lost when the partition moves to another worker.
        """
        positions = positions or {}
        if not changes and not positions:
            return
        assert self._changelog is not None, "a DedupStore without a changelog is read-only"
        encoded = [(partition, key, None if state is None else encode_state(state))
                   for key, (state, partition) in changes.items()]
        encoded += [(partition, positions_key(lane), encode_positions(flows)) for partition, flows in positions.items()]
        offsets = await self._changelog.send(encoded)
        batches: dict[int, WriteBatch] = {}
        for partition, key, value in encoded:
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = WriteBatch(raw_mode=True)
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        for partition, batch in batches.items():
            batch.put(self._table.data.offset_key, str(offsets[partition]).encode())
            self._partition_db(partition).write(batch)
        for key, (state, partition) in changes.items():
            if state is None:
                if self._cache is not None:
                    self._cache.discard(key)
                continue
            if self._cache is not None:
                self._cache.put(key, state, partition)
            if self._blooms is not None:
                self._blooms.add(partition, key)
        for partition, flows in positions.items():
            self._positions[(partition, lane)] = dict(flows)

    @property
    def cache_hit_ratio(self) -> float:
        return self._cache.hit_ratio if self._cache is not None else 0.0

    @property
    def bloom_skipped_reads(self) -> int:
        return self._blooms.skipped_reads if self._blooms is not None else 0

    def forget_partitions(self, partitions: set[int]) -> None:
        """After a rebalance: another worker may now change these keys."""
        if self._cache is not None:
            self._cache.drop_partitions(partitions)
        self._positions = {pl: flows for pl, flows in self._positions.items() if pl[0] not in partitions}
        for partition in partitions:
            self._sweeps.pop(partition, None)
            self._swept_until.pop(partition, None)
            if self._blooms is not None:
                self._blooms.drop_partition(partition)

    def expired(self, partition: int, now_ms: int, ttl_ms: int, budget: int) -> list[bytes]:
        """Identities of the partition not seen for `ttl_ms`, among up to `budget` scanned keys;
        resumes where the last scan of that partition stopped. The caller deletes them in its
        checkpoint (changelog tombstones: other replicas forget them too)."""
        scan = self._sweeps.get(partition)
        if scan is None:
            if now_ms < self._swept_until.get(partition, now_ms):
                return []  # resting after a full pass
            scan = self._sweeps[partition] = self._partition_items(partition)
        expired = []
        db = self._partition_db(partition)
        for _ in range(budget):
            item = next(scan, None)
            if item is None:
                # a full pass done: the next starts after 1% of the TTL. Scanning without rest kept
                # the worker busy all the time, more so as the memtable filled with versions of each
                # key; an identity is forgotten at most that much (plus a pass) late.
                del self._sweeps[partition]
                self._swept_until[partition] = now_ms + int(ttl_ms * SWEEP_REST_FRACTION)
                break
            key, raw = item
            if now_ms - decode_state(raw).seen_ms > ttl_ms:
                # the scan reads the snapshot of its start, which may be seconds old: a sighting since
                # then refreshed the key, so decide on what RocksDB holds now
                current = db.get(key)
                if current is not None and now_ms - decode_state(current).seen_ms > ttl_ms:
                    expired.append(key)
        return expired

    def _partition_db(self, partition: int):  # noqa: ANN202 - rocksdict.Rdict
        return self._table.data._db_for_partition(partition)

    def _partition_keys(self, partition: int) -> Iterator[bytes]:
        return (key for key, _ in self._partition_items(partition))

    def _partition_items(self, partition: int) -> Iterator[tuple[bytes, bytes]]:
        offset_key = self._table.data.offset_key  # Faust's own bookkeeping row
        # a RocksDB iterator reads a consistent snapshot, so writes during the scan are safe
        return ((k, v) for k, v in self._partition_db(partition).items() if k != offset_key and is_state_key(k))
