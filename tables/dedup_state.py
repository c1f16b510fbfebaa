"""Dedup state: one small record per (tenant, fingerprint) in a RocksDB-backed Faust table.

The table is written only when an identity's content changes (new
fingerprint, new content hash, which includes a status change); exact
duplicates cost a read and no write. Sighting counts and last-received times
live in Postgres `last_alert`, coalesced per batch, not here.
"""

from __future__ import annotations

import weakref
from enum import Enum
from typing import Any

import faust
import msgspec
from faust.streams import _current_event


class DedupState(msgspec.Struct, array_like=True):
    content_hash: str
    status: str
    first_seen_ms: int
    changed_ms: int


class Outcome(str, Enum):
    NEW = "new"              # first sighting of the identity: stored
    CHANGED = "changed"      # same identity, different content (Keep's partial duplicate): stored
    DUPLICATE = "duplicate"  # same identity and content (Keep's full duplicate): not stored


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(DedupState).decode


def state_key(tenant: str, fingerprint: str) -> bytes:
    return f"{tenant}\x00{fingerprint}".encode()


def decide(previous: DedupState | None, content_hash: str, status: str, received_ms: int) -> tuple[Outcome, DedupState | None]:
    """Pure: the outcome of one sighting, and the state to write (None: nothing changed)."""
    if previous is None:
        return Outcome.NEW, DedupState(content_hash, status, received_ms, received_ms)
    if previous.content_hash == content_hash:
        return Outcome.DUPLICATE, None
    return Outcome.CHANGED, DedupState(content_hash, status, previous.first_seen_ms, received_ms)


def make_table(app: faust.App, partitions: int) -> faust.Table:
    return app.Table(
        "dedup-state",
        partitions=partitions,
        key_type=bytes,
        value_type=bytes,
        help="Last content hash per (tenant, fingerprint), for exact-duplicate detection.",
    )


class DedupStore:
    """Typed access to the table, reading and writing each key through the event of its own partition.

    Faust routes a table write (RocksDB partition and changelog partition) by
    the *current event*. A batch holds events of several partitions, so each
    write must name the event it belongs to, or state would land in another
    partition's store and be lost at the next rebalance.
    """

    def __init__(self, table: faust.Table) -> None:
        self._table = table

    def get(self, key: bytes, event: Any) -> DedupState | None:
        token = _current_event.set(weakref.ref(event))
        try:
            raw = self._table.get(key)
        finally:
            _current_event.reset(token)
        return _decode(raw) if raw is not None else None

    def put(self, key: bytes, state: DedupState, event: Any) -> None:
        token = _current_event.set(weakref.ref(event))
        try:
            self._table[key] = _encode(state)
        finally:
            _current_event.reset(token)
