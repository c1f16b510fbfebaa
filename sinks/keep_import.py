"""Import Keep's alert history into alertstream's tables: `alert`, `lastalert`, `alertraw`.

`alertstream migrate-from-keep --keep-url postgresql://...` (sinks/cli.py) reads Keep's three tables
in one read-only, repeatable-read transaction (a consistent snapshot while Keep keeps running),
with server-side cursors, and writes alertstream's tables in batches, idempotently:

- Keep `alert` → `alert`: the `event` JSON (Keep's AlertDto dict) goes through the generic
  normalizer (the same code as `POST /alerts/event` bodies); Keep's bookkeeping keys are dropped
  (`KEEP_INTERNAL_KEYS`); the row keeps Keep's id, timestamp, fingerprint and provider type, and
  gets alertstream's content hash (the tenant's dedup rule). Rows older than the retention cutoff
  are not imported (they would be dropped at the next maintenance run) unless asked. An event
  that cannot be converted is not lost: it goes to `alert_raw` with `error` saying why.
- Keep `lastalert` (+ its alert) → `last_alert`, with received_count = the number of Keep alert
  rows of the identity (Keep does not count duplicates: a lower bound) and src_position -1. A row
  alertstream has already written (src_position >= 0) is never overwritten; an imported row is
  refreshed when Keep's is newer, so a re-run catches up with a Keep that is still running.
- Keep `alertraw` → `alert_raw` (error rows keep their message in `error`).

Ids come from Keep's rows and every write is INSERT ... ON CONFLICT, so a second run adds nothing.
Daily partitions for the imported days are created first, so rows go straight to their day.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

import asyncpg
import orjson

from schemas.alert import Alert, NormalizedAlert
from schemas.normalizers import InvalidPayload, NormalizeContext, normalize
from schemas.rules import DEFAULT_RULES, RuleSet
from sinks.maintenance import DDL_LOCK_TIMEOUT_MS, LOCK_PARTITIONS, ensure_partition, partitions_of
from sinks.postgres import _ALERT_COLUMNS, _CREATE_STAGING, _INSERT_ALERTS, _INSERT_RAW, alert_rows
from sinks.raw_storage import RAW_COLUMNS

log = logging.getLogger(__name__)

KEEP_SINGLE_TENANT = "keep"  # Keep's tenant id when it runs single-tenant

# Keys Keep's AlertDto adds for its own bookkeeping: not the alert's content (and several change
# without the alert changing). Dropped on import; everything else unknown goes to `extra`.
KEEP_INTERNAL_KEYS = frozenset({
    "isFullDuplicate", "isPartialDuplicate", "duplicateReason", "isDuplicate", "apiKeyRef", "pushed",
    "event_id", "deleted", "dismissed", "dismissUntil", "assignee", "note", "enriched_fields",
    "isNoisy", "startedAt", "firingCounter", "unresolvedCounter", "incident", "incidents",
    "providerType", "alert_hash", "trace_id", "tenantId",
})

# Keep's tables as Keep 0.54 creates them on PostgreSQL (SQLModel: str → varchar, datetime →
# timestamp without time zone, UUID → uuid, dict → json), with their indexes (docs KEEP.md). Used
# by the tests' Keep-shaped fixture and by the size benchmark.
KEEP_SCHEMA_SQL = """
CREATE TABLE tenant (id varchar PRIMARY KEY, name varchar NOT NULL);
CREATE TABLE alert (
    id uuid PRIMARY KEY,
    tenant_id varchar NOT NULL REFERENCES tenant (id),
    timestamp timestamp NOT NULL,
    provider_type varchar NOT NULL,
    provider_id varchar,
    event json,
    fingerprint varchar NOT NULL,
    alert_hash varchar
);
CREATE INDEX ix_alert_timestamp ON alert (timestamp);
CREATE INDEX ix_alert_fingerprint ON alert (fingerprint);
CREATE INDEX ix_alert_tenant_fingerprint_timestamp ON alert (tenant_id, fingerprint, timestamp);
CREATE INDEX idx_fingerprint_timestamp ON alert (fingerprint, timestamp);
CREATE INDEX idx_alert_tenant_timestamp_fingerprint ON alert (tenant_id, timestamp, fingerprint);
CREATE INDEX idx_alert_tenant_provider ON alert (tenant_id, provider_id);
CREATE TABLE lastalert (
    tenant_id varchar NOT NULL REFERENCES tenant (id),
    fingerprint varchar NOT NULL,
    alert_id uuid NOT NULL REFERENCES alert (id),
    timestamp timestamp NOT NULL,
    first_timestamp timestamp NOT NULL,
    alert_hash varchar,
    PRIMARY KEY (tenant_id, fingerprint)
);
CREATE INDEX ix_lastalert_alert_hash ON lastalert (alert_hash);
CREATE INDEX idx_lastalert_tenant_timestamp ON lastalert (tenant_id, first_timestamp);
CREATE INDEX idx_lastalert_tenant_timestamp_new ON lastalert (tenant_id, timestamp);
CREATE INDEX idx_lastalert_tenant_ordering ON lastalert (tenant_id, first_timestamp, alert_id, fingerprint);
CREATE TABLE alertraw (
    id uuid PRIMARY KEY,
    tenant_id varchar NOT NULL REFERENCES tenant (id),
    raw_alert json,
    timestamp timestamp NOT NULL,
    provider_type varchar,
    error boolean NOT NULL DEFAULT false,
    error_message varchar,
    dismissed boolean NOT NULL DEFAULT false,
    dismissed_at timestamp,
    dismissed_by varchar
);
CREATE INDEX ix_alertraw_tenant_id ON alertraw (tenant_id);
CREATE INDEX ix_alertraw_error ON alertraw (error);
CREATE INDEX idx_alertraw_tenant_error ON alertraw (tenant_id, error);
CREATE INDEX idx_alertraw_tenant_timestamp ON alertraw (tenant_id, timestamp);
"""

_LAST_COLUMNS = (
    "tenant", "fingerprint", "alert_id", "name", "status", "severity", "provider_type", "content_hash",
    "first_received", "last_received", "received_count", "src_partition", "src_position",
)
_CREATE_LAST_STAGE = "CREATE TEMP TABLE IF NOT EXISTS last_alert_import (LIKE last_alert) ON COMMIT DELETE ROWS"
# Key order (no deadlock with the sinks); a row alertstream wrote itself (src_position >= 0) is kept.
_UPSERT_LAST = f"""
INSERT INTO last_alert ({", ".join(_LAST_COLUMNS)})
SELECT {", ".join(_LAST_COLUMNS)} FROM last_alert_import ORDER BY tenant, fingerprint
ON CONFLICT (tenant, fingerprint) DO UPDATE SET
    alert_id = EXCLUDED.alert_id, name = EXCLUDED.name, status = EXCLUDED.status, severity = EXCLUDED.severity,
    provider_type = EXCLUDED.provider_type, content_hash = EXCLUDED.content_hash,
    first_received = LEAST(last_alert.first_received, EXCLUDED.first_received),
    last_received = EXCLUDED.last_received, received_count = EXCLUDED.received_count
