"""The deduplicate stage as one unit: a batch of the normalized topic made durable in the order that
keeps at-least-once exact, with every collaborator passed in (so a test drives it with fakes).

Per batch:
1. plan: decide every alert against the table (pipeline/deduplicator.py `plan_batch`);
2. durable, in parallel: the alert rows (Postgres, through its circuit breaker), the stored alerts
   handed to the indexer, undecodable records dead-lettered;
3. checkpoint the state: the changed keys to the changelog (acked), then RocksDB
   (tables/dedup_state.py `DedupStore.checkpoint`);
4. only when `process` returns may the caller ack the batch's records.
A failure at any step raises: nothing after it ran, nothing is acked, and the batch runs again; the
sinks and the changelog take a repeat as a no-op.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from config.metrics import DEDUP_EXPIRED
from core.records import RawRecord
from core.records import WriteBatch
from pipeline.deduplicator import PackedRecord, StageTwoPlan, plan_batch
from schemas.rules import RuleSet
from streams.failpoints import FailPoints
from tables.dedup_state import DedupState, DedupStore, state_key

DeadLetterRecord = Callable[..., Awaitable[None]]  # (RawRecord, *, reason, detail)
SWEEP_INTERVAL_MS = 1000  # a partition's TTL scan runs at most this often, not on every batch


class DeduplicateStage:
    def __init__(self, name: str, topic: str, *, store: DedupStore, rules: RuleSet,
                 write_rows: Callable[[WriteBatch], Awaitable[None]],
                 hand_off: Callable[[StageTwoPlan], Awaitable[None]],
                 dead_letter_record: DeadLetterRecord,
                 ttl_ms: int = 0, sweep_budget: int = 2000, failpoints: FailPoints | None = None,
                 clock_ms: Callable[[], int] = lambda: int(time.time() * 1000)) -> None:
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
        self._clock_ms = clock_ms
        # uids of this batch's alerts that the row sink refused (dead-lettered): their identities
        # keep their old state, so the alert replayed from the DLQ after a fix is stored, not
        # taken for a duplicate of itself. Filled by the sink's dead-letter callback.
        self.rejected: set[str] = set()
        self._swept_at: dict[int, int] = {}

    async def process(self, records: list[PackedRecord]) -> StageTwoPlan:
        """One batch, durable when this returns (see the module's docstring); raises otherwise."""
        self.rejected.clear()
        plan = plan_batch(records, self._store.get, self._rules,
                          refresh_after_ms=self._ttl_ms // 2 or None, lane=self.lane)
        async with asyncio.TaskGroup() as durable:  # one failure cancels the others
            durable.create_task(self._write_rows(plan.batch))
            durable.create_task(self._hand_off(plan))
            for record, why in plan.undecodable:
                raw = RawRecord(self.topic, record.partition, record.offset, 0, None, record.value, {})
                durable.create_task(self._dead_letter_record(raw, reason="undecodable", detail=why))
        self._failpoints.hit("dedup.state")
        await self._store.checkpoint(self._state_changes(plan, records))
        return plan

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
                    if key not in changes:  # seen in this batch: alive
                        changes[key] = (None, partition)
                        expired += 1
            DEDUP_EXPIRED.inc(expired)
        return changes
