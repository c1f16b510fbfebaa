"""Partitions, retention and the last_alert TTL against the real Postgres of the local stack.

Each module gets a database of its own on the session's server (migrated), so that moving
clocks and dropping partitions never touches the other tests' rows.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import date, datetime, timedelta, timezone
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from core.records import Sighting, WriteBatch
from schemas.alert import Alert, NormalizedAlert
from sinks.maintenance import (
    LOCK_LAST_ALERT_TTL,
    LOCK_PARTITIONS,
    effective_last_alert_ttl_s,
    ensure_partition,
    expire_last_alerts,
    partitions_of,
    run_maintenance_on,
)
from config.settings import Settings
from sinks.migrate import migrate
from sinks.postgres import PostgresSink

pytestmark = pytest.mark.integration

DAY = date(2026, 3, 10)
NOON = datetime(2026, 3, 10, 12, tzinfo=timezone.utc)


async def fresh_database(dsn: str, prefix: str) -> str:
    """A new, migrated database on the server of `dsn`; its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    parts = urlsplit(dsn)
    url = urlunsplit(parts._replace(path=f"/{name}"))
    await migrate(url)
    return url


@pytest.fixture(scope="module")
async def dsn(stack_env: dict[str, str]) -> str:
    return await fresh_database(stack_env["ALERTSTREAM_DATABASE_URL"], "maint")


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def sink(dsn: str) -> AsyncIterator[PostgresSink]:
    s = PostgresSink(dsn, pool_size=2)
    await s.start()
    yield s
    await s.close()


def settings(dsn: str, **overrides) -> Settings:  # noqa: ANN003
    base = dict(database_url=dsn, pg_partition_premake_days=3, pg_alert_retention_days=30, pg_raw_retention_days=7)
    return Settings(**{**base, **overrides})


def alerts_at(tenant: str, when: datetime, n: int, *, first_position: int = 0) -> WriteBatch:
    """n new identities of `tenant`, received at `when` (+ i ms), each stored."""
    out = WriteBatch()
    ms = int(when.timestamp() * 1000)
    for i in range(n):
        alert = Alert(name=f"a{i}", last_received="2026-03-10T12:00:00.000Z", fingerprint=f"fp-{i}", tenant=tenant)
        item = NormalizedAlert(str(uuid.uuid5(uuid.NAMESPACE_URL, f"{tenant}/{when}/{i}")), ms + i, f"h{i}", alert)
        out.stored.append(item)
        out.sightings.append(Sighting(tenant, f"fp-{i}", ms + i, 0, first_position + i, item, "alerts:0"))
    return out


async def where_rows_are(db: asyncpg.Connection, tenant: str) -> dict[str, int]:
    rows = await db.fetch("SELECT tableoid::regclass::text AS part, count(*) AS n FROM alert WHERE tenant = $1 GROUP BY 1", tenant)
    return {r["part"]: r["n"] for r in rows}


async def test_partitions_are_created_ahead_once_with_compression_settings(dsn: str, db: asyncpg.Connection) -> None:
    report = await run_maintenance_on(db, settings(dsn), now=NOON)
    expected = {DAY + timedelta(days=k) for k in range(4)}  # today and 3 ahead
    for table in ("alert", "alert_raw"):
        assert expected <= set((await partitions_of(db, table)).keys())
        assert {f"{table}_p{d:%Y%m%d}" for d in expected} <= set(report.partitions[table].created)
    again = await run_maintenance_on(db, settings(dsn), now=NOON)
    assert all(not r.created and not r.skipped for r in again.partitions.values())

    # every partition compresses its event like the parent (lz4 where the server has it)
    parent = await db.fetchval("SELECT attcompression FROM pg_attribute WHERE attrelid = 'alert'::regclass AND attname = 'event'")
    rows = await db.fetch("""SELECT c.relname, a.attcompression FROM pg_inherits i
                             JOIN pg_class c ON c.oid = i.inhrelid
                             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'event'
                             WHERE i.inhparent = 'alert'::regclass""")
    assert len(rows) >= 5 and {r["attcompression"] for r in rows} == {parent}