WHERE last_alert.src_position = -1 AND EXCLUDED.last_received > last_alert.last_received
"""

_KEEP_ALERTS = """
SELECT id, tenant_id, timestamp, provider_type, provider_id, event::text AS event, fingerprint
FROM alert WHERE timestamp >= $1
"""
_KEEP_LAST = """
SELECT la.tenant_id, la.fingerprint, la.alert_id, la.timestamp, la.first_timestamp,
       a.event::text AS event, a.provider_type, a.provider_id, a.timestamp AS alert_timestamp,
       (SELECT count(*) FROM alert c WHERE c.tenant_id = la.tenant_id AND c.fingerprint = la.fingerprint) AS sightings
FROM lastalert la JOIN alert a ON a.id = la.alert_id
"""
_KEEP_RAW = """
SELECT id, tenant_id, timestamp, provider_type, raw_alert::text AS raw_alert, error, error_message
FROM alertraw WHERE timestamp >= $1
"""
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@dataclass
class ImportReport:
    alerts_read: int = 0
    alerts_written: int = 0  # new rows; a re-run writes 0
    alerts_failed: int = 0  # not convertible: recorded in alert_raw with the reason
    last_alerts_read: int = 0
    last_alerts_written: int = 0  # inserted or refreshed
    last_alerts_failed: int = 0
    raw_read: int = 0
    raw_written: int = 0
    partitions_created: int = 0

    def summary(self) -> str:
        return (f"alert: {self.alerts_read} read, {self.alerts_written} written, {self.alerts_failed} not convertible "
                f"(kept in alert_raw); last_alert: {self.last_alerts_read} read, {self.last_alerts_written} written, "
                f"{self.last_alerts_failed} not convertible; alert_raw: {self.raw_read} read, {self.raw_written} written; "
                f"{self.partitions_created} partitions created")


def _utc(ts: datetime) -> datetime:
    """Keep's columns are `timestamp without time zone` holding UTC."""
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def _ms(ts: datetime) -> int:
    return (_utc(ts) - _EPOCH) // timedelta(milliseconds=1)


