"""The deduplicate stage as one unit: batches of the normalized topic made durable in the order that
keeps at-least-once exact, with every collaborator passed in (so a test drives it with fakes).

Per batch:
1. plan: decide every alert against the table (pipeline/deduplicator.py `plan_batch`);
2. durable, in parallel: the alert rows (Postgres, through its circuit breaker), the stored alerts
   handed to the indexer, undecodable records dead-lettered;
3. checkpoint the state: the changed keys and each flow's decided position to the changelog
   (acked), then RocksDB (tables/dedup_state.py `DedupStore.checkpoint`);
4. only then `on_durable` runs for the batch: the caller acks its records there, never before.
A failure in 2 or 3 is tried again in-process (the sinks and the changelog take a repeat as a
no-op); once the attempts are spent `on_failure` is called at once and `submit`/`drain` raise
`BatchNotDurable`; neither that batch nor any later one is acked: the next owner of the
partitions processes them again. The stage is then spent: every later `submit` or `drain` raises
without planning or writing anything, because a later batch made durable would move its flows'
positions past the failed one, and its replay by the next owner would be taken for sightings
already counted.

Pipelined (`window` 2, the default): batch N+1 is taken and planned while batch N is being made
durable, because the worker would otherwise sit idle through every Postgres write. Durable phases
still run one after another, in batch order (`last_alert` counts a sighting by its position in its
flow, so a later batch must never land first), and batch N+1 is planned against N's state changes
and flow positions (an overlay over the table) before they reach RocksDB. If batch N's row sink
refused an alert, N's state for that identity is not written, so every batch planned on top of it
is planned again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from config.metrics import DEDUP_BATCH_FAILURES, DEDUP_EXPIRED, DEDUP_REPLAYED
from core.errors import UNDECODABLE
from core.records import RawRecord
from core.records import WriteBatch
from pipeline.deduplicator import PackedRecord, StageTwoPlan, plan_batch
from schemas.rules import RuleSet
from streams.failpoints import FailPoints
from tables.dedup_state import DedupState, DedupStore, FlowPositions, state_key

log = logging.getLogger(__name__)

DeadLetterRecord = Callable[..., Awaitable[None]]  # (RawRecord, *, reason, detail)
OnDurable = Callable[[StageTwoPlan], Awaitable[None]]
SWEEP_INTERVAL_MS = 1000  # a partition's TTL scan runs at most this often, not on every batch


class BatchNotDurable(Exception):
    """A batch could not be made durable in its attempts (or an earlier batch could not): none of
    its records, and none of any later batch, may be acked."""


@dataclass(slots=True)
class _InFlight:
    records: list[PackedRecord]
    plan: StageTwoPlan
    on_durable: OnDurable | None
    overlay: dict[bytes, DedupState] = field(default_factory=dict)  # its planned state, until durable
    positions: dict[int, FlowPositions] = field(default_factory=dict)  # likewise its flow positions
    replanned_or_refused: bool = False  # later batches planned on this one's overlay must plan again
    task: asyncio.Task | None = None


class DeduplicateStage:
    def __init__(self, name: str, topic: str, *, store: DedupStore, rules: RuleSet,
                 write_rows: Callable[[WriteBatch], Awaitable[None]],
                 hand_off: Callable[[StageTwoPlan], Awaitable[None]],
                 dead_letter_record: DeadLetterRecord,
                 ttl_ms: int = 0, sweep_budget: int = 2000, failpoints: FailPoints | None = None,
                 window: int = 2, attempts: int = 1, backoff_s: Callable[[int], float] = lambda attempt: 0.0,
                 on_failure: Callable[[BatchNotDurable], None] = lambda exc: None,
                 clock_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
        if window < 1 or attempts < 1:
            raise ValueError("window and attempts are at least 1")
        self.name = name
        self.topic = topic
        self.lane = "!" if name.endswith("critical") else ""  # pipeline/deduplicator.py `sighting_flow`
        self._store = store
        self._rules = rules
        self._write_rows = write_rows
        self._hand_off = hand_off
        self._dead_letter_record = dead_letter_record
        self._ttl_ms = ttl_ms
        self._sweep_budget = sweep_budget
        self._failpoints = failpoints or FailPoints(None)
        self._window = window
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._on_failure = on_failure  # told at once: the caller may be waiting for records, not for us
        self._clock_ms = clock_ms
        # uids of the running durable phase's alerts that the row sink refused (dead-lettered): their
        # identities keep their old state, so the alert replayed from the DLQ after a fix is stored,
        # not taken for a duplicate of itself. Filled by the sink's dead-letter callback.
        self.rejected: set[str] = set()
        self._swept_at: dict[int, int] = {}
        self._in_flight: deque[_InFlight] = deque()
        self.failures = 0  # durable attempts that failed (each was tried again or ended the stage)
        self._spent: BatchNotDurable | None = None  # a batch failed for good: nothing more is taken

    async def submit(self, records: list[PackedRecord], on_durable: OnDurable | None = None) -> None:
        """Plan a batch and start making it durable behind the batches in flight; returns once at most
        `window` batches are unfinished (with `window` 1: once this one is durable). Raises
        `BatchNotDurable` when an earlier batch failed for good."""
        while len(self._in_flight) >= self._window:
            await self._finish_oldest()
        self._refuse_if_spent()  # before, or while this one waited for room
        flight = _InFlight(records, self._plan(records), on_durable)
        flight.overlay = _overlay(flight.plan)  # now: the next batch may be planned before this task runs
        flight.positions = flight.plan.flow_positions
        previous = self._in_flight[-1] if self._in_flight else None
        flight.task = asyncio.create_task(self._make_durable(flight, previous), name=f"{self.name}-durable")
        self._in_flight.append(flight)
        if self._window == 1:
            await self._finish_oldest()

    async def drain(self) -> None:
        """Every submitted batch durable (and its `on_durable` run), or `BatchNotDurable`."""
        while self._in_flight:
            await self._finish_oldest()
        self._refuse_if_spent()

    def _refuse_if_spent(self) -> None:
        if self._spent is not None:
            raise BatchNotDurable(f"{self.name}: an earlier batch failed for good ({self._spent})")

    async def process(self, records: list[PackedRecord]) -> StageTwoPlan:
        """One batch, durable when this returns; raises `BatchNotDurable` otherwise."""
        done: list[StageTwoPlan] = []

        async def keep(plan: StageTwoPlan) -> None:
            done.append(plan)

        await self.submit(records, keep)
        await self.drain()
        return done[0]

    @property
    def spent(self) -> bool:
        """A batch failed for good: the stage takes nothing more."""
        return self._spent is not None

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    def _plan(self, records: list[PackedRecord], *, durable_only: bool = False) -> StageTwoPlan:
        return plan_batch(records, self._store.get if durable_only else self._read_state, self._rules,
                          refresh_after_ms=self._ttl_ms // 2 or None, lane=self.lane,
                          read_positions=self._durable_positions if durable_only else self._read_positions)

    def _read_state(self, key: bytes, event: object) -> DedupState | None:
        for flight in reversed(self._in_flight):  # the newest planned state first
            if key in flight.overlay:
                return flight.overlay[key]
        return self._store.get(key, event)

    def _read_positions(self, partition: int) -> FlowPositions:
        for flight in reversed(self._in_flight):  # a plan's positions hold the durable ones it started from
            if partition in flight.positions:
                return flight.positions[partition]
        return self._durable_positions(partition)

    def _durable_positions(self, partition: int) -> FlowPositions:
        return self._store.flow_positions(partition, self.lane)

    async def _finish_oldest(self) -> None:
        flight = self._in_flight[0]
        try:
            await asyncio.shield(flight.task)  # a cancelled caller (a stop) leaves the batch running
        except Exception:
            later = [f.task for f in self._in_flight if f is not flight]
            self._in_flight.clear()  # every later batch fails too (it waits on this one): collect them
            await asyncio.gather(*later, return_exceptions=True)
            raise
        self._in_flight.popleft()

    async def _make_durable(self, flight: _InFlight, previous: _InFlight | None) -> None:
        if previous is not None:
            try:
                await asyncio.shield(previous.task)  # durable phases run in batch order
            except BaseException as exc:
                raise BatchNotDurable(f"{self.name}: an earlier batch was not made durable") from exc
            if previous.replanned_or_refused:
                # planned on state that was not written, or that changed: plan on what is durable now
                # (every batch before this one is)
                flight.plan = self._plan(flight.records, durable_only=True)
                flight.overlay = _overlay(flight.plan)
                flight.positions = flight.plan.flow_positions
                flight.replanned_or_refused = True
        for attempt in range(1, self._attempts + 1):
            try:
                await self._durable_once(flight)
                break
            except Exception as exc:  # noqa: BLE001 - any failure: not durable, so not acked
                self.failures += 1
                DEDUP_BATCH_FAILURES.labels(self.name).inc()  # every failed attempt, as operators count them
                log.exception("%s: making a batch of %d records durable failed (attempt %d of %d)",
                              self.name, len(flight.records), attempt, self._attempts)
                if attempt == self._attempts:
                    failed = BatchNotDurable(f"{self.name}: a batch failed {attempt} times ({type(exc).__name__}: {exc})")
                    self._spent = failed
                    self._on_failure(failed)
                    raise failed from exc
                await asyncio.sleep(self._backoff_s(attempt))
        if self.rejected:
            flight.replanned_or_refused = True
        # durable: the table holds its state now (or, for refused rows, rightly does not); a batch that
        # is done but not yet taken off the queue must neither shadow the table nor keep keys alive
        flight.overlay = {}
        flight.positions = {}
        DEDUP_REPLAYED.labels(self.name).inc(flight.plan.replayed)
        if flight.on_durable is not None:
            await flight.on_durable(flight.plan)

    async def _durable_once(self, flight: _InFlight) -> None:
        plan, records = flight.plan, flight.records
        self.rejected.clear()
        async with asyncio.TaskGroup() as durable:  # one failure cancels the others
            durable.create_task(self._write_rows(plan.batch))
            durable.create_task(self._hand_off(plan))
            for record, why in plan.undecodable:
                raw = RawRecord(self.topic, record.partition, record.offset, 0, None, record.value, {})
                durable.create_task(self._dead_letter_record(raw, reason=UNDECODABLE, detail=why))
        self._failpoints.hit("dedup.state")
        await self._store.checkpoint(self._state_changes(plan, records), plan.flow_positions, self.lane)

    def _state_changes(self, plan: StageTwoPlan, records: list[PackedRecord]) -> dict[bytes, tuple[DedupState | None, int]]:
        refused = {state_key(i.alert.tenant, i.alert.fingerprint) for i in plan.batch.stored if i.uid in self.rejected}
        changes: dict[bytes, tuple[DedupState | None, int]] = {
            key: (state, event.message.partition) for key, (state, event) in plan.state_writes.items() if key not in refused}
        if self._ttl_ms:
            now_ms = self._clock_ms()
            expired = 0
            for partition in {r.partition for r in records}:
                if now_ms - self._swept_at.get(partition, -SWEEP_INTERVAL_MS) < SWEEP_INTERVAL_MS:
                    continue
                self._swept_at[partition] = now_ms
                for key in self._store.expired(partition, now_ms, self._ttl_ms, self._sweep_budget):
                    if key not in changes and not self._planned_later(key):  # seen: alive
                        changes[key] = (None, partition)
                        expired += 1
            DEDUP_EXPIRED.inc(expired)
        return changes

    def _planned_later(self, key: bytes) -> bool:
        """A batch already planned behind this one saw the identity: it is alive, keep it."""
        return any(key in flight.overlay for flight in self._in_flight)


def _overlay(plan: StageTwoPlan) -> dict[bytes, DedupState]:
    return {key: state for key, (state, _) in plan.state_writes.items()}
