"""The contract every sink follows, and the retry loop they share.

A sink takes one `WriteBatch` per dedup-stage iteration and must make it
durable before returning: only then are the source offsets acked. Sinks are
idempotent (deterministic ids), so a replay after a crash is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Protocol

from schemas.alert import NormalizedAlert
from streams.metrics import SINK_BATCH_SIZE, SINK_ERRORS, SINK_FLUSH_SECONDS, SINK_WRITTEN
from streams.settings import RetryConfig

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Sighting:
    """One received alert, duplicates included: it advances `last_alert`.

    `position` orders sightings within a partition of the internal topic
    (record offset << 16 | index in the record), so a replayed sighting is
    recognised and not counted twice.
    """

    tenant: str
    fingerprint: str
    received_at_ms: int
    partition: int
    position: int
    stored: NormalizedAlert | None  # the alert row this sighting created, if new or changed


@dataclass(slots=True)
class WriteBatch:
    stored: list[NormalizedAlert] = field(default_factory=list)
    sightings: list[Sighting] = field(default_factory=list)


class Sink(Protocol):
    name: str

    async def start(self) -> None: ...

    async def write(self, batch: WriteBatch) -> int:
        """Write durably; return the number of alert rows/documents written."""
        ...

    async def close(self) -> None: ...


async def write_with_retry(sink: Sink, batch: WriteBatch, retry: RetryConfig) -> None:
    """Retry until the write succeeds: a down sink holds the stream back rather than losing data.

    The wait doubles up to `max_backoff_s`, with full jitter so that many
    workers do not hammer a recovering server in step.
    """
    SINK_BATCH_SIZE.labels(sink.name).observe(len(batch.stored))
    started = time.perf_counter()
    backoff = retry.initial_backoff_s
    attempt = 0
    while True:
        attempt += 1
        try:
            written = await asyncio.wait_for(sink.write(batch), timeout=retry.attempt_timeout_s)
            break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure is retried; the batch is never dropped
            SINK_ERRORS.labels(sink.name, type(exc).__name__).inc()
            log.warning("sink %s: attempt %d failed (%s: %s); retrying in <= %.1fs",
                        sink.name, attempt, type(exc).__name__, exc, backoff)
            await asyncio.sleep(random.uniform(0, backoff))
            backoff = min(backoff * 2, retry.max_backoff_s)
    SINK_WRITTEN.labels(sink.name).inc(written)
    SINK_FLUSH_SECONDS.labels(sink.name).observe(time.perf_counter() - started)
