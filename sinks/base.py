"""The contract every sink follows, the circuit breaker they share, and the one owner that starts
and closes them.

A sink takes one batch of its own type (`Sink[BatchT]`: a `WriteBatch` of alerts and sightings for
Postgres and the search store, a `RawBatch` of payload rows for `alert_raw`) and must make it
durable before returning: only then are the source offsets acked. Sinks are idempotent
(deterministic ids), so a replay after a crash is harmless. A sink tries each write once: every
retry (an outage, throttled documents) is the breaker's, driven by the shared `RetryConfig`.
Which failure is permanent is the sink's knowledge (`is_permanent`), classified by the error
router (core/errors.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import IntEnum
from typing import Any, Generic, Protocol, TypeVar, cast

from config.metrics import CIRCUIT_STATE, SINK_BATCH_SIZE, SINK_ERRORS, SINK_FLUSH_SECONDS, SINK_REJECTED, SINK_WRITTEN
from config.settings import RetryConfig
from core.errors import error_text, sink_classifier
from core.records import Batch, RejectedAlerts

log = logging.getLogger(__name__)


BatchT = TypeVar("BatchT", bound=Batch)
BatchT_contra = TypeVar("BatchT_contra", bound=Batch, contravariant=True)


class Sink(Protocol[BatchT_contra]):
    """A store the stages write to (Postgres, alert_raw, the search store)."""

    name: str

    async def start(self) -> None: ...

    async def write(self, batch: BatchT_contra) -> int:
        """Write durably, once (no retries of its own); return the number of items written.
        Per-item failures: raise `RejectedAlerts` (refused for good, and the part to try again)."""
        ...

    async def close(self) -> None:
        """Release what the sink holds; safe on a sink never started or whose start failed."""
        ...

    def is_permanent(self, exc: Exception) -> bool:
        """True when `exc` means the data can never be written (bisect and dead-letter it)."""
        ...


class CircuitState(IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


SinkT = TypeVar("SinkT", bound=Sink[Any])
DeadLetterFn = Callable[[Any, str], Awaitable[None]]  # (an item of the batch's `refusable()`, the reason)
WaitHook = Callable[[float], Awaitable[None]]
RetryLaterFn = Callable[[Any, Exception], Awaitable[None]]  # (the batch's retryable rest, the RejectedAlerts)


class CircuitBreaker(Generic[BatchT]):
    """One per sink and stage, and the only retry loop of a write. A failed write opens the
    circuit: the stage stops taking records (its partitions paused), waits with a growing,
    jittered delay (`RetryConfig`), then probes with the same batch (half-open); success closes
    it. No hot retry loop, no lost batch.

    Failures are classified (core/errors.py `sink_classifier` over the sink's `is_permanent`):
    - permanent (bad data, e.g. a value Postgres refuses): the batch is bisected to the items at
      fault; those go to the DLQ, the rest is written;
    - `RejectedAlerts` from the sink (per-item failures): refused items to the DLQ; the retryable
      rest (throttled documents) is tried again after a wait, `throttle_retries` times, then handed
      to `retry_later` (a retry topic); without `retry_later` it is retried until written;
    - anything else (server down, timeout, deadlock): open the circuit and probe, for as long as
      it takes, or `give_up_after` failed attempts (then the error is raised: a batch job with a
      checkpoint resumes at its next run instead of holding on).
    """

    def __init__(self, sink: Sink[BatchT], retry: RetryConfig, dead_letter: DeadLetterFn, wait: WaitHook | None = None,
                 retry_later: RetryLaterFn | None = None, *, throttle_retries: int = 0,
                 give_up_after: int | None = None) -> None:
        self.sink = sink
        self.retry_later = retry_later  # throttled alerts to a retry topic, instead of waiting here
        self.throttle_retries = throttle_retries
        self.give_up_after = give_up_after
        self.retry = retry
        self.dead_letter = dead_letter
        self.classifier = sink_classifier(sink.is_permanent)
        self.wait = wait or asyncio.sleep  # a stage passes a wait that keeps its consumer alive, paused
        self.state = CircuitState.CLOSED
        CIRCUIT_STATE.labels(sink.name).set(self.state)

    def _set(self, state: CircuitState) -> None:
        self.state = state
        CIRCUIT_STATE.labels(self.sink.name).set(state)

    async def write(self, batch: BatchT) -> None:
        SINK_BATCH_SIZE.labels(self.sink.name).observe(batch.size)
        started = time.perf_counter()
        written = await self._write(batch)
        SINK_WRITTEN.labels(self.sink.name).inc(written)
        SINK_FLUSH_SECONDS.labels(self.sink.name).observe(time.perf_counter() - started)

    async def _attempt(self, batch: BatchT) -> int:
        return await asyncio.wait_for(self.sink.write(batch), timeout=self.retry.attempt_timeout_s)

    async def _write(self, batch: BatchT) -> int:
        backoff = self.retry.initial_backoff_s
        throttled = failures = 0
        while True:
            try:
                written = await self._attempt(batch)
                self._set(CircuitState.CLOSED)
                return written
            except asyncio.CancelledError:
                raise
            except RejectedAlerts as exc:
                await self._reject(batch, exc.rejected)
                batch = cast(BatchT, exc.retry)  # the sink hands back its own batch type
                if batch.is_empty():
                    self._set(CircuitState.CLOSED)
                    return 0
                throttled += 1
                if self.retry_later is not None and throttled > self.throttle_retries:
                    await self.retry_later(batch, exc)
                    self._set(CircuitState.CLOSED)
                    return 0
            except Exception as exc:
                SINK_ERRORS.labels(self.sink.name, type(exc).__name__).inc()
                if not self.classifier.classify(exc).transient and batch.refusable():
                    self._set(CircuitState.CLOSED)
                    return await self._bisect(batch, exc)
                failures += 1
                if self.give_up_after is not None and failures >= self.give_up_after:
                    self._set(CircuitState.CLOSED)  # the caller stops here: no stage is held back by this circuit
                    raise
                self._set(CircuitState.OPEN)
                log.warning("sink %s: circuit open after %s: %s; probing again in <= %.1fs",
                            self.sink.name, type(exc).__name__, str(exc)[:300], backoff)
            await self.wait(random.uniform(backoff / 2, backoff))  # full jitter: throttled writers spread out
            backoff = min(backoff * 2, self.retry.max_backoff_s)
            if self.state is CircuitState.OPEN:
                self._set(CircuitState.HALF_OPEN)

    async def _bisect(self, batch: BatchT, exc: Exception) -> int:
        """Find the items a permanent error is about: halves are written (idempotently) until
        each failing half is one item, which goes to the DLQ."""
        items = batch.refusable()
        if len(items) == 1:
            uid = items[0].uid
            await self._reject(batch, {uid: error_text(exc)})
            rest = batch.without({uid})  # e.g. the sightings of duplicates: never lost with the poison
            return 0 if rest.is_empty() else await self._write(rest)
        written = 0
        for half in batch.split():
            try:
                written += await self._attempt(half)
            except Exception as half_exc:  # noqa: BLE001 - classified below
                if self.classifier.classify(half_exc).transient:
                    written += await self._write(half)  # an outage mid-bisect: back to the circuit
                else:
                    written += await self._bisect(half, half_exc)
        return written

    async def _reject(self, batch: BatchT, rejected: dict[str, str]) -> None:
        for item in batch.refusable():
            reason = rejected.get(item.uid)
            if reason is not None:
                SINK_REJECTED.labels(self.sink.name).inc()
                log.error("sink %s rejected alert %s: %s", self.sink.name, item.uid, reason[:300])
                await self.dead_letter(item, f"{self.sink.name}: {reason}")


class Sinks:
    """The one owner of the sinks' lifecycle, in the worker and in the CLI commands.

    Every sink is registered once (`add`); `start(*sinks)` starts the ones given (default: all),
    in registration order, each once however many stages ask; `close()` closes every registered
    sink in reverse order, each even if its start failed or never ran, a failing close logged
    and the rest still closed. In the worker, each stage holds the sinks it needs with
    `async with sinks.use(postgres):` (the first to ask starts a sink, the last stage to leave
    closes them all, so no stage loses a sink another still writes to); a command uses
    `async with Sinks(a, b):`.
    """

    def __init__(self, *sinks: Sink[Any]) -> None:
        self._sinks: list[Sink[Any]] = []
        self._starts: dict[int, asyncio.Future[None]] = {}
        self._users = 0
        for sink in sinks:
            self.add(sink)

    def add(self, sink: SinkT) -> SinkT:
        if any(s is sink for s in self._sinks):
            raise ValueError(f"sink {sink.name} is registered already")
        self._sinks.append(sink)
        return sink

    @property
    def registered(self) -> list[Sink[Any]]:
        return list(self._sinks)

    async def start(self, *sinks: Sink[Any]) -> None:
        """Start `sinks` (default: every registered one) in registration order. A sink being
        started by another stage is waited for; a start that failed is tried again next time."""
        for sink in sinks:
            if not any(s is sink for s in self._sinks):
                raise ValueError(f"sink {sink.name} is not registered")
        for sink in [s for s in self._sinks if not sinks or any(s is w for w in sinks)]:
            started = self._starts.get(id(sink))
            if started is None:
                started = self._starts[id(sink)] = asyncio.ensure_future(sink.start())
            try:
                await asyncio.shield(started)  # a stage cancelled meanwhile does not cancel the others' start
            except Exception:
                if self._starts.get(id(sink)) is started:
                    del self._starts[id(sink)]
                raise

    async def close(self) -> None:
        """Close every registered sink, last registered first."""
        self._starts.clear()
        for sink in reversed(self._sinks):
            try:
                await sink.close()
            except Exception:  # noqa: BLE001 - the other sinks are still closed
                log.exception("sink %s: close failed", sink.name)

    @contextlib.asynccontextmanager
    async def use(self, *sinks: Sink[Any]) -> AsyncIterator[Sinks]:
        """Hold `sinks` (started) for one stage; the last stage to leave closes every sink."""
        self._users += 1
        try:
            if sinks:  # a stage without a sink only keeps the others' open until it stops
                await self.start(*sinks)
            yield self
        finally:
            self._users -= 1
            if self._users == 0:
                await self.close()

    async def __aenter__(self) -> Sinks:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

