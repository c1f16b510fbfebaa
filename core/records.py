"""The records every layer passes around, below all of them: what a stage reads from Kafka
(`RawRecord`), what it dead-letters (`DeadLetter`), what the dedup stage hands the sinks
(`Sighting`, `WriteBatch`), what every sink batch offers the circuit breaker (`Batch`), and the
refusal a sink raises for items it can never write (`RejectedAlerts`).

Plain data, no project imports (docs/decisions.md, "Layers"): the stored-alert type of a batch is
a type parameter, `schemas.alert.NormalizedAlert` wherever the pipeline builds one.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar


class Identified(Protocol):
    @property
    def uid(self) -> str: ...


A = TypeVar("A", bound=Identified)  # the stored alert: schemas.alert.NormalizedAlert


@dataclass(slots=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


@dataclass(slots=True)
class DeadLetter:
    record: RawRecord
    reason: str
    detail: str


@dataclass(slots=True)
class Sighting(Generic[A]):
    """One received alert, duplicates included: it advances `last_alert`.

    `position` is the alert's source position (record offset << 16 | index in the record), ordered
    within its `flow` (pipeline/deduplicator.py `sighting_flow`): `last_alert` counts a sighting only
    past the highest position it counted in that flow, so a sighting sent again after a crash is
    recognised and not counted twice.
    """

    tenant: str
    fingerprint: str
    received_at_ms: int
    partition: int  # on the internal topic: where its stored alert is handed to the indexer
    position: int
    stored: A | None  # the alert row this sighting created, if new or changed
    flow: str


class Batch(Protocol):
    """What the circuit breaker needs of a batch, whatever its sink writes."""

    @property
    def size(self) -> int:
        """The items it holds (the batch-size metric)."""
        ...

    def is_empty(self) -> bool:
        """Nothing to write at all."""
        ...

    def refusable(self) -> Sequence[Identified]:
        """The items a sink may refuse one by one (bad data): bisected to and dead-lettered. Empty:
        no item is ever refused alone, every failure is retried."""
        ...

    def split(self) -> tuple[Any, Any]:
        """Two halves of the refusable items (each with what belongs to them), for bisection."""
        ...

    def without(self, uids: Collection[str]) -> Any:
        """The rest of the batch once the items `uids` were dead-lettered."""
        ...


@dataclass(slots=True)
class WriteBatch(Generic[A]):
    """The dedup stage's output: alert rows to store and every sighting (Postgres); the stored
    alerts alone are the search store's batch (sinks/base.py `Sink`)."""

    stored: list[A] = field(default_factory=list)
    sightings: list[Sighting[A]] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.stored)

    def is_empty(self) -> bool:
        return not self.stored and not self.sightings

    def refusable(self) -> Sequence[A]:
        return self.stored

    def split(self) -> tuple[WriteBatch[A], WriteBatch[A]]:
        """Two halves of the stored alerts, each with the sightings that belong to its alerts.
        Sightings of duplicates (no stored alert) go with the first half."""
        half = len(self.stored) // 2
        first_ids = {a.uid for a in self.stored[:half]}
        second_ids = {a.uid for a in self.stored[half:]}
        return (WriteBatch(self.stored[:half], [s for s in self.sightings if s.stored is None or s.stored.uid in first_ids]),
                WriteBatch(self.stored[half:], [s for s in self.sightings if s.stored is not None and s.stored.uid in second_ids]))

    def without(self, uids: Collection[str]) -> WriteBatch[A]:
        return WriteBatch([a for a in self.stored if a.uid not in uids],
                          [s for s in self.sightings if s.stored is None or s.stored.uid not in uids])


class RejectedAlerts(Exception):
    """Some items of a batch can never be written (bad data); the rest were written or may be retried.

    `rejected` maps item uid → reason; `retry` is the part of the batch still to write (the same
    batch type), tried again by the breaker.
    """

    def __init__(self, rejected: dict[str, str], retry: Batch) -> None:
        super().__init__(f"{len(rejected)} alerts rejected, {retry.size} to retry")
        self.rejected = rejected
        self.retry = retry
