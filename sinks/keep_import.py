"""Import Keep's alert history into alertstream's tables: `alert`, `lastalert`, `alertraw`.

`alertstream migrate-from-keep --keep-url postgresql://...` (sinks/cli.py) reads Keep's three tables
in one read-only, repeatable-read transaction (a consistent snapshot while Keep keeps running),
with server-side cursors, and writes alertstream's tables in batches, idempotently:

- Keep `alert` → `alert`: the `event` JSON (Keep's AlertDto dict) goes through the generic
  normalizer (the same code as `POST /alerts/event` bodies); Keep's bookkeeping keys are dropped
  (`KEEP_INTERNAL_KEYS`); the row keeps Keep's id, timestamp and provider type, gets alertstream's
  fingerprint (`alertstream_fingerprint`, below) and alertstream's content hash (the tenant's
  dedup rule). Rows older than the retention cutoff are not imported (they would be dropped at the
  next maintenance run) unless asked. An event that cannot be converted is not lost: it goes to
  `alert_raw` with `error` saying why.
- Keep `lastalert` (+ its alert) → `last_alert`, keyed by the alertstream fingerprint of its alert,
  with received_count = the number of Keep alert rows of the identity (Keep does not count
  duplicates: a lower bound) and no source marks. A row alertstream has already counted a sighting
  of (`source_marks` not empty) is never overwritten; an imported row is refreshed when Keep's is newer, so a
  re-run catches up with a Keep that is still running.
- Keep `alertraw` → `alert_raw` (error rows keep their message in `error`).

Ids come from Keep's rows and every write is INSERT ... ON CONFLICT, so a second run adds nothing.
Daily partitions for the imported days are created first, so rows go straight to their day.

Continuity (the identities): the provider's next webhook, normalized by alertstream, must land on
the identity imported from Keep, not beside it. Where alertstream's fingerprint rule gives Keep's
value (Prometheus, Datadog, Sentry's plugin, Grafana with the alert's fingerprint, Keep's generic
body), Keep's fingerprint is kept. Where alertstream keys an alert differently on purpose (Zabbix:
trigger id + host, not the name; CloudWatch: name + account + region; PagerDuty v3: the incident
id, not sha256(title); a Sentry issue alert: the issue id; Grafana without a fingerprint: the
canonical labels), the import re-fingerprints: alertstream's rule applied to the fields Keep's
stored event still carries (Keep's formatters spread the payload into the AlertDto). So the choice
is re-fingerprinting at import, not a mapping consulted at ingest: the worker's hot path stays as
it is, and one identity has one key in every table. Keep's own fingerprint stays on the imported
alert as `extra.keepFingerprint` when it changed, to find an identity by its old key. A Keep
identity that merged several alertstream identities (one Zabbix trigger name on several hosts)
splits into them: each gets its own `last_alert` row, from its newest imported alert. Only a
fingerprint Keep's default rule produced is recomputed; a Keep custom dedup rule's fingerprint, or
a fingerprint the sender set, is kept verbatim (alertstream cannot tell which fields made it).
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

import asyncpg
import orjson

from core.errors import DEFAULT_PROVIDER
from schemas.alert import Alert, NormalizedAlert
from schemas.fingerprint import sha256_hex
from schemas.normalizers import InvalidPayload, NormalizeContext, cloudwatch, datadog, grafana, normalize, sentry, zabbix
from schemas.normalizers.base import string_map
from schemas.rules import DEFAULT_RULES, RuleSet
from sinks.maintenance import DDL_LOCK_TIMEOUT_MS, LOCK_PARTITIONS, ensure_partition, partitions_of
from sinks.postgres import ALERT_COLUMNS, CREATE_STAGING, INSERT_ALERTS, alert_rows
from sinks.raw_storage import CREATE_RAW_STAGING, INSERT_RAW, RAW_COLUMNS

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
    "first_received", "last_received", "received_count", "source_marks",
)
_CREATE_LAST_STAGE = "CREATE TEMP TABLE IF NOT EXISTS last_alert_import (LIKE last_alert) ON COMMIT DELETE ROWS"
# Key order (no deadlock with the sinks); a row alertstream counted a sighting of (source marks set) is kept.
_UPSERT_LAST = f"""
INSERT INTO last_alert ({", ".join(_LAST_COLUMNS)})
SELECT {", ".join(_LAST_COLUMNS)} FROM last_alert_import ORDER BY tenant, fingerprint
ON CONFLICT (tenant, fingerprint) DO UPDATE SET
    alert_id = EXCLUDED.alert_id, name = EXCLUDED.name, status = EXCLUDED.status, severity = EXCLUDED.severity,
    provider_type = EXCLUDED.provider_type, content_hash = EXCLUDED.content_hash,
    first_received = LEAST(last_alert.first_received, EXCLUDED.first_received),
    last_received = EXCLUDED.last_received, received_count = EXCLUDED.received_count