def keep_event_to_alert(event: str | bytes | dict[str, Any] | None, *, tenant: str, provider_type: str,
                        provider_id: str | None, fingerprint: str, received_at: datetime) -> Alert:
    """One Keep `alert.event` → the canonical alert; raises InvalidPayload when it cannot be."""
    if event is None:
        raise InvalidPayload("empty", "the Keep alert has no event")
    document = orjson.loads(event) if isinstance(event, (str, bytes)) else event
    if not isinstance(document, dict):
        raise InvalidPayload("invalid_shape", f"event must be a JSON object, got {type(document).__name__}")
    document = {k: v for k, v in document.items() if k not in KEEP_INTERNAL_KEYS}
    stamp = _utc(received_at).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    (alert,) = normalize("keep", orjson.dumps(document), NormalizeContext(tenant=tenant, received_at=stamp,
                                                                       provider_id=provider_id))
    alert.provider_type = provider_type or "keep"
    alert.fingerprint = fingerprint  # Keep's identity, verbatim: last_alert and history stay joined
    if provider_id and not alert.provider_id:
        alert.provider_id = provider_id
    return alert


class _Target:
    """alertstream's side: staging tables, partitions for the imported days, batched writes."""

    def __init__(self, conn: asyncpg.Connection, report: ImportReport) -> None:
        self.conn = conn
        self.report = report
        self._days: dict[str, set[date]] = {}

    async def start(self) -> None:
        await self.conn.execute(_CREATE_STAGING)
        await self.conn.execute(_CREATE_LAST_STAGE)
        for table in ("alert", "alert_raw"):
            self._days[table] = set((await partitions_of(self.conn, table)).keys())

    async def ensure_days(self, table: str, stamps: list[datetime]) -> None:
        missing = {s.date() for s in stamps} - self._days[table]
        if not missing:
            return
        # the blocking form of the maintenance job's lock: the job skips its run meanwhile
        await self.conn.execute("SELECT pg_advisory_lock($1)", LOCK_PARTITIONS)
        try:
            for day in sorted(missing):
                if await ensure_partition(self.conn, table, day, lock_timeout_ms=max(DDL_LOCK_TIMEOUT_MS, 60_000)) is not None:
                    self.report.partitions_created += 1
                self._days[table].add(day)
        finally:
            await self.conn.execute("SELECT pg_advisory_unlock($1)", LOCK_PARTITIONS)

    async def write_alerts(self, rows: list[tuple]) -> int:
        if not rows:
            return 0
        await self.ensure_days("alert", [r[1] for r in rows])
        async with self.conn.transaction():
            await self.conn.copy_records_to_table("alert_stage", records=rows, columns=_ALERT_COLUMNS)
            status = await self.conn.execute(_INSERT_ALERTS)
        return int(status.split()[-1])

    async def write_raw(self, rows: list[tuple]) -> int:
        if not rows:
            return 0
        await self.ensure_days("alert_raw", [r[1] for r in rows])
        async with self.conn.transaction():
            await self.conn.copy_records_to_table("alert_raw_stage", records=rows, columns=RAW_COLUMNS)
            status = await self.conn.execute(_INSERT_RAW)
        return int(status.split()[-1])

    async def write_last(self, rows: list[tuple]) -> int:
        if not rows:
            return 0
        async with self.conn.transaction():
            await self.conn.copy_records_to_table("last_alert_import", records=rows, columns=_LAST_COLUMNS)
            status = await self.conn.execute(_UPSERT_LAST)
        return int(status.split()[-1])


async def import_from_keep(keep_dsn: str, target_dsn: str, *, default_tenant: str = "default",
                           tenant_map: dict[str, str] | None = None, rules: RuleSet = DEFAULT_RULES,
                           since: datetime | None = None, include_raw: bool = True, batch: int = 5000,
                           keep_schema: str | None = None) -> ImportReport:
    """Copy Keep's tables at `keep_dsn` into alertstream's at `target_dsn` (migrated); see the module doc.

    `tenant_map` maps Keep tenant ids to alertstream tenants; Keep's single-tenant id `keep`
    maps to `default_tenant` unless mapped otherwise; other ids are kept. `since`: only Keep
    `alert` and `alertraw` rows from then on (None: all).
    """
    tenants = {KEEP_SINGLE_TENANT: default_tenant, **(tenant_map or {})}
    since_naive = (_utc(since) if since else datetime(1, 1, 1, tzinfo=timezone.utc)).replace(tzinfo=None)
    report = ImportReport()
    settings = {"search_path": keep_schema} if keep_schema else None
    keep = await asyncpg.connect(keep_dsn, server_settings=settings)
    target = await asyncpg.connect(target_dsn)
    try:
        out = _Target(target, report)
        await out.start()
        async with keep.transaction(isolation="repeatable_read", readonly=True):
            await _import_alerts(keep, out, report, tenants, rules, since_naive, batch)
            await _import_last(keep, out, report, tenants, rules, batch)
            if include_raw:
                await _import_raw(keep, out, report, tenants, since_naive, batch)
    finally:
        await keep.close()
        await target.close()
    log.info("keep import: %s", report.summary())
    return report


