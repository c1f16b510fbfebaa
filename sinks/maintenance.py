"""Postgres maintenance: daily partitions ahead, retention, and the `last_alert` TTL.

Two jobs, each under its own `pg_try_advisory_lock`, so that with many workers one at a time
runs each and the others skip it (they try again at their next interval):

- partitions (`alert`, `alert_raw`): create the daily partitions (UTC days) from today to
  `pg_partition_premake_days` ahead; move rows that landed in the DEFAULT partition (a day nobody
  had created yet: late, early or imported data) into their own day's partition; drop (or detach)
  the partitions older than the retention and delete the DEFAULT partition's rows that old.
- `last_alert` TTL: delete identities not seen for the TTL, in key order, in batches, skipping
  rows a writer holds (`FOR UPDATE SKIP LOCKED`): it never waits on a sink, so it cannot deadlock
  with one.

DDL runs with a short `lock_timeout`: a partition that cannot be created or dropped now (a long
query holds a lock) is skipped and retried at the next run, instead of queueing the writers behind
the DDL. `alertstream maintain` runs both jobs once; the worker runs `run_maintenance_forever`.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone

import asyncpg

from config.settings import Settings
from core.periodic import run_periodically

log = logging.getLogger(__name__)

LOCK_PARTITIONS = 0x616C65727401  # "alert" + 01; sinks.migrate uses "alert" itself
LOCK_LAST_ALERT_TTL = 0x616C65727402
DDL_LOCK_TIMEOUT_MS = 2000
TTL_BATCH = 5000
_DAY = timedelta(days=1)


@dataclass
class TableReport:
    created: list[str] = field(default_factory=list)
    moved_rows: int = 0  # rows moved out of the DEFAULT partition into their day
    retired: list[str] = field(default_factory=list)  # dropped or detached partitions
    default_rows_deleted: int = 0  # DEFAULT-partition rows older than the retention
    skipped: list[str] = field(default_factory=list)  # DDL that could not get its locks in time


@dataclass
class MaintenanceReport:
    partitions: dict[str, TableReport] | None = None  # None: another worker held the lock
    last_alert_expired: int | None = None  # None: another worker held the lock, or no TTL

    def summary(self) -> str:
        parts = []
        if self.partitions is None:
            parts.append("partitions: skipped (another worker runs it)")
        for table, r in (self.partitions or {}).items():
            parts.append(f"{table}: created {len(r.created)}, moved {r.moved_rows} rows from default, "
                         f"retired {len(r.retired)}, deleted {r.default_rows_deleted} old default rows"
                         + (f", skipped {', '.join(r.skipped)} (locks busy)" if r.skipped else ""))
        parts.append("last_alert TTL: " + ("skipped" if self.last_alert_expired is None else f"{self.last_alert_expired} expired"))
        return "; ".join(parts)


# ------------------------------------------------------------------------------------------ partitions

def partition_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=timezone.utc)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def partitions_of(conn: asyncpg.Connection, table: str) -> dict[date, str]:
    """The daily partitions of `table` (named `<table>_pYYYYMMDD`), by day; DEFAULT excluded."""
    rows = await conn.fetch(
        """SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           WHERE i.inhparent = $1::regclass""", table)
    pattern = re.compile(rf"^{re.escape(table)}_p(\d{{8}})$")
    out = {}
    for r in rows:
        m = pattern.match(r["relname"])
        if m:
            out[datetime.strptime(m.group(1), "%Y%m%d").date()] = r["relname"]
    return out


async def ensure_partition(conn: asyncpg.Connection, table: str, day: date,
                           lock_timeout_ms: int = DDL_LOCK_TIMEOUT_MS) -> int | None:
    """Create the partition of `day`; return the rows moved into it from DEFAULT, None if it existed.

    A partition cannot be created while the DEFAULT partition holds rows of its range, so in one
    transaction: create the day's table alone, move the day's rows from DEFAULT into it, attach it
    (which builds its indexes on the moved rows). Writers are held off meanwhile by an EXCLUSIVE
    lock on the parent alone (reads go on): an INSERT that had already routed a row to DEFAULT
    before the attach would fail its partition check after it, where this way it waits and then
    routes with the new partition. The locks are taken parent first, then DEFAULT, the order of
    every INSERT, so it cannot deadlock with one. Raises LockNotAvailableError after the timeout.
    """
    name, default = partition_name(table, day), f"{table}_default"
    lo, hi = day_start(day), day_start(day + _DAY)
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
        await conn.execute(f"LOCK TABLE ONLY {_q(table)} IN EXCLUSIVE MODE")
        await conn.execute(f"LOCK TABLE {_q(default)} IN ACCESS EXCLUSIVE MODE")
        if day in await partitions_of(conn, table):  # created meanwhile by someone not holding our lock
            return None
        await conn.execute(
            f"CREATE TABLE {_q(name)} (LIKE {_q(table)} INCLUDING DEFAULTS INCLUDING COMPRESSION INCLUDING STORAGE)")
        status = await conn.execute(
            f"WITH moved AS (DELETE FROM {_q(default)} WHERE received_at >= $1 AND received_at < $2 RETURNING *)"
            f" INSERT INTO {_q(name)} SELECT * FROM moved", lo, hi)
        await conn.execute(
            f"ALTER TABLE {_q(table)} ATTACH PARTITION {_q(name)}"
            f" FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')")
    moved = int(status.split()[-1])
    log.info("created partition %s (%d rows moved from %s)", name, moved, default)
    return moved


async def retire_partition(conn: asyncpg.Connection, table: str, name: str, action: str,
                           lock_timeout_ms: int = DDL_LOCK_TIMEOUT_MS) -> None:
    """Drop an expired partition, or detach it and rename it `<name>_detached` (to archive it)."""
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")
        if action == "detach":
            await conn.execute(f"ALTER TABLE {_q(table)} DETACH PARTITION {_q(name)}")
            await conn.execute(f"ALTER TABLE {_q(name)} RENAME TO {_q(name + '_detached')}")
        else:
            await conn.execute(f"DROP TABLE {_q(name)}")
    log.info("%s partition %s (retention)", "detached" if action == "detach" else "dropped", name)


async def manage_partitions(conn: asyncpg.Connection, *, premake_days: int, retention_days: dict[str, int],
                            action: str = "drop", now: datetime | None = None,
                            lock_timeout_ms: int = DDL_LOCK_TIMEOUT_MS,
                            retire_only: dict[str, set[date]] | None = None) -> dict[str, TableReport]:
    """One pass of the partition job over `retention_days`' tables (0 days: kept forever).

    `retire_only[table]`: retention may retire only these days of that table, and leaves its
    DEFAULT rows alone (the archiver's verified days, when archiving is enabled: sinks/archiver.py)."""
    today = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).date()
    horizon = today + timedelta(days=premake_days)
    reports = {}
    for table, keep_days in retention_days.items():
        report = reports[table] = TableReport()
        cutoff = today - timedelta(days=keep_days) if keep_days else None  # first day kept
        existing = await partitions_of(conn, table)
        wanted = {today + timedelta(days=k) for k in range(premake_days + 1)}
        # days that have rows waiting in DEFAULT get their partition too (within retention and horizon)
        for r in await conn.fetch(
                f"SELECT DISTINCT (received_at AT TIME ZONE 'UTC')::date AS day FROM {_q(table + '_default')}"):
            if (cutoff is None or r["day"] >= cutoff) and r["day"] <= horizon:
                wanted.add(r["day"])
        for day in sorted(wanted - existing.keys()):
            try:
                moved = await ensure_partition(conn, table, day, lock_timeout_ms)
            except asyncpg.LockNotAvailableError:
                report.skipped.append(partition_name(table, day))
                continue
            if moved is not None:
                report.created.append(partition_name(table, day))
                report.moved_rows += moved
        if cutoff is None:
            continue
        allowed = (retire_only or {}).get(table)
        for day, name in sorted(existing.items()):
            if day < cutoff and (allowed is None or day in allowed):
                try:
                    await retire_partition(conn, table, name, action, lock_timeout_ms)
                    report.retired.append(name)
                except asyncpg.LockNotAvailableError:
                    report.skipped.append(name)
        if allowed is not None:
            continue  # the archiver deletes old DEFAULT rows itself, once they are verified in the store
        status = await conn.execute(
            f"DELETE FROM {_q(table + '_default')} WHERE received_at < $1", day_start(cutoff))
        report.default_rows_deleted = int(status.split()[-1])
    return reports