WHERE last_alert.source_marks = '{{}}'::jsonb AND EXCLUDED.last_received > last_alert.last_received
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
    alerts_refingerprinted: int = 0  # rows whose alertstream fingerprint is not Keep's
    last_alerts_split: int = 0  # identities of a merged Keep identity besides the one its lastalert names

    def summary(self) -> str:
        return (f"alert: {self.alerts_read} read, {self.alerts_written} written, {self.alerts_failed} not convertible "
                f"(kept in alert_raw), {self.alerts_refingerprinted} re-fingerprinted; last_alert: "
                f"{self.last_alerts_read} read, {self.last_alerts_written} written, {self.last_alerts_failed} not "
                f"convertible, {self.last_alerts_split} split off; alert_raw: {self.raw_read} read, "
                f"{self.raw_written} written; {self.partitions_created} partitions created")


@dataclass(slots=True)
class _Seen:
    """The imported alert rows of one re-fingerprinted identity: its newest as a `last_alert` row,
    its first time and how many there were."""

    last: tuple
    first: datetime
    count: int


_Splits = dict[tuple[str, str], _Seen]


def _utc(ts: datetime) -> datetime:
    """Keep's columns are `timestamp without time zone` holding UTC."""
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)


def _ms(ts: datetime) -> int:
    return (_utc(ts) - _EPOCH) // timedelta(milliseconds=1)


def alertstream_fingerprint(provider_type: str | None, event: dict[str, Any], keep_fingerprint: str) -> str:
    """The fingerprint alertstream's normalizer gives the payload this Keep alert came from,
    computed from Keep's stored event (its AlertDto dict): the identity the provider's next
    webhook will have. Keep's fingerprint where the two rules agree (most providers), or where it
    did not come from Keep's default rule for the provider (a custom dedup rule, a fingerprint the
    sender set), or where the stored event lacks what alertstream's rule reads.
    """
    name = event.get("name")
    try:
        if provider_type == "grafana":
            return _grafana_fingerprint(event, keep_fingerprint)
        if not isinstance(name, str) or not name or keep_fingerprint != sha256_hex(name.encode()):
            return keep_fingerprint  # not AlertDto's default sha256(name): not Keep's rule for these providers
        if provider_type == "zabbix":  # Keep: sha256(name); alertstream: trigger id + host
            return zabbix.identity_of(event) or keep_fingerprint
        if provider_type == "cloudwatch":  # Keep: sha256(AlarmName); alertstream: + account + region
            alarm = event if event.get("AlarmName") else {**event, "AlarmName": name}
            return cloudwatch.identity_of(alarm) or keep_fingerprint
        if provider_type == "pagerduty":  # Keep (v3 webhook): sha256(title); alertstream: the incident id
            incident = event.get("id")  # Keep spreads the incident (`event.data`) into its AlertDto
            if event.get("type") == "incident" and isinstance(incident, str) and incident:
                return incident
        if provider_type == "sentry":  # Keep (issue alert, no top-level id): sha256(title); alertstream: the issue id
            url = event.get("url")
            return sentry.issue_id_in_url(url if isinstance(url, str) else None) or sentry.title_identity(name)
    except InvalidPayload:  # a field of an unexpected type: Keep's identity stays
        pass
    return keep_fingerprint