def _error_row(row_id: uuid.UUID, received_at: datetime, tenant: str, provider_type: str | None, source: str,
               raw: str | None, exc: Exception) -> tuple:
    reason = f"{exc.reason}: {exc.detail}" if isinstance(exc, InvalidPayload) else f"{type(exc).__name__}: {exc}"
    return (row_id, _utc(received_at), tenant, provider_type or "keep", source,
            raw.encode() if raw is not None else None, f"keep_import {reason}".replace("\x00", "\ufffd"))


async def _import_alerts(keep: asyncpg.Connection, out: _Target, report: ImportReport, tenants: dict[str, str],
                         rules: RuleSet, since: datetime, batch: int) -> None:
    cursor = await keep.cursor(_KEEP_ALERTS, since)
    while rows := await cursor.fetch(batch):
        report.alerts_read += len(rows)
        good: list[NormalizedAlert] = []
        failed: list[tuple] = []
        for r in rows:
            tenant = tenants.get(r["tenant_id"], r["tenant_id"])
            try:
                alert = keep_event_to_alert(r["event"], tenant=tenant, provider_type=r["provider_type"],
                                            provider_id=r["provider_id"], fingerprint=r["fingerprint"],
                                            received_at=r["timestamp"])
            except (InvalidPayload, orjson.JSONDecodeError, ValueError) as exc:
                failed.append(_error_row(r["id"], r["timestamp"], tenant, r["provider_type"], "keep:alert", r["event"], exc))
                continue
            chash = rules.for_(tenant, alert.provider_type).content_hash(alert)
            good.append(NormalizedAlert(str(r["id"]), _ms(r["timestamp"]), chash, alert))
        report.alerts_written += await out.write_alerts(alert_rows(good))
        report.alerts_failed += len(failed)
        await out.write_raw(failed)


async def _import_last(keep: asyncpg.Connection, out: _Target, report: ImportReport, tenants: dict[str, str],
                       rules: RuleSet, batch: int) -> None:
    cursor = await keep.cursor(_KEEP_LAST)
    while rows := await cursor.fetch(batch):
        report.last_alerts_read += len(rows)
        converted = []
        for r in rows:
            tenant = tenants.get(r["tenant_id"], r["tenant_id"])
            try:
                alert = keep_event_to_alert(r["event"], tenant=tenant, provider_type=r["provider_type"],
                                            provider_id=r["provider_id"], fingerprint=r["fingerprint"],
                                            received_at=r["alert_timestamp"])
            except (InvalidPayload, orjson.JSONDecodeError, ValueError):
                report.last_alerts_failed += 1
                continue
            converted.append((
                tenant, r["fingerprint"], r["alert_id"], alert.name, alert.status, alert.severity, alert.provider_type,
                rules.for_(tenant, alert.provider_type).content_hash(alert),
                _utc(r["first_timestamp"]), _utc(r["timestamp"]), max(1, r["sightings"]), -1, -1,
            ))
        # two Keep tenants mapped to one alertstream tenant can collide: the newest wins
        unique: dict[tuple[str, str], tuple] = {}
        for row in converted:
            key = (row[0], row[1])
            if key not in unique or row[9] > unique[key][9]:
                unique[key] = row
        report.last_alerts_written += await out.write_last(list(unique.values()))


async def _import_raw(keep: asyncpg.Connection, out: _Target, report: ImportReport, tenants: dict[str, str],
                      since: datetime, batch: int) -> None:
    cursor = await keep.cursor(_KEEP_RAW, since)
    while rows := await cursor.fetch(batch):
        report.raw_read += len(rows)
        converted = [
            (r["id"], _utc(r["timestamp"]), tenants.get(r["tenant_id"], r["tenant_id"]), r["provider_type"] or "keep",
             "keep:alertraw", r["raw_alert"].encode() if r["raw_alert"] is not None else None,
             ((r["error_message"] or "error").replace("\x00", "\ufffd")) if r["error"] else None)
            for r in rows
        ]
        report.raw_written += await out.write_raw(converted)
