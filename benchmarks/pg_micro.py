"""Micro-benchmark of the Postgres store: write paths, CPU, and bytes per stored alert vs Keep.

    .venv/bin/python -m benchmarks.pg_micro [--dsn URL] [--rows 20000] [--batch 1000] [--repeat 3] [--json out.json]
    .venv/bin/python -m benchmarks.pg_micro [--dsn URL] --rows 60000 --explain   # plans of the real queries

`--dsn` defaults to ALERTSTREAM_DATABASE_URL. Everything happens in two scratch schemas that are
dropped at the end. The same alerts (canonical alerts normalized from the load generator's
provider payloads, ~2 KB on the wire) are written:

1. write paths, one transaction per batch, into a daily partition of `alert`:
   - `copy`: the sink's path for stored alerts (COPY into a temp staging table, then
     INSERT ... SELECT ... ON CONFLICT DO NOTHING);
   - `executemany`: one parameterized INSERT ... ON CONFLICT DO NOTHING per row (asyncpg's
     pipelined executemany);
   - `copy, replayed`: the same batches again (every row conflicts: what a replay costs);
   - `sink.write`: the whole sink write of a batch (alert rows + the last_alert upsert of 2
     sightings per stored alert).
   rows/s is wall time; CPU per 1000 rows is this process (building rows, encoding) plus the
   Postgres backend (read from /proc: the server must run on this machine, else it is left out).
2. bytes per stored alert: `alert` (heap + TOAST + each index) against Keep's `alert` table with
   Keep's indexes, holding the same alerts as Keep stores them (AlertDto.dict() as JSON, with
   its bookkeeping keys); `last_alert` against `lastalert` per identity.
   Keep also writes an `alertaudit` row per stored alert (shape and indexes from Keep's model):
   counted on its side as "Keep alert + alertaudit". Its `alertdeduplicationevent` row per
   alert is not counted (its indexes are not documented here): Keep's figure is a lower bound.
3. compression: the same values in plain tables that differ only in the column's compression
   method (none, pglz, lz4 when the server has it): the event column (json) of these alerts and
   the raw payloads (bytea) they came from; and `toast_tuple_target=256` (considered, not used).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import time
import uuid
from datetime import datetime, timedelta, timezone
from importlib import resources
from typing import Any

import asyncpg
import msgspec
import psutil

from benchmarks.payload_factory import PROVIDERS, LoadProfile, PayloadFactory
from core.records import Sighting, WriteBatch
from schemas.alert import Alert, NormalizedAlert
from schemas.normalizers import NormalizeContext, normalize
from schemas.rules import DEFAULT_RULES
from sinks.keep_import import KEEP_SCHEMA_SQL
from sinks.maintenance import ensure_partition
from sinks.migrate import available_migrations
from sinks.postgres import ALERT_COLUMNS, PostgresSink, alert_rows

TOAST_TUPLE_TARGET = 256  # the lowest useful setting; measured, not used (docs/postgres.md)
KEEP_AUDIT_SQL = """
CREATE TABLE alertaudit (
    id uuid PRIMARY KEY, fingerprint varchar NOT NULL, tenant_id varchar NOT NULL REFERENCES tenant (id),
    timestamp timestamp NOT NULL, user_id varchar NOT NULL, action varchar NOT NULL, description text
);
CREATE INDEX ix_alert_audit_tenant_id ON alertaudit (tenant_id);
CREATE INDEX ix_alert_audit_fingerprint ON alertaudit (fingerprint);
CREATE INDEX ix_alert_audit_tenant_id_fingerprint ON alertaudit (tenant_id, fingerprint);
CREATE INDEX ix_alert_audit_timestamp ON alertaudit (timestamp);
"""
_INSERT_ONE = (f"INSERT INTO alert ({', '.join(ALERT_COLUMNS)}) VALUES "
               f"({', '.join(f'${i + 1}' for i in range(len(ALERT_COLUMNS)))}) ON CONFLICT DO NOTHING")


def make_alerts(rows: int, seed: int = 7) -> tuple[list[NormalizedAlert], list[bytes]]:
    """`rows` canonical alerts, received today (one daily partition), and the payloads they came from."""
    profile = LoadProfile(mix={p: 1.0 for p in PROVIDERS}, cardinality=max(1, rows // 80), full_dup_ratio=0.0,
                          partial_dup_ratio=0.8, flap_ratio=0.1, alerts_per_webhook=3, mean_size_bytes=2000, seed=seed)
    factory = PayloadFactory(profile)
    day = datetime.now(timezone.utc).replace(hour=1, minute=0, second=0, microsecond=0)
    base_ms = int(day.timestamp() * 1000)
    out: list[NormalizedAlert] = []
    payloads: list[bytes] = []
    offset = 0
    while len(out) < rows:
        rec = factory.next()
        payloads.append(rec.value)
        ms = base_ms + offset * 20
        ctx = NormalizeContext(tenant="default", received_at=day.strftime("%Y-%m-%dT%H:%M:%S.000Z"))
        for index, alert in enumerate(normalize(rec.provider, rec.value, ctx)):
            chash = DEFAULT_RULES.apply(alert)
            uid = str(uuid.UUID(bytes=hashlib.blake2b(f"bench/{offset}/{index}".encode(), digest_size=16).digest()))
            out.append(NormalizedAlert(uid, ms, chash, alert))
        offset += 1
    return out[:rows], payloads


_KEEP_BOOKKEEPING = {
    "isFullDuplicate": False, "isPartialDuplicate": True, "duplicateReason": None, "apiKeyRef": "webhook",
    "pushed": True, "event_id": None, "deleted": False, "dismissUntil": None, "dismissed": False, "assignee": None,
    "note": None, "enriched_fields": [], "isNoisy": False, "startedAt": None, "firingCounter": 1,
    "unresolvedCounter": 1, "incident": None, "description_format": None,
}


def keep_event(alert: Alert) -> str:
    """The alert as Keep stores it in `alert.event`: AlertDto.dict() (extra fields at the top level,
    Keep's bookkeeping keys included), serialized by SQLAlchemy's JSON type (json.dumps)."""
    doc = msgspec.to_builtins(alert)
    extra = doc.pop("extra")
    doc.pop("tenant", None)
    doc.pop("schemaVersion", None)
    return json.dumps({**doc, **_KEEP_BOOKKEEPING, **extra})


def backend_cpu(pid: int) -> float | None:
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return None


class _Meter:
    """Wall time, this process' CPU and the Postgres backends' CPU over a block."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids

    def __enter__(self) -> _Meter:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        self.server = [backend_cpu(p) for p in self.pids]
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu
        after = [backend_cpu(p) for p in self.pids]
        self.server_cpu = (sum(a - b for a, b in zip(after, self.server))
                           if all(x is not None for x in after + self.server) else None)

    def result(self, rows: int) -> dict[str, Any]:
        per_k = 1000 / rows
        return {"rows": rows, "seconds": round(self.wall, 3), "rows_per_s": round(rows / self.wall),
                "client_cpu_ms_per_1000": round(self.cpu * per_k * 1000, 1),
                "server_cpu_ms_per_1000": None if self.server_cpu is None else round(self.server_cpu * per_k * 1000, 1)}


async def _sizes(conn: asyncpg.Connection, table: str) -> dict[str, int]:
    """heap, toast (+ maps) and each index of `table`, summed over its partitions."""
    parts = [r[0] for r in await conn.fetch("SELECT relid::regclass::text FROM pg_partition_tree($1::regclass) WHERE isleaf", table)]
    parts = parts or [table]
    out: dict[str, int] = {"heap": 0, "toast": 0}
    for part in parts:
        out["heap"] += await conn.fetchval("SELECT pg_relation_size($1::regclass)", part)
        out["toast"] += await conn.fetchval("SELECT pg_table_size($1::regclass) - pg_relation_size($1::regclass)", part)
        for r in await conn.fetch("""SELECT coalesce(p.relname, c.relname) AS name, pg_relation_size(c.oid) AS size
                                     FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
                                     LEFT JOIN pg_inherits h ON h.inhrelid = c.oid LEFT JOIN pg_class p ON p.oid = h.inhparent
                                     WHERE i.indrelid = $1::regclass""", part):
            out[f"index {r['name']}"] = out.get(f"index {r['name']}", 0) + r["size"]
    return out


async def run(dsn: str, rows: int, batch: int, repeat: int = 3) -> dict[str, Any]:
    schema, keep_schema = f"pgmicro_{os.getpid()}", f"pgmicro_keep_{os.getpid()}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f"CREATE SCHEMA {schema}; CREATE SCHEMA {keep_schema}")
    result: dict[str, Any] = {"server": await admin.fetchval("SHOW server_version")}
    try:
        conn = await asyncpg.connect(dsn, server_settings={"search_path": schema})
        keep = await asyncpg.connect(dsn, server_settings={"search_path": keep_schema})
        migration = (resources.files("sinks") / "migrations" / "0001_alerts.sql").read_text()
        await conn.execute(migration)
        await keep.execute(KEEP_SCHEMA_SQL)
        await keep.execute(KEEP_AUDIT_SQL)
        lz4 = await conn.fetchval("SELECT attcompression = 'l' FROM pg_attribute WHERE attrelid = 'alert'::regclass AND attname = 'event'")
        result["lz4"] = lz4

        alerts, payloads = make_alerts(rows)
        batches = [alerts[i:i + batch] for i in range(0, len(alerts), batch)]
        day = datetime.fromtimestamp(alerts[0].received_at_ms / 1000, tz=timezone.utc).date()
        await ensure_partition(conn, "alert", day)
        events = [len(msgspec.json.encode(a.alert)) for a in alerts]
        result["alerts"] = {"rows": rows, "identities": len({a.alert.fingerprint for a in alerts}),
                            "mean_event_json_bytes": round(sum(events) / len(events))}
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        paths: dict[str, Any] = {}

        # best of `repeat` runs of each path (the machine is shared); the COPY table is the one
        # measured for size below
        await conn.execute(_CREATE_STAGING_SQL)

        def best(name: str, m: _Meter) -> None:
            r = m.result(rows)
            if name not in paths or r["rows_per_s"] > paths[name]["rows_per_s"]:
                paths[name] = r

        for _ in range(repeat):
            await conn.execute("TRUNCATE alert")
            with _Meter([pid]) as m:
                for b in batches:
                    async with conn.transaction():
                        await conn.executemany(_INSERT_ONE, alert_rows(b))
            best("executemany", m)
            await conn.execute("TRUNCATE alert")
            with _Meter([pid]) as m:
                for b in batches:
                    async with conn.transaction():
                        await conn.copy_records_to_table("alert_stage", records=alert_rows(b), columns=ALERT_COLUMNS)
                        await conn.execute(_INSERT_STAGED)
            best("copy", m)
            with _Meter([pid]) as m:
                for b in batches:
                    async with conn.transaction():
                        await conn.copy_records_to_table("alert_stage", records=alert_rows(b), columns=ALERT_COLUMNS)
                        await conn.execute(_INSERT_STAGED)
            best("copy, replayed", m)
        assert await conn.fetchval("SELECT count(*) FROM alert") == rows

        # the whole sink write (alerts + last_alert), into a fresh copy of the schema's tables
        await conn.execute("TRUNCATE alert, last_alert")
        sink = PostgresSink(with_search_path(dsn, schema), pool_size=1)
        await sink.start()
        try:
            async with sink._pool.acquire() as c:  # type: ignore[union-attr]
                sink_pid = await c.fetchval("SELECT pg_backend_pid()")
            writes = []
            for n, b in enumerate(batches):
                sightings = [Sighting(a.alert.tenant, a.alert.fingerprint, a.received_at_ms + d, 0,
                                      ((n + 1) << 16) | (2 * i + d), a if d == 0 else None, "alerts:0")
                             for i, a in enumerate(b) for d in (0, 1)]
                writes.append(WriteBatch(stored=list(b), sightings=sightings))
            with _Meter([sink_pid]) as m:
                for w in writes:
                    await sink.write(w)
            paths["sink.write (alert + last_alert)"] = m.result(rows)
        finally:
            await sink.close()
        result["write_paths"] = paths

        # Keep's tables, the same alerts (Keep's event shape)
        await keep.execute("INSERT INTO tenant VALUES ('keep', 'keep')")
        keep_rows = [(uuid.UUID(a.uid), datetime.fromtimestamp(a.received_at_ms / 1000), "keep", a.alert.provider_type,
                      a.alert.provider_id, keep_event(a.alert), a.alert.fingerprint, hashlib.sha256(a.content_hash.encode()).hexdigest())
                     for a in alerts]
        for i in range(0, rows, batch):
            await keep.copy_records_to_table("alert", records=keep_rows[i:i + batch], columns=(
                "id", "timestamp", "tenant_id", "provider_type", "provider_id", "event", "fingerprint", "alert_hash"))
        latest: dict[str, tuple] = {}
        for r in keep_rows:
            latest[r[6]] = r
        first = {}
        for r in reversed(keep_rows):
            first[r[6]] = r[1]
        await keep.copy_records_to_table("lastalert", records=[
            ("keep", fp, r[0], r[1], first[fp], r[7]) for fp, r in sorted(latest.items())],
            columns=("tenant_id", "fingerprint", "alert_id", "timestamp", "first_timestamp", "alert_hash"))
        await keep.copy_records_to_table("alertaudit", records=[
            (uuid.uuid4(), r[6], "keep", r[1], "system", "alert was triggered", f"Alert recieved from provider with status {a.alert.status}")
            for r, a in zip(keep_rows, alerts)],
            columns=("id", "fingerprint", "tenant_id", "timestamp", "user_id", "action", "description"))
        keep_events = [len(r[5]) for r in keep_rows]
        result["alerts"]["keep_mean_event_json_bytes"] = round(sum(keep_events) / len(keep_events))
        for c in (conn, keep):
            await c.execute("VACUUM ANALYZE")  # visibility maps, statistics: both sides alike
        # last_alert was updated ~2x per stored alert by the sink path, Keep's lastalert only
        # inserted: compact both, so that the row and index sizes compare, not the update bloat
        await conn.execute("VACUUM FULL last_alert")
        await keep.execute("VACUUM FULL lastalert")
        result["stored_event_compression"] = {str(r[0]): r[1] for r in await conn.fetch(
            "SELECT pg_column_compression(event), count(*) FROM alert GROUP BY 1 ORDER BY 1")}
        ours, theirs = await _sizes(conn, "alert"), await _sizes(keep, "alert")
        audit = sum((await _sizes(keep, "alertaudit")).values())
        ours_last, theirs_last = await _sizes(conn, "last_alert"), await _sizes(keep, "lastalert")
        identities = await conn.fetchval("SELECT count(*) FROM last_alert")
        result["bytes_per_alert"] = {
            "alertstream alert": {k: round(v / rows) for k, v in ours.items()} | {"total": round(sum(ours.values()) / rows)},
            "keep alert": {k: round(v / rows) for k, v in theirs.items()} | {"total": round(sum(theirs.values()) / rows)},
            "keep alert + alertaudit": round((sum(theirs.values()) + audit) / rows),
        }
        result["bytes_per_identity"] = {
            "alertstream last_alert": round(sum(ours_last.values()) / identities),
            "keep lastalert": round(sum(theirs_last.values()) / identities),
        }

        # compression: fresh values (event::text::json; INSERT ... SELECT would copy the stored,
        # already compressed value as it is) into tables that differ in one setting only
        variants = [("none", None, None), ("pglz", "pglz", None)]
        if lz4:
            variants += [("lz4 (alertstream)", "lz4", None),
                         (f"lz4, toast_tuple_target={TOAST_TUPLE_TARGET} (not used)", "lz4", TOAST_TUPLE_TARGET)]
        compression: dict[str, Any] = {"event": {}, "event as jsonb (not used)": {}, "raw payload": {}}
        await conn.execute("CREATE TEMP TABLE raw_src (raw bytea)")
        await conn.copy_records_to_table("raw_src", records=[(p,) for p in payloads])
        raw_sizes = [len(p) for p in payloads]
        result["alerts"]["raw_payloads"] = len(payloads)
        result["alerts"]["mean_raw_payload_bytes"] = round(sum(raw_sizes) / len(raw_sizes))
        event_cols = (*ALERT_COLUMNS, "stored_at")
        sources = {
            "event": ("alert", "event", rows,
                      f"({', '.join(event_cols)}) SELECT "
                      + ", ".join("event::text::json" if c == "event" else c for c in event_cols) + " FROM alert"),
            "event as jsonb (not used)": ("alert", "event", rows,
                      f"({', '.join(event_cols)}) SELECT "
                      + ", ".join("event::text::jsonb" if c == "event" else c for c in event_cols) + " FROM alert"),
            "raw payload": ("alert_raw", "raw", len(payloads),
                            "(id, received_at, tenant, provider_type, raw) SELECT gen_random_uuid(), now(), 'default', "
                            "'keep', substring(raw from 1) FROM raw_src"),
        }
        for n, (label, method, target) in enumerate(variants):
            for what, (like, column, count, insert) in sources.items():
                if "jsonb" in what and target:
                    continue
                name = f"compression_variant_{n}_{like}{'_jsonb' if 'jsonb' in what else ''}"
                opts = f" WITH (toast_tuple_target = {target})" if target else ""
                await conn.execute(f"CREATE TABLE {name} (LIKE {like} INCLUDING DEFAULTS){opts}")
                if "jsonb" in what:
                    await conn.execute(f"ALTER TABLE {name} ALTER COLUMN event TYPE jsonb")
                change = "SET STORAGE EXTERNAL" if method is None else f"SET COMPRESSION {method}"
                await conn.execute(f"ALTER TABLE {name} ALTER COLUMN {column} {change}")
                with _Meter([pid]) as m:
                    await conn.execute(f"INSERT INTO {name} {insert}")
                size = await conn.fetchval(f"SELECT pg_table_size('{name}')")
                compression[what][label] = {"bytes_per_row": round(size / count),
                                            "insert_server_cpu_ms_per_1000": m.result(count)["server_cpu_ms_per_1000"]}
        result["event_compression"] = compression
        for c in (conn, keep):
            await c.close()
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE; DROP SCHEMA {keep_schema} CASCADE")
        await admin.close()
    return result


_CREATE_STAGING_SQL = "CREATE TEMP TABLE IF NOT EXISTS alert_stage (LIKE alert INCLUDING DEFAULTS INCLUDING COMPRESSION) ON COMMIT DELETE ROWS"
_INSERT_STAGED = (f"INSERT INTO alert ({', '.join(ALERT_COLUMNS)}) SELECT {', '.join(ALERT_COLUMNS)} FROM alert_stage"
                  " ORDER BY id, received_at ON CONFLICT DO NOTHING")


def with_search_path(dsn: str, schema: str) -> str:
    """The DSN with search_path as a startup setting (it survives the pool's RESET ALL)."""
    return f"{dsn}{'&' if '?' in dsn else '?'}search_path={schema}"


def markdown(r: dict[str, Any]) -> str:
    a = r["alerts"]
    lines = [f"PostgreSQL {r['server']}, lz4 {'available' if r['lz4'] else 'not available (pglz)'}; "
             f"{a['rows']} alerts of {a['identities']} identities, canonical event JSON {a['mean_event_json_bytes']} B "
             f"mean (Keep's event of the same alerts: {a['keep_mean_event_json_bytes']} B)", "",
             "| write path | rows/s | client CPU ms / 1000 rows | Postgres CPU ms / 1000 rows |", "|---|---|---|---|"]
    for name, p in r["write_paths"].items():
        lines.append(f"| {name} | {p['rows_per_s']:,} | {p['client_cpu_ms_per_1000']} | {p['server_cpu_ms_per_1000']} |")
    lines += ["", "| bytes per stored alert | alertstream `alert` | Keep `alert` |", "|---|---|---|"]
    ours, theirs = r["bytes_per_alert"]["alertstream alert"], r["bytes_per_alert"]["keep alert"]
    lines.append(f"| heap | {ours['heap']} | {theirs['heap']} |")
    lines.append(f"| TOAST | {ours['toast']} | {theirs['toast']} |")
    for side, label in ((ours, "alertstream"), (theirs, "Keep")):
        for k, v in side.items():
            if k.startswith("index "):
                lines.append(f"| {k} ({label}) | {v if side is ours else ''} | {v if side is theirs else ''} |")
    lines.append(f"| **total** | **{ours['total']}** | **{theirs['total']}** |")
    ident = r["bytes_per_identity"]
    lines.append(f"| Keep `alert` + `alertaudit` (one audit row per stored alert) | | {r['bytes_per_alert']['keep alert + alertaudit']} |")
    methods = ", ".join(f"{k if k != 'None' else 'not compressed'}: {v}" for k, v in r["stored_event_compression"].items())
    lines += ["", f"Events as stored by the sink: {methods} rows."]
    ident = r["bytes_per_identity"]
    lines += ["", f"Per identity: `last_alert` {ident['alertstream last_alert']} B, Keep `lastalert` {ident['keep lastalert']} B.",
              "", f"Compression ({a['raw_payloads']} raw payloads, {a['mean_raw_payload_bytes']} B mean):", "",
              "| column | storage | bytes per row (table + TOAST) | INSERT Postgres CPU ms / 1000 rows |", "|---|---|---|---|"]
    for column, by_label in r["event_compression"].items():
        for label, c in by_label.items():
            lines.append(f"| {column} | {label} | {c['bytes_per_row']} | {c['insert_server_cpu_ms_per_1000']} |")
    return "\n".join(lines)


EXPLAIN_QUERIES = {
    "latest alerts of a tenant (current state)":
        "SELECT fingerprint, name, status, last_received FROM last_alert WHERE tenant = 'tenant-1' "
        "ORDER BY last_received DESC LIMIT 50",
    "latest stored alerts of a tenant":
        "SELECT id, received_at, name, status FROM alert WHERE tenant = 'tenant-1' ORDER BY received_at DESC LIMIT 50",
    "history of a fingerprint":
        "SELECT id, received_at, status, content_hash FROM alert WHERE tenant = 'tenant-1' AND fingerprint = '{fp}' "
        "ORDER BY received_at DESC LIMIT 100",
    "by provider":
        "SELECT id, received_at, name FROM alert WHERE tenant = 'tenant-1' AND provider_type = 'datadog' "
        "ORDER BY received_at DESC LIMIT 50",
    "by time range (one hour)":
        "SELECT id, received_at, name FROM alert WHERE tenant = 'tenant-1' "
        "AND received_at >= '{t0}' AND received_at < '{t1}' ORDER BY received_at",
    "error payloads of a tenant":
        "SELECT id, received_at, error FROM alert_raw WHERE tenant = 'tenant-1' AND error IS NOT NULL "
        "ORDER BY received_at DESC LIMIT 50",
}


async def explain(dsn: str, rows: int) -> str:
    """Plans of the real queries over `rows` alerts of 4 tenants spread over 3 daily partitions."""
    schema = f"pgexplain_{os.getpid()}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f"CREATE SCHEMA {schema}")
    out = []
    try:
        conn = await asyncpg.connect(with_search_path(dsn, schema))
        for _, migration in available_migrations():  # the schema as deployed
            await conn.execute(migration)
        await conn.execute(_CREATE_STAGING_SQL)
        alerts, payloads = make_alerts(rows)
        day_ms = 86_400_000
        first_day = datetime.fromtimestamp(alerts[0].received_at_ms / 1000, tz=timezone.utc).date() - timedelta(days=2)
        for d in range(3):
            await ensure_partition(conn, "alert", first_day + timedelta(days=d))
            await ensure_partition(conn, "alert_raw", first_day + timedelta(days=d))
        for i, a in enumerate(alerts):
            a.alert.tenant = f"tenant-{i % 4}"
            a.received_at_ms -= (i % 3) * day_ms  # a third of the rows on each day
            a.received_at_ms += (i // 3) * 3_000  # ... spread over the day
        async with conn.transaction():
            await conn.copy_records_to_table("alert_stage", records=alert_rows(alerts), columns=ALERT_COLUMNS)
            await conn.execute(_INSERT_STAGED)
        await conn.execute("""INSERT INTO last_alert SELECT DISTINCT ON (tenant, fingerprint) tenant, fingerprint, id, name,
                              status, severity, provider_type, content_hash, received_at, received_at, 1, '{}'::jsonb
                              FROM alert ORDER BY tenant, fingerprint, received_at DESC""")
        await conn.execute("""INSERT INTO alert_raw (id, received_at, tenant, provider_type, raw, error)
                              SELECT id, received_at, tenant, provider_type, convert_to(event::text, 'UTF8'),
                                     CASE WHEN abs(hashtext(id::text)) % 50 = 0 THEN 'malformed_json: x' END FROM alert""")
        await conn.execute("VACUUM ANALYZE")
        fp = await conn.fetchval("SELECT fingerprint FROM alert WHERE tenant = 'tenant-1' GROUP BY 1 ORDER BY count(*) DESC LIMIT 1")
        t0 = datetime.combine(first_day + timedelta(days=1), datetime.min.time(), tzinfo=timezone.utc) + timedelta(hours=10)
        out.append(f"{rows} alerts, 4 tenants, 3 daily partitions (+ DEFAULT), PostgreSQL {await conn.fetchval('SHOW server_version')}")
        for title, sql in EXPLAIN_QUERIES.items():
            sql = sql.format(fp=fp, t0=t0.isoformat(), t1=(t0 + timedelta(hours=1)).isoformat())
            plan = await conn.fetch(f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF, BUFFERS OFF) {sql}")
            out += ["", f"-- {title}", sql, *(r[0] for r in plan)]
        await conn.close()
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("ALERTSTREAM_DATABASE_URL"))
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each write path; the best is reported")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--explain", action="store_true", help="print the plans of the real queries instead")
    args = parser.parse_args()
    if not args.dsn:
        parser.error("--dsn or ALERTSTREAM_DATABASE_URL is required")
    if args.explain:
        print(asyncio.run(explain(args.dsn, args.rows)))
        return
    result = asyncio.run(run(args.dsn, args.rows, args.batch, args.repeat))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    print(markdown(result))


if __name__ == "__main__":
    main()
