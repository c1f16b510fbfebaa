"""PostgresSink against the real Postgres of the local stack: idempotent replays,
exact sighting counts, alert switching, and no deadlock between concurrent writers."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from datetime import datetime, timezone

import asyncpg
import pytest

from core.records import Sighting, WriteBatch
from schemas.alert import Alert, NormalizedAlert
from sinks.postgres import PostgresSink

pytestmark = pytest.mark.integration

# An hour ago, on a whole minute: recent, so the worker's maintenance (retention, last_alert TTL)
# running on the same database during the session never expires these rows.
T0 = (int(time.time()) - 3600) // 60 * 60 * 1000


def ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def unique_tenant(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:10]}"


def stored(tenant: str, fingerprint: str, uid: str, *, status: str = "firing", content: str = "h1",
           received: int = T0) -> NormalizedAlert:
    alert = Alert(name=f"alert {fingerprint}", status=status, severity="high", last_received="2025-01-15T10:06:00.000Z",
                  fingerprint=fingerprint, tenant=tenant, provider_type="keep", labels={"content": content})
    return NormalizedAlert(uid, received, content, alert)


def batch(tenant: str, fingerprint: str, positions: Iterable[int], *, partition: int = 0,
          stored_at: dict[int, NormalizedAlert] | None = None, received_base: int = T0) -> WriteBatch:
    """Sightings of one identity at `positions` (received_base + position ms), storing `stored_at[position]`."""
    stored_at = stored_at or {}
    out = WriteBatch()
    for p in positions:
        item = stored_at.get(p)
        if item is not None:
            out.stored.append(item)
        out.sightings.append(Sighting(tenant, fingerprint, received_base + p, partition, p, item, f"alerts:{partition}"))
    return out


def marks(row: asyncpg.Record) -> dict[str, int]:
    return json.loads(row["source_marks"])


def uid() -> str:
    return str(uuid.uuid4())


@pytest.fixture(scope="module")
def dsn(stack_env: dict[str, str]) -> str:
    return stack_env["ALERTSTREAM_DATABASE_URL"]


@pytest.fixture
async def sink(dsn: str) -> AsyncIterator[PostgresSink]:
    s = PostgresSink(dsn, pool_size=2)
    await s.start()
    yield s
    await s.close()


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    yield conn
    await conn.close()


async def last_row(db: asyncpg.Connection, tenant: str, fingerprint: str) -> asyncpg.Record:
    row = await db.fetchrow("SELECT * FROM last_alert WHERE tenant = $1 AND fingerprint = $2", tenant, fingerprint)
    assert row is not None, (tenant, fingerprint)
    return row


async def alert_ids(db: asyncpg.Connection, tenant: str) -> list[uuid.UUID]:
    return [r["id"] for r in await db.fetch("SELECT id FROM alert WHERE tenant = $1 ORDER BY received_at, id", tenant)]


async def snapshot(db: asyncpg.Connection, tenant: str) -> tuple[list, list]:
    alerts = await db.fetch("SELECT * FROM alert WHERE tenant = $1 ORDER BY id", tenant)
    last = await db.fetch("SELECT * FROM last_alert WHERE tenant = $1 ORDER BY fingerprint", tenant)
    return [dict(r) for r in alerts], [dict(r) for r in last]


async def test_writing_a_batch_twice_changes_nothing(sink: PostgresSink, db: asyncpg.Connection) -> None:
    tenant = unique_tenant("replay")
    b = WriteBatch()
    for f in range(5):
        one = batch(tenant, f"fp-{f}", range(f * 10, f * 10 + 4), stored_at={f * 10: stored(tenant, f"fp-{f}", uid())})
        b.stored += one.stored
        b.sightings += one.sightings
    assert await sink.write(b) == 5
    first = await snapshot(db, tenant)
    assert len(first[0]) == 5 and len(first[1]) == 5
    assert {r["received_count"] for r in first[1]} == {4}

    await sink.write(b)
    assert await snapshot(db, tenant) == first


async def test_partial_replay_counts_each_sighting_once(sink: PostgresSink, db: asyncpg.Connection) -> None:
    tenant = unique_tenant("partial")
    first_alert = stored(tenant, "fp", uid())
    await sink.write(batch(tenant, "fp", range(1, 11), stored_at={1: first_alert}))
    row = await last_row(db, tenant, "fp")
    assert row["received_count"] == 10 and marks(row) == {"alerts:0": 10}

    # positions 6..10 again (replayed), 11..15 new; the replayed stored alert at 6 is not taken
    changed_replayed = stored(tenant, "fp", uid(), content="h-replayed", status="resolved")
    await sink.write(batch(tenant, "fp", range(6, 16), stored_at={6: changed_replayed}))
    row = await last_row(db, tenant, "fp")
    assert row["received_count"] == 15
    assert marks(row) == {"alerts:0": 15}
    assert row["last_received"] == ts(T0 + 15) and row["first_received"] == ts(T0 + 1)
    assert row["alert_id"] == uuid.UUID(first_alert.uid) and row["status"] == "firing"

    await sink.write(batch(tenant, "fp", range(1, 16)))  # the whole history again: nothing
    assert (await last_row(db, tenant, "fp"))["received_count"] == 15


async def test_a_sighting_twice_in_one_batch_counts_once(sink: PostgresSink, db: asyncpg.Connection) -> None:
    """After a restart the dedup stage can read a record it never acked and, in the same batch, the
    copy the restarted normalizer sent again: the same sightings twice (found by CI: 25 of 3000
    sightings counted twice after a stop)."""
    tenant = unique_tenant("twice")
    await sink.write(batch(tenant, "fp", [*range(1, 6), *range(1, 6)], stored_at={1: stored(tenant, "fp", uid())}))
    row = await last_row(db, tenant, "fp")
    assert row["received_count"] == 5 and marks(row) == {"alerts:0": 5}


async def test_flows_are_counted_apart(sink: PostgresSink, db: asyncpg.Connection) -> None:
    """An identity seen from two source partitions (and the critical lane): each flow keeps its own
    mark, so low positions of one flow still count after high positions of another, and each
    flow's replay counts nothing."""
    tenant = unique_tenant("flows")
    first = stored(tenant, "fp", uid())

    def sightings(flow: str, positions: range, item: NormalizedAlert | None = None) -> WriteBatch:
        out = WriteBatch(stored=[item] if item else [])
        out.sightings = [Sighting(tenant, "fp", T0 + p, 0, p, item if p == positions[0] else None, flow) for p in positions]
        return out

    await sink.write(sightings("alerts:3", range(100, 105), first))
    await sink.write(sightings("alerts:1", range(1, 4)))
    await sink.write(sightings("alerts:1!", range(1, 3)))
    row = await last_row(db, tenant, "fp")
    assert row["received_count"] == 10
    assert marks(row) == {"alerts:3": 104, "alerts:1": 3, "alerts:1!": 2}
    # every flow sent again after a crash (one batch, interleaved), plus one new sighting in one flow
    replay = WriteBatch()
    for flow, positions in (("alerts:1", range(1, 5)), ("alerts:3", range(100, 105)), ("alerts:1!", range(1, 3))):
        replay.sightings += sightings(flow, positions).sightings
    await sink.write(replay)
    row = await last_row(db, tenant, "fp")
    assert row["received_count"] == 11 and marks(row)["alerts:1"] == 4
    assert row["alert_id"] == uuid.UUID(first.uid)