async def test_rows_in_default_move_to_their_new_partition_and_replays_still_add_nothing(
        dsn: str, db: asyncpg.Connection, sink: PostgresSink) -> None:
    tenant = f"late-{uuid.uuid4().hex[:6]}"
    old_day = datetime(2026, 3, 1, 8, tzinfo=timezone.utc)  # no partition yet: lands in DEFAULT
    batch = alerts_at(tenant, old_day, 50)
    await sink.write(batch)
    assert await where_rows_are(db, tenant) == {"alert_default": 50}

    report = await run_maintenance_on(db, settings(dsn), now=NOON)  # 2026-03-01 is within the 30 days
    assert "alert_p20260301" in report.partitions["alert"].created
    assert report.partitions["alert"].moved_rows >= 50
    assert await where_rows_are(db, tenant) == {"alert_p20260301": 50}

    await sink.write(batch)  # a replay after the move: same ids, same day, nothing added
    assert await where_rows_are(db, tenant) == {"alert_p20260301": 50}
    counts = {r["received_count"] for r in await db.fetch("SELECT received_count FROM last_alert WHERE tenant = $1", tenant)}
    assert counts == {1}


async def test_writes_go_on_while_a_partition_is_created_out_of_default(
        dsn: str, db: asyncpg.Connection, sink: PostgresSink) -> None:
    """Writers hitting the very day being moved out of DEFAULT wait for it briefly; nothing is lost or doubled."""
    tenant = f"busy-{uuid.uuid4().hex[:6]}"
    day = datetime(2026, 3, 2, 9, tzinfo=timezone.utc)
    await sink.write(alerts_at(tenant, day, 2000))
    batches = [alerts_at(tenant, day + timedelta(seconds=10 + r), 100, first_position=10_000 * (r + 1)) for r in range(20)]

    async def writer() -> None:
        for b in batches:
            await sink.write(b)

    async def maintainer() -> bool:
        await asyncio.sleep(0.05)
        return await ensure_partition(db, "alert", day.date(), lock_timeout_ms=30_000) is not None

    _, created = await asyncio.wait_for(asyncio.gather(writer(), maintainer()), timeout=120)
    assert created
    parts = await where_rows_are(db, tenant)
    assert parts == {"alert_p20260302": 2000 + 20 * 100}


async def test_retention_drops_old_partitions_and_old_default_rows(dsn: str, db: asyncpg.Connection, sink: PostgresSink) -> None:
    tenant = f"old-{uuid.uuid4().hex[:6]}"
    await run_maintenance_on(db, settings(dsn), now=NOON)
    await sink.write(alerts_at(tenant, NOON, 10))  # into alert_p20260310
    future_far = datetime(2026, 6, 1, tzinfo=timezone.utc)
    await sink.write(alerts_at(tenant, future_far, 3))  # beyond every horizon: stays in DEFAULT

    later = NOON + timedelta(days=45)  # 2026-04-24: the March days are past 30 days
    report = await run_maintenance_on(db, settings(dsn), now=later)
    retired = set(report.partitions["alert"].retired)
    assert {"alert_p20260310", "alert_p20260311", "alert_p20260312", "alert_p20260313"} <= retired
    assert all(d >= date(2026, 3, 25) for d in (await partitions_of(db, "alert")))
    assert await where_rows_are(db, tenant) == {"alert_default": 3}
    # alert_raw has its own, shorter retention
    assert all(d >= date(2026, 4, 17) for d in (await partitions_of(db, "alert_raw")))

    # a DEFAULT row older than the retention is deleted, not moved
    await sink.write(alerts_at(tenant, later - timedelta(days=40), 4))
    report = await run_maintenance_on(db, settings(dsn), now=later)
    assert report.partitions["alert"].default_rows_deleted == 4
    assert await where_rows_are(db, tenant) == {"alert_default": 3}


async def test_retention_can_detach_instead_of_drop(dsn: str, db: asyncpg.Connection) -> None:
    day = date(2026, 1, 5)
    await ensure_partition(db, "alert", day)
    s = settings(dsn, pg_retention_action="detach")
    report = await run_maintenance_on(db, s, now=datetime(2026, 2, 20, tzinfo=timezone.utc))
    assert "alert_p20260105" in report.partitions["alert"].retired
    assert day not in await partitions_of(db, "alert")
    assert await db.fetchval("SELECT to_regclass('alert_p20260105_detached') IS NOT NULL")