def _grafana_fingerprint(event: dict[str, Any], keep_fingerprint: str) -> str:
    """Keep's GrafanaProvider stored the alert's Grafana fingerprint as `id` and hashed, depending on
    its version, that fingerprint, `labels.fingerprint` or `json.dumps(labels)`; alertstream takes
    the alert's fingerprint, then `labels.fingerprint`, then sha256 of the canonical labels."""
    raw_labels, raw_id = event.get("labels"), event.get("id")
    labels: dict[str, Any] = raw_labels if isinstance(raw_labels, dict) else {}
    alert_fp = raw_id if isinstance(raw_id, str) and raw_id else None
    if alert_fp is not None and _is_uuid(alert_fp):
        alert_fp = None  # AlertDto's own uuid4: Grafana sent no fingerprint
    keep_rules = {alert_fp, labels.get("fingerprint")}
    if labels:
        keep_rules.add(sha256_hex(json.dumps(labels).encode()))
    if keep_fingerprint not in keep_rules - {None}:
        return keep_fingerprint
    return grafana.identity(alert_fp, string_map(labels, "labels"))


def _label_text(value: Any) -> Any:
    if isinstance(value, list) and all(v is None or isinstance(v, (str, int, float, bool)) for v in value):
        return ",".join(str(v) for v in value if v is not None) or None  # None: no label
    if isinstance(value, (list, dict)):
        return orjson.dumps(value).decode()
    return value


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return len(text) == 36


def keep_event_to_alert(event: str | bytes | dict[str, Any] | None, *, tenant: str, provider_type: str,
                        provider_id: str | None, fingerprint: str, received_at: datetime) -> Alert:
    """One Keep `alert.event` → the canonical alert; raises InvalidPayload when it cannot be.

    `fingerprint` is Keep's; the alert gets alertstream's (`alertstream_fingerprint`), with Keep's
    kept in `extra.keepFingerprint` when they differ.
    """
    if event is None:
        raise InvalidPayload("empty", "the Keep alert has no event")
    document = orjson.loads(event) if isinstance(event, (str, bytes)) else event
    if not isinstance(document, dict):
        raise InvalidPayload("invalid_shape", f"event must be a JSON object, got {type(document).__name__}")
    identity = alertstream_fingerprint(provider_type, document, fingerprint)
    document = {k: v for k, v in document.items() if k not in KEEP_INTERNAL_KEYS}
    labels = document.get("labels")
    if isinstance(labels, dict) and any(isinstance(v, (list, dict)) for v in labels.values()):
        # Keep's labels may hold lists and objects (its PagerDuty provider stores `acknowledgers: []`);
        # alertstream's labels are strings: a list of scalars joined with "," (multi-valued labels),
        # anything else as its JSON
        document["labels"] = {k: _label_text(v) for k, v in labels.items()}
    stamp = _utc(received_at).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    (alert,) = normalize(DEFAULT_PROVIDER, orjson.dumps(document), NormalizeContext(tenant=tenant, received_at=stamp,
                                                                       provider_id=provider_id))
    alert.provider_type = provider_type or DEFAULT_PROVIDER
    alert.fingerprint = identity  # the same key for last_alert, history and the provider's next webhook
    if identity != fingerprint:
        alert.extra["keepFingerprint"] = fingerprint
    if provider_type == "datadog":  # Keep named it with the whole title, transition markers included
        name = datadog.title_name(alert.name)
        if name != alert.name:
            alert.extra.setdefault("title", alert.name)
            alert.name = name
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
        await self.conn.execute(CREATE_STAGING)
        await self.conn.execute(CREATE_RAW_STAGING)
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
            await self.conn.copy_records_to_table("alert_stage", records=rows, columns=ALERT_COLUMNS)
            status = await self.conn.execute(INSERT_ALERTS)
        return int(status.split()[-1])

    async def write_raw(self, rows: list[tuple]) -> int:
        if not rows:
            return 0
        await self.ensure_days("alert_raw", [r[1] for r in rows])
        async with self.conn.transaction():
            await self.conn.copy_records_to_table("alert_raw_stage", records=rows, columns=RAW_COLUMNS)
            status = await self.conn.execute(INSERT_RAW)
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
            splits: _Splits = {}
            await _import_alerts(keep, out, report, tenants, rules, since_naive, batch, splits)
            await _import_last(keep, out, report, tenants, rules, batch, splits)
            await _import_splits(out, report, splits, batch)
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
    return (row_id, _utc(received_at), tenant, provider_type or DEFAULT_PROVIDER, source,
            raw.encode() if raw is not None else None, f"keep_import {reason}".replace("\x00", "\ufffd"))