async def test_duplicate_only_batch_advances_last_received_only(sink: PostgresSink, db: asyncpg.Connection) -> None:
    tenant = unique_tenant("dups")
    item = stored(tenant, "fp", uid())
    await sink.write(batch(tenant, "fp", [1], stored_at={1: item}))
    before = await last_row(db, tenant, "fp")
    assert before["received_count"] == 1 and before["last_received"] == ts(T0 + 1)

    assert await sink.write(batch(tenant, "fp", [2, 3, 4], received_base=T0 + 60_000)) == 0
    after = await last_row(db, tenant, "fp")
    assert after["received_count"] == 4
    assert after["last_received"] == ts(T0 + 60_004)
    assert after["first_received"] == before["first_received"]
    assert after["alert_id"] == before["alert_id"] == uuid.UUID(item.uid)
    assert (after["content_hash"], after["status"]) == (before["content_hash"], before["status"])
    assert await alert_ids(db, tenant) == [uuid.UUID(item.uid)]


async def test_a_changed_alert_switches_the_last_alert(sink: PostgresSink, db: asyncpg.Connection) -> None:
    tenant = unique_tenant("changed")
    firing = stored(tenant, "fp", uid(), content="h-firing")
    await sink.write(batch(tenant, "fp", [1, 2], stored_at={1: firing}))
    resolved = stored(tenant, "fp", uid(), content="h-resolved", status="resolved", received=T0 + 3)
    await sink.write(batch(tenant, "fp", [3, 4], stored_at={3: resolved}))

    row = await last_row(db, tenant, "fp")
    assert row["alert_id"] == uuid.UUID(resolved.uid)
    assert (row["content_hash"], row["status"]) == ("h-resolved", "resolved")
    assert row["received_count"] == 4 and marks(row) == {"alerts:0": 4}
    assert await alert_ids(db, tenant) == [uuid.UUID(firing.uid), uuid.UUID(resolved.uid)]
    event = await db.fetchval("SELECT event FROM alert WHERE id = $1", uuid.UUID(resolved.uid))
    assert '"status": "resolved"' in event or '"status":"resolved"' in event


