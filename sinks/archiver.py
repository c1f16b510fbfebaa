"""The archiver: moves alerts of UTC days older than `archive_after_days` from Postgres to the
search store, a day at a time, in batches.

Per day, recorded in `archive_progress` (sinks/migrations/0003_archive.sql):

1. copying: rows in keyset order (received_at, id), `archive_batch_size` at a time, bulk-indexed
   with `_id` = the row id (idempotent: a re-run overwrites the same documents); the position is
   saved after each batch, so a run stopped anywhere resumes after the last batch indexed.
2. verifying: the index is refreshed, the day is walked again; each batch's ids are looked up in
   the store (a terms aggregation on `alertId`: exact, distinct), ids not found are indexed once
   more and looked up again, and only the rows found are deleted, in the same transaction that
   saves the position and counts. A row the store keeps refusing stays in Postgres (counted as
   `missing`, with the reason): nothing is deleted that is not in the store.
3. archived: no row of the day is left in Postgres; its partition is dropped. A day whose rows
   are not all archived goes back to copying at the next run.

Runs under a session advisory lock (one archiver at a time across workers): `alertstream
archive` once, or in the worker every `archive_interval_s` when `archive_enabled`. While
archiving is enabled, retention (sinks/maintenance.py) drops only `archived` days.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone

import asyncpg
import msgspec
from elasticsearch import AsyncElasticsearch
from prometheus_client import Counter

from config.settings import Settings
from core.periodic import run_periodically
from core.records import WriteBatch
from schemas.alert import Alert, NormalizedAlert
from sinks.base import CircuitBreaker, Sinks
from sinks.maintenance import DDL_LOCK_TIMEOUT_MS, LOCK_PARTITIONS, day_start, partitions_of, retire_partition
from sinks.search import SearchSink, client_from_settings

log = logging.getLogger(__name__)

LOCK_ARCHIVE = 0x616C65727403  # "alert" + 03, next to the maintenance locks
# a store outage: the write is tried this often (the breaker's backoff between), then the run stops
# and the next one resumes from the checkpoint (the lock is not held through a long outage)
WRITE_ATTEMPTS = 3
_DAY = timedelta(days=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

ARCHIVE_ROWS = Counter(
    "alertstream_archive_rows_total",
    "Alert rows handled by the archiver, by state: copied (indexed), verified (found in the store, deleted from Postgres), missing (not in the store: kept).",
    ["state"],
)
ARCHIVE_DAYS = Counter("alertstream_archive_days_total", "Days the archiver finished, by state: archived, incomplete.", ["state"])


class ArchiveStalled(RuntimeError):
    """The store kept throttling a batch: stop this run, resume from the checkpoint next time."""


@dataclass
class DayReport:
    day: date
    copied: int = 0
    verified: int = 0
    missing: int = 0
    archived: bool = False
    partition_dropped: bool = False


@dataclass
class ArchiveReport:
    locked_out: bool = False  # another process was archiving
    days: list[DayReport] = field(default_factory=list)

    def summary(self) -> str:
        if self.locked_out:
            return "skipped (another process is archiving)"
        if not self.days:
            return "nothing to archive"
        done = sum(d.archived for d in self.days)
        return (f"{len(self.days)} days, {done} archived; rows copied {sum(d.copied for d in self.days)}, "
                f"verified and deleted {sum(d.verified for d in self.days)}, missing {sum(d.missing for d in self.days)}")


def to_ms(ts: datetime) -> int:
    return (ts - _EPOCH) // timedelta(milliseconds=1)  # exact: no float rounding


def row_alert(row: asyncpg.Record) -> NormalizedAlert:
    return NormalizedAlert(str(row["id"]), to_ms(row["received_at"]), row["content_hash"],
                           msgspec.json.decode(row["event"], type=Alert))


_PAGE = """
SELECT id, received_at, content_hash, event FROM alert
WHERE received_at >= $1 AND received_at < $2 AND (received_at, id) > ($3, $4)
ORDER BY received_at, id LIMIT $5
"""
_START = (datetime(1970, 1, 1, tzinfo=timezone.utc), uuid.UUID(int=0))


async def days_to_archive(conn: asyncpg.Connection, cutoff: date) -> list[date]:
    """Days before `cutoff` that have a partition, rows in DEFAULT, or unfinished progress."""
    days = {d for d in (await partitions_of(conn, "alert")) if d < cutoff}
    rows = await conn.fetch(
        "SELECT DISTINCT (received_at AT TIME ZONE 'UTC')::date AS day FROM alert_default WHERE received_at < $1",
        day_start(cutoff))
    days |= {r["day"] for r in rows}
    days |= {r["day"] for r in await conn.fetch(
        "SELECT day FROM archive_progress WHERE state <> 'archived' AND day < $1", cutoff)}
    return sorted(days)


async def _listed_days(conn: asyncpg.Connection, cutoff: date) -> list[date]:
    """The days, listed while the maintenance partition job is held off: it moves DEFAULT rows into
    new partitions, and a day caught between the two lookups would be skipped until the next run."""
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_PARTITIONS)
    try:
        return await days_to_archive(conn, cutoff)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_PARTITIONS)


class Archiver:
    def __init__(self, conn: asyncpg.Connection, sink: SearchSink, client: AsyncElasticsearch, settings: Settings) -> None:
        self.conn, self.sink, self.client, self.settings = conn, sink, client, settings
        self.batch = settings.archive_batch_size
        # the search sink through its circuit breaker, like the indexer's: throttled documents are
        # tried again with the shared backoff; still throttled, the run stops (ArchiveStalled)
        self.circuit = CircuitBreaker(sink, settings.sink_retry, self._refused, retry_later=self._stalled,
                                      throttle_retries=settings.search_throttle_retries, give_up_after=WRITE_ATTEMPTS)
        self._rejected: dict[str, str] = {}

    async def _refused(self, item: NormalizedAlert, reason: str) -> None:
        self._rejected[item.uid] = reason  # it stays in Postgres, not dead-lettered

    async def _stalled(self, batch: WriteBatch, exc: Exception) -> None:
        raise ArchiveStalled(f"{len(batch.stored)} documents still throttled by the search store") from exc

    async def run_day(self, day: date) -> DayReport:
        report = DayReport(day)
        lo, hi = day_start(day), day_start(day + _DAY)
        progress = await self._progress(day, lo, hi)
        if progress["state"] == "archived":  # archived and still empty: only its partition was left (busy last time)
            report.archived, report.partition_dropped = True, await self._drop_partition(day)
            return report
        if progress["state"] == "copying":
            await self._copy(day, lo, hi, progress, report)
            progress = await self._set_state(day, "verifying")
        await self._verify(day, lo, hi, progress, report)
        remaining = await self.conn.fetchval("SELECT count(*) FROM alert WHERE received_at >= $1 AND received_at < $2", lo, hi)
        if remaining:
            await self.conn.execute(
                "UPDATE archive_progress SET state = 'copying', last_received = NULL, last_id = NULL, rows_total = $2,"
                " detail = $3, updated_at = now() WHERE day = $1",
                day, remaining, f"{remaining} rows not verified in the search store; retried at the next run")
            ARCHIVE_DAYS.labels("incomplete").inc()
            log.warning("archive %s: %d rows left in Postgres (not verified in the store)", day, remaining)
            return report
        report.partition_dropped = await self._drop_partition(day)
        await self.conn.execute("UPDATE archive_progress SET state = 'archived', detail = NULL, updated_at = now() WHERE day = $1", day)
        report.archived = True
        ARCHIVE_DAYS.labels("archived").inc()
        return report

    async def _progress(self, day: date, lo: datetime, hi: datetime) -> asyncpg.Record:
        row = await self.conn.fetchrow("SELECT * FROM archive_progress WHERE day = $1", day)
        if row is not None and row["state"] != "archived":
            return row  # resume where the last run stopped
        total = await self.conn.fetchval("SELECT count(*) FROM alert WHERE received_at >= $1 AND received_at < $2", lo, hi)
        if row is not None and total == 0:
            return row
        # new day, or rows of an archived day arrived late (a replay): archive them the same way
        return await self.conn.fetchrow(
            """INSERT INTO archive_progress (day, state, rows_total) VALUES ($1, 'copying', $2)
               ON CONFLICT (day) DO UPDATE SET state = 'copying', last_received = NULL, last_id = NULL,
                   rows_total = $2, copied = 0, verified = 0, missing = 0, updated_at = now()
               RETURNING *""", day, total)

    async def _set_state(self, day: date, state: str) -> asyncpg.Record:
        return await self.conn.fetchrow(
            "UPDATE archive_progress SET state = $2, last_received = NULL, last_id = NULL, updated_at = now()"
            " WHERE day = $1 RETURNING *", day, state)

    async def _pages(self, lo: datetime, hi: datetime, progress: asyncpg.Record):  # noqa: ANN202 - async generator
        after = (progress["last_received"], progress["last_id"]) if progress["last_id"] is not None else _START
        while rows := await self.conn.fetch(_PAGE, lo, hi, after[0], after[1], self.batch):
            yield rows
            after = (rows[-1]["received_at"], rows[-1]["id"])

    async def _copy(self, day: date, lo: datetime, hi: datetime, progress: asyncpg.Record, report: DayReport) -> None:
        async for rows in self._pages(lo, hi, progress):
            items = [row_alert(r) for r in rows]
            rejected = await self._index(items)
            copied = len(items) - len(rejected)
            await self.conn.execute(
                "UPDATE archive_progress SET last_received = $2, last_id = $3, copied = copied + $4, updated_at = now()"
                " WHERE day = $1", day, rows[-1]["received_at"], rows[-1]["id"], copied)
            report.copied += copied
            ARCHIVE_ROWS.labels("copied").inc(copied)

    async def _index(self, items: list[NormalizedAlert]) -> dict[str, str]:
        """Index through the breaker; return the refused ones (uid → reason). Throttled past the
        retries, or the store down past WRITE_ATTEMPTS: raise, the next run resumes."""
        self._rejected = {}
        await self.circuit.write(WriteBatch(stored=items))
        for uid, reason in self._rejected.items():
            log.error("archive: search store refused alert %s: %s (it stays in Postgres)", uid, reason[:300])
        return self._rejected

    async def _present(self, ids: list[str]) -> set[str]:
        response = await self.client.search(
            index=self.settings.search_index, size=0, ignore_unavailable=True,
            query={"terms": {"alertId": ids}},
            aggs={"ids": {"terms": {"field": "alertId", "size": len(ids)}}})
        return {b["key"] for b in response["aggregations"]["ids"]["buckets"]}

    async def _verify(self, day: date, lo: datetime, hi: datetime, progress: asyncpg.Record, report: DayReport) -> None:
        await self.client.indices.refresh(index=self.settings.search_index)
        async for rows in self._pages(lo, hi, progress):
            ids = [str(r["id"]) for r in rows]
            present = await self._present(ids)
            if len(present) < len(ids):  # lost by the store (an in-memory store restarted, an index deleted): index again
                rejected = await self._index([row_alert(r) for r in rows if str(r["id"]) not in present])
                await self.client.indices.refresh(index=self.settings.search_index)
                present = await self._present(ids)
                if rejected:
                    log.warning("archive %s: %d rows refused by the store, kept in Postgres", day, len(rejected))
            found = [r["id"] for r in rows if str(r["id"]) in present]
            missing = len(ids) - len(found)
            async with self.conn.transaction():
                await self.conn.execute(
                    "DELETE FROM alert WHERE received_at >= $1 AND received_at < $2 AND id = ANY($3::uuid[])", lo, hi, found)
                await self.conn.execute(
                    "UPDATE archive_progress SET last_received = $2, last_id = $3, verified = verified + $4,"
                    " missing = missing + $5, updated_at = now() WHERE day = $1",
                    day, rows[-1]["received_at"], rows[-1]["id"], len(found), missing)
            report.verified += len(found)
            report.missing += missing
            ARCHIVE_ROWS.labels("verified").inc(len(found))
            ARCHIVE_ROWS.labels("missing").inc(missing)

    async def _drop_partition(self, day: date) -> bool:
        name = (await partitions_of(self.conn, "alert")).get(day)
        if name is None:
            return False
        try:
            await retire_partition(self.conn, "alert", name, "drop", DDL_LOCK_TIMEOUT_MS)
        except asyncpg.LockNotAvailableError:
            return False  # busy: the day is archived (empty); retention or the next run drops it
        return True


async def archive(settings: Settings, *, older_than_days: int | None = None, now: datetime | None = None) -> ArchiveReport:
    """One archiver run over every day older than the cutoff; under the advisory lock."""
    days_old = older_than_days if older_than_days is not None else settings.archive_after_days
    cutoff = (now or datetime.now(timezone.utc)).astimezone(timezone.utc).date() - timedelta(days=days_old)
    report = ArchiveReport()
    conn = await asyncpg.connect(settings.require_database_url())
    try:
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_ARCHIVE):
            report.locked_out = True
            return report
        client = client_from_settings(settings)
        sink = SearchSink(client, settings.search_index, settings)
        try:
            async with Sinks(sink):
                archiver = Archiver(conn, sink, client, settings)
                for day in await _listed_days(conn, cutoff):
                    report.days.append(await archiver.run_day(day))
        finally:
            await conn.fetchval("SELECT pg_advisory_unlock($1)", LOCK_ARCHIVE)
    finally:
        await conn.close()
    log.info("archive (days before %s): %s", cutoff, report.summary())
    return report


async def run_archiver_forever(settings: Settings) -> None:
    """The worker's periodic archiver: at start, then every `archive_interval_s` (±10%). A failed
    run is logged and resumed from its checkpoint at the next interval."""
    await run_periodically(lambda: archive(settings), settings.archive_interval_s, "archiver run (resumes from its checkpoint)")


# ------------------------------------------------------------------------------------------ CLI

def _cmd_archive(args: argparse.Namespace, settings: Settings) -> int:
    from sinks.migrate import migrate

    async def run() -> ArchiveReport:
        await migrate(settings.require_database_url())
        return await archive(settings, older_than_days=args.older_than_days)

    report = asyncio.run(run())
    for d in report.days:
        print(f"{d.day}  {'archived' if d.archived else 'incomplete':10}  copied {d.copied:>8}  verified+deleted {d.verified:>8}"
              f"  missing {d.missing:>6}{'  partition dropped' if d.partition_dropped else ''}")
    print(f"archive: {report.summary()}", file=sys.stderr)
    return 1 if any(not d.archived for d in report.days) else 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("archive", help="move alerts older than N days from Postgres to the search store (resumable, verified)")
    p.add_argument("--older-than-days", type=int, default=None,
                   help="archive UTC days older than this (default: ALERTSTREAM_ARCHIVE_AFTER_DAYS)")
    p.set_defaults(func=_cmd_archive)
