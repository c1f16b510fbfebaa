"""The records every layer passes around, below all of them: what a stage reads from Kafka
(`RawRecord`), what it dead-letters (`DeadLetter`), and what the dedup stage hands the sinks
(`Sighting`, `WriteBatch`, `RejectedAlerts`).

Plain data, no project imports (docs/decisions.md, "Layers"): the stored-alert type of a batch is
a type parameter, `schemas.alert.NormalizedAlert` wherever the pipeline builds one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

A = TypeVar("A")  # the stored alert: schemas.alert.NormalizedAlert


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


@dataclass(slots=True)
class WriteBatch(Generic[A]):
    """What one dedup-stage iteration hands every sink (sinks/base.py `Sink`)."""

    stored: list[A] = field(default_factory=list)
    sightings: list[Sighting[A]] = field(default_factory=list)


class RejectedAlerts(Exception):
    """Some alerts of a batch can never be written (bad data); the rest were written or may be retried.

    `rejected` maps alert uid → reason; `retry` is the part of the batch still to write.
    """

    def __init__(self, rejected: dict[str, str], retry: WriteBatch) -> None:
        super().__init__(f"{len(rejected)} alerts rejected")
        self.rejected = rejected
        self.retry = retry