async def _import_alerts(keep: asyncpg.Connection, out: _Target, report: ImportReport, tenants: dict[str, str],
                         rules: RuleSet, since: datetime, batch: int, splits: _Splits) -> None:
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
            if alert.fingerprint != r["fingerprint"]:
                report.alerts_refingerprinted += 1
                _track(splits, r["id"], _utc(r["timestamp"]), alert, chash)
        report.alerts_written += await out.write_alerts(alert_rows(good))
        report.alerts_failed += len(failed)
        await out.write_raw(failed)


def _track(splits: _Splits, row_id: uuid.UUID, received_at: datetime, alert: Alert, chash: str) -> None:
    key = (alert.tenant, alert.fingerprint)
    seen = splits.get(key)
    row = (alert.tenant, alert.fingerprint, row_id, alert.name, alert.status, alert.severity, alert.provider_type,
           chash, received_at, received_at, 1, "{}")
    if seen is None:
        splits[key] = _Seen(row, received_at, 1)
        return
    seen.count += 1
    seen.first = min(seen.first, received_at)
    if received_at >= seen.last[9]:
        seen.last = row


async def _import_last(keep: asyncpg.Connection, out: _Target, report: ImportReport, tenants: dict[str, str],
                       rules: RuleSet, batch: int, splits: _Splits) -> None:
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
            first, count = _utc(r["first_timestamp"]), max(1, r["sightings"])
            # Re-fingerprinted: Keep's count and first time are those of its (maybe merged) identity;
            # the imported rows of this alertstream identity say it better
            seen = splits.pop((tenant, alert.fingerprint), None) if alert.fingerprint != r["fingerprint"] else None
            if seen is not None:
                first, count = seen.first, seen.count
            converted.append((
                tenant, alert.fingerprint, r["alert_id"], alert.name, alert.status, alert.severity, alert.provider_type,
                rules.for_(tenant, alert.provider_type).content_hash(alert),
                first, _utc(r["timestamp"]), count, "{}",
            ))
        # two Keep tenants mapped to one alertstream tenant can collide: the newest wins
        unique: dict[tuple[str, str], tuple] = {}
        for row in converted:
            key = (row[0], row[1])
            if key not in unique or row[9] > unique[key][9]:
                unique[key] = row
        report.last_alerts_written += await out.write_last(list(unique.values()))


async def _import_splits(out: _Target, report: ImportReport, splits: _Splits, batch: int) -> None:
    """The identities a merged Keep identity split into, other than the one its lastalert names:
    each its own `last_alert` row, from its newest imported alert (count: its imported rows)."""
    rows = [(*seen.last[:8], seen.first, seen.last[9], seen.count, "{}") for _, seen in sorted(splits.items())]
    for start in range(0, len(rows), batch):
        written = await out.write_last(rows[start:start + batch])
        report.last_alerts_written += written
        report.last_alerts_split += written
    splits.clear()


async def _import_raw(keep: asyncpg.Connection, out: _Target, report: ImportReport, tenants: dict[str, str],
                      since: datetime, batch: int) -> None:
    cursor = await keep.cursor(_KEEP_RAW, since)
    while rows := await cursor.fetch(batch):
        report.raw_read += len(rows)
        converted = [
            (r["id"], _utc(r["timestamp"]), tenants.get(r["tenant_id"], r["tenant_id"]), r["provider_type"] or DEFAULT_PROVIDER,
             "keep:alertraw", r["raw_alert"].encode() if r["raw_alert"] is not None else None,
             ((r["error_message"] or "error").replace("\x00", "\ufffd")) if r["error"] else None)
            for r in rows
        ]
        report.raw_written += await out.write_raw(converted)