async def test_two_sinks_overlapping_fingerprints_opposite_orders(dsn: str, db: asyncpg.Connection) -> None:
    """Two workers (two pools) write the same identities at once, one in ascending and one in
    descending key order, from different internal partitions: no deadlock, exact counts."""
    tenant = unique_tenant("concurrent")
    keys = [f"fp-{i:03d}" for i in range(40)]
    rounds, per_key = 20, 2
    sinks = [PostgresSink(dsn, pool_size=2), PostgresSink(dsn, pool_size=2)]
    for s in sinks:
        await s.start()

    def round_batch(worker: int, round_: int) -> WriteBatch:
        out = WriteBatch()
        ordered = keys if worker == 0 else list(reversed(keys))
        for k, key in enumerate(ordered):
            for j in range(per_key):
                position = ((round_ + 1) << 16) | (k * per_key + j)
                item = None
                if j == 0 and (round_ == 0 or round_ % 5 == worker):  # new, then changed now and then
                    item = stored(tenant, key, uid(), content=f"h-{worker}-{round_}", received=T0 + round_)
                    out.stored.append(item)
                out.sightings.append(Sighting(tenant, key, T0 + round_ * 1000 + j, worker, position, item, f"alerts:{worker}"))
        return out

    batches = [[round_batch(w, r) for r in range(rounds)] for w in range(2)]
    try:
        for r in range(rounds):
            await asyncio.wait_for(
                asyncio.gather(sinks[0].write(batches[0][r]), sinks[1].write(batches[1][r])), timeout=60)
    finally:
        for s in sinks:
            await s.close()

    rows = await db.fetch("SELECT fingerprint, received_count, last_received FROM last_alert WHERE tenant = $1", tenant)
    assert len(rows) == len(keys)
    assert {r["received_count"] for r in rows} == {2 * rounds * per_key}
    assert {r["last_received"] for r in rows} == {ts(T0 + (rounds - 1) * 1000 + per_key - 1)}
    expected_alerts = sum(len(b.stored) for w in batches for b in w)
    assert await db.fetchval("SELECT count(*) FROM alert WHERE tenant = $1", tenant) == expected_alerts


async def test_two_sinks_replaying_the_same_alerts_in_opposite_orders(dsn: str, db: asyncpg.Connection) -> None:
    """A zombie worker and the partition's new owner write the same alert rows (same ids, same
    positions), their records interleaved differently: no deadlock, and nothing counted twice."""
    tenant = unique_tenant("zombie")
    keys = [f"fp-{i:03d}" for i in range(150)]
    rounds = 20
    sinks = [PostgresSink(dsn, pool_size=2), PostgresSink(dsn, pool_size=2)]
    for s in sinks:
        await s.start()
    try:
        for r in range(rounds):
            items = [stored(tenant, key, uid(), content=f"h-{r}", received=T0 + r) for key in keys]
            sightings = [Sighting(tenant, key, T0 + r, 0, ((r + 1) << 16) | i, item, "alerts:0")
                         for i, (key, item) in enumerate(zip(keys, items))]
            forward = WriteBatch(stored=list(items), sightings=list(sightings))
            backward = WriteBatch(stored=list(reversed(items)), sightings=list(reversed(sightings)))
            await asyncio.wait_for(asyncio.gather(sinks[0].write(forward), sinks[1].write(backward)), timeout=60)
    finally:
        for s in sinks:
            await s.close()
    assert await db.fetchval("SELECT count(*) FROM alert WHERE tenant = $1", tenant) == rounds * len(keys)
    rows = await db.fetch("SELECT received_count, content_hash FROM last_alert WHERE tenant = $1", tenant)
    assert len(rows) == len(keys)
    assert {(r["received_count"], r["content_hash"]) for r in rows} == {(rounds, f"h-{rounds - 1}")}


async def test_a_sighting_changes_no_indexed_column_of_last_alert(db: asyncpg.Connection) -> None:
    """Each sighting updates its identity's row: with only the key indexed and room on the page, the
    update is heap-only (HOT, migration 0005; measured by benchmarks/last_alert_micro.py, whose own
    test checks the HOT share on a real server)."""
    indexed = {r["attname"] for r in await db.fetch("""
        SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
        WHERE i.indrelid = 'last_alert'::regclass""")}
    assert indexed == {"tenant", "fingerprint"}
    assert "fillfactor=70" in await db.fetchval("SELECT reloptions FROM pg_class WHERE oid = 'last_alert'::regclass")