async def test_each_job_runs_in_one_worker_at_a_time(dsn: str, db: asyncpg.Connection) -> None:
    other = await asyncpg.connect(dsn)
    try:
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_PARTITIONS)
        assert await other.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_LAST_ALERT_TTL)
        report = await run_maintenance_on(db, settings(dsn), now=NOON)
        assert report.partitions is None and report.last_alert_expired is None
    finally:
        await other.close()  # the session's locks go with it
    report = await run_maintenance_on(db, settings(dsn), now=NOON)
    assert report.partitions is not None and report.last_alert_expired is not None

    # two workers at once: both finish, the work is done once
    conns = [await asyncpg.connect(dsn) for _ in range(2)]
    try:
        when = datetime(2026, 5, 1, tzinfo=timezone.utc)
        reports = await asyncio.gather(*(run_maintenance_on(c, settings(dsn), now=when) for c in conns))
    finally:
        for c in conns:
            await c.close()
    created = [name for r in reports if r.partitions for name in r.partitions["alert"].created]
    assert len(created) == len(set(created))
    assert date(2026, 5, 4) in await partitions_of(db, "alert")


async def test_last_alert_ttl_deletes_only_silent_identities_and_skips_locked_rows(
        dsn: str, db: asyncpg.Connection, sink: PostgresSink) -> None:
    tenant = f"ttl-{uuid.uuid4().hex[:6]}"
    now = datetime.now(timezone.utc)
    await sink.write(alerts_at(tenant, now - timedelta(days=40), 30))
    fresh = alerts_at(tenant, now - timedelta(days=1), 5)
    for s in fresh.sightings:
        s.fingerprint = s.stored.alert.fingerprint = s.fingerprint + "-fresh"
    await sink.write(fresh)

    holder = await asyncpg.connect(dsn)  # a "sink" holding one stale row
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT 1 FROM last_alert WHERE tenant = $1 AND fingerprint = 'fp-7' FOR UPDATE", tenant)
        expired = await asyncio.wait_for(expire_last_alerts(db, ttl_s=31 * 86400, batch=7), timeout=30)
        await tx.rollback()
    finally:
        await holder.close()
    assert expired >= 29
    left = {r["fingerprint"] for r in await db.fetch("SELECT fingerprint FROM last_alert WHERE tenant = $1", tenant)}
    assert left == {"fp-7"} | {f"fp-{i}-fresh" for i in range(5)}
    assert await expire_last_alerts(db, ttl_s=31 * 86400) >= 1  # the next run takes it


def test_last_alert_ttl_never_undercuts_the_dedup_state() -> None:
    day = 86400.0
    assert effective_last_alert_ttl_s(Settings(dedup_state_ttl_s=30 * day)) == 31 * day
    assert effective_last_alert_ttl_s(Settings(dedup_state_ttl_s=30 * day, pg_last_alert_ttl_days=90)) == 90 * day
    assert effective_last_alert_ttl_s(Settings(dedup_state_ttl_s=30 * day, pg_last_alert_ttl_days=7)) == 31 * day
    assert effective_last_alert_ttl_s(Settings(dedup_state_ttl_s=0, pg_last_alert_ttl_days=7)) == 0
    assert effective_last_alert_ttl_s(Settings(pg_last_alert_ttl_days=0)) == 0


async def test_the_worker_task_runs_at_start_and_stops_when_cancelled(stack_env: dict[str, str]) -> None:
    from sinks.maintenance import run_maintenance_forever

    url = await fresh_database(stack_env["ALERTSTREAM_DATABASE_URL"], "forever")
    task = asyncio.create_task(run_maintenance_forever(settings(url, pg_maintenance_interval_s=3600)))
    conn = await asyncpg.connect(url)
    try:
        today = datetime.now(timezone.utc).date()
        for _ in range(100):
            if today + timedelta(days=3) in await partitions_of(conn, "alert_raw"):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("no partitions made by the worker task")
        assert not task.done()  # sleeping until the next interval
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await conn.close()
