"""The contract every sink follows, and the circuit breaker they share.

A sink takes one `WriteBatch` per dedup-stage iteration and must make it
durable before returning: only then are the source offsets acked. Sinks are
idempotent (deterministic ids), so a replay after a crash is harmless.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from enum import IntEnum
from typing import Protocol

from config.metrics import CIRCUIT_STATE, SINK_BATCH_SIZE, SINK_ERRORS, SINK_FLUSH_SECONDS, SINK_REJECTED, SINK_WRITTEN
from config.settings import RetryConfig
from core.records import RejectedAlerts, WriteBatch
from schemas.alert import NormalizedAlert

log = logging.getLogger(__name__)


class Sink(Protocol):
    name: str

    async def start(self) -> None: ...

    async def write(self, batch: WriteBatch) -> int:
        """Write durably; return the number of alert rows/documents written."""
        ...

    async def close(self) -> None: ...

    def is_permanent(self, exc: Exception) -> bool:
        """True when `exc` means the data can never be written (bisect and dead-letter it)."""
        ...


class CircuitState(IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


DeadLetterFn = Callable[[NormalizedAlert, str], Awaitable[None]]
WaitHook = Callable[[float], Awaitable[None]]
RetryLaterFn = Callable[[WriteBatch, Exception], Awaitable[None]]


class CircuitBreaker:
    """One per sink. A failed write opens the circuit: the stage stops taking records (its
    partitions paused), waits with a growing, jittered delay, then probes with the same batch
    (half-open); success closes it. No hot retry loop, no lost batch.

    Failures are classified:
    - the sink's `is_permanent(exc)` (bad data, e.g. a value Postgres refuses): the batch is
      bisected to find the alerts at fault; those go to the DLQ, the rest is written;
    - `RejectedAlerts` from the sink (per-document failures): rejected alerts to the DLQ, the
      retryable rest to a retry topic (`retry_later`) or, without one, retried after a wait;
    - anything else (server down, timeout, deadlock): open the circuit and probe.
    """

    def __init__(self, sink: Sink, retry: RetryConfig, dead_letter: DeadLetterFn, wait: WaitHook | None = None,
                 retry_later: RetryLaterFn | None = None) -> None:
        self.sink = sink
        self.retry_later = retry_later  # throttled alerts to a retry topic, instead of waiting here
        self.retry = retry
        self.dead_letter = dead_letter
        self.wait = wait or asyncio.sleep  # a stage passes a wait that keeps its consumer alive, paused
        self.state = CircuitState.CLOSED
        CIRCUIT_STATE.labels(sink.name).set(self.state)

    def _set(self, state: CircuitState) -> None:
        self.state = state
        CIRCUIT_STATE.labels(self.sink.name).set(state)

    async def write(self, batch: WriteBatch) -> None:
        SINK_BATCH_SIZE.labels(self.sink.name).observe(len(batch.stored))
        started = time.perf_counter()
        written = await self._write(batch)
        SINK_WRITTEN.labels(self.sink.name).inc(written)
        SINK_FLUSH_SECONDS.labels(self.sink.name).observe(time.perf_counter() - started)

    async def _write(self, batch: WriteBatch) -> int:
        backoff = self.retry.initial_backoff_s
        while True:
            try:
                written = await asyncio.wait_for(self.sink.write(batch), timeout=self.retry.attempt_timeout_s)
                self._set(CircuitState.CLOSED)
                return written
            except asyncio.CancelledError:
                raise
            except RejectedAlerts as exc:
                await self._reject(batch, exc.rejected)
                batch = exc.retry
                if self.retry_later is not None and batch.stored:
                    await self.retry_later(batch, exc)
                    batch = WriteBatch()
                if not batch.stored and not batch.sightings:
                    self._set(CircuitState.CLOSED)
                    return 0
            except Exception as exc:
                SINK_ERRORS.labels(self.sink.name, type(exc).__name__).inc()
                if self.sink.is_permanent(exc) and len(batch.stored) > 0:
                    self._set(CircuitState.CLOSED)
                    return await self._bisect(batch, exc)
                self._set(CircuitState.OPEN)
                log.warning("sink %s: circuit open after %s: %s; probing again in <= %.1fs",
                            self.sink.name, type(exc).__name__, str(exc)[:300], backoff)
            await self.wait(random.uniform(backoff / 2, backoff))
            backoff = min(backoff * 2, self.retry.max_backoff_s)
            if self.state is CircuitState.OPEN:
                self._set(CircuitState.HALF_OPEN)

    async def _bisect(self, batch: WriteBatch, exc: Exception) -> int:
        """Find the alerts a permanent error is about: halves are written (idempotently) until
        each failing half is one alert, which goes to the DLQ."""
        if len(batch.stored) == 1:
            await self._reject(batch, {batch.stored[0].uid: f"{type(exc).__name__}: {exc}"})
            duplicates = [s for s in batch.sightings if s.stored is None]
            return await self._write(WriteBatch([], duplicates)) if duplicates else 0
        written = 0
        for half in split(batch):
            try:
                written += await asyncio.wait_for(self.sink.write(half), timeout=self.retry.attempt_timeout_s)
            except Exception as half_exc:  # noqa: BLE001 - classified below
                if not self.sink.is_permanent(half_exc):
                    written += await self._write(half)  # an outage mid-bisect: back to the circuit
                else:
                    written += await self._bisect(half, half_exc)
        return written

    async def _reject(self, batch: WriteBatch, rejected: dict[str, str]) -> None:
        for item in batch.stored:
            reason = rejected.get(item.uid)
            if reason is not None:
                SINK_REJECTED.labels(self.sink.name).inc()
                log.error("sink %s rejected alert %s: %s", self.sink.name, item.uid, reason[:300])
                await self.dead_letter(item, f"{self.sink.name}: {reason}")


def split(batch: WriteBatch) -> tuple[WriteBatch, WriteBatch]:
    """Two halves of the stored alerts, each with the sightings that belong to its alerts.
    Sightings of duplicates (no stored alert) go with the first half."""
    half = len(batch.stored) // 2
    first_ids = {a.uid for a in batch.stored[:half]}
    second_ids = {a.uid for a in batch.stored[half:]}
    first = WriteBatch(batch.stored[:half], [s for s in batch.sightings if s.stored is None or s.stored.uid in first_ids])
    second = WriteBatch(batch.stored[half:], [s for s in batch.sightings if s.stored is not None and s.stored.uid in second_ids])
    return first, second