# ------------------------------------------------------------------------------------------ last_alert TTL

_EXPIRE_BATCH = """
WITH doomed AS (
    SELECT tenant, fingerprint FROM last_alert
    WHERE (tenant, fingerprint) > ($1, $2) AND last_received < $3
    ORDER BY tenant, fingerprint
    LIMIT $4
    FOR UPDATE SKIP LOCKED
)
DELETE FROM last_alert la USING doomed d
WHERE la.tenant = d.tenant AND la.fingerprint = d.fingerprint
RETURNING la.tenant, la.fingerprint
"""


async def expire_last_alerts(conn: asyncpg.Connection, *, ttl_s: float, now: datetime | None = None,
                             batch: int = TTL_BATCH) -> int:
    """Delete `last_alert` rows not seen for `ttl_s`; return how many.

    Walks the primary key in order, `batch` rows per transaction. A row a sink holds is skipped
    (it is being refreshed), and a row refreshed since the statement's snapshot is re-checked
    by FOR UPDATE, so a live identity is never deleted.
    """
    cutoff = (now or datetime.now(timezone.utc)) - timedelta(seconds=ttl_s)
    after = ("", "")
    total = 0
    while True:
        rows = await conn.fetch(_EXPIRE_BATCH, after[0], after[1], cutoff, batch)
        total += len(rows)
        if len(rows) < batch:
            return total
        after = max((r["tenant"], r["fingerprint"]) for r in rows)


def effective_last_alert_ttl_s(settings: Settings) -> float:
    """The `last_alert` TTL in force (0: forever): never shorter than the dedup state TTL plus a day.

    A duplicate sighting carries no alert content, so it can update a `last_alert` row but not
    create one: the row must outlive the dedup state that makes its sightings duplicates.
    """
    dedup = settings.dedup_state_ttl_s
    floor = dedup + 86400 if dedup else 0.0
    wanted = settings.pg_last_alert_ttl_days
    if wanted is None:
        return floor
    if wanted == 0 or floor == 0:
        return 0.0
    if wanted * 86400 < floor:
        log.warning("pg_last_alert_ttl_days=%s is shorter than the dedup state TTL plus one day; using %.1f days",
                    wanted, floor / 86400)
    return max(wanted * 86400, floor)


# ------------------------------------------------------------------------------------------ the jobs

async def _locked(conn: asyncpg.Connection, key: int) -> bool:
    return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", key))


async def _unlock(conn: asyncpg.Connection, key: int) -> None:
    await conn.fetchval("SELECT pg_advisory_unlock($1)", key)


async def _archived_days(conn: asyncpg.Connection) -> set[date]:
    rows = await conn.fetch("SELECT day FROM archive_progress WHERE state = 'archived'")
    return {r["day"] for r in rows}


async def run_maintenance_on(conn: asyncpg.Connection, settings: Settings, now: datetime | None = None) -> MaintenanceReport:
    report = MaintenanceReport()
    if await _locked(conn, LOCK_PARTITIONS):
        try:
            report.partitions = await manage_partitions(
                conn, premake_days=settings.pg_partition_premake_days,
                retention_days={"alert": settings.pg_alert_retention_days, "alert_raw": settings.pg_raw_retention_days},
                action=settings.pg_retention_action, now=now,
                # archiving on: never drop a day of `alert` that is not verified archived
                retire_only={"alert": await _archived_days(conn)} if settings.archive_enabled else None)
        finally:
            await _unlock(conn, LOCK_PARTITIONS)
    ttl_s = effective_last_alert_ttl_s(settings)
    if ttl_s and await _locked(conn, LOCK_LAST_ALERT_TTL):
        try:
            report.last_alert_expired = await expire_last_alerts(conn, ttl_s=ttl_s, now=now)
        finally:
            await _unlock(conn, LOCK_LAST_ALERT_TTL)
    return report


async def run_maintenance(settings: Settings, now: datetime | None = None) -> MaintenanceReport:
    """Both jobs once, on a connection of their own (a session-level advisory lock needs one)."""
    conn = await asyncpg.connect(settings.require_database_url())
    try:
        report = await run_maintenance_on(conn, settings, now)
    finally:
        await conn.close()
    log.info("postgres maintenance: %s", report.summary())
    return report


async def run_maintenance_forever(settings: Settings) -> None:
    """The worker's periodic maintenance: at start, then every `pg_maintenance_interval_s` (±10%).

    A failed run (database down, a lock busy) is logged and retried at the next interval; the
    stream never waits on it.
    """
    await run_periodically(lambda: run_maintenance(settings), settings.pg_maintenance_interval_s, "postgres maintenance")
