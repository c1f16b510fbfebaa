"""Migration from Keep: a small Keep-shaped database (Keep's tables, columns, types and indexes)
on the session's Postgres, imported into a fresh alertstream database, twice."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import asyncpg
import orjson
import pytest

from core.records import Sighting, WriteBatch
from sinks.keep_import import import_from_keep
from sinks.postgres import PostgresSink
from tests.conftest import REPO
from tests.integration.sinks.keep_support import new_keep_database
from tests.integration.sinks.test_postgres_maintenance import alerts_at, fresh_database

pytestmark = pytest.mark.integration

NOW = datetime.now(timezone.utc).replace(microsecond=0)
T1, T2, T3 = (NOW - timedelta(days=3, hours=h) for h in (5, 4, 3))
OLD = NOW - timedelta(days=100)
IDS = {k: uuid.uuid4() for k in ("disk1", "disk2", "disk3", "cpu", "broken", "old", "raw_ok", "raw_err")}


def naive(ts: datetime) -> datetime:
    return ts.astimezone(timezone.utc).replace(tzinfo=None)


def keep_event(name: str, status: str, fingerprint: str, *, lag: int, provider_type: str = "keep") -> str:
    """An event as Keep stores it: AlertDto.dict(), bookkeeping keys included."""
    return json.dumps({
        "id": "ext-1", "name": name, "status": status, "severity": "high", "lastReceived": T1.isoformat(),
        "environment": "production", "isFullDuplicate": False, "isPartialDuplicate": True, "duplicateReason": None,
        "service": "orders", "source": ["grafana"], "apiKeyRef": "webhook", "message": "lag is high",
        "description": "consumer lag", "pushed": True, "event_id": None, "url": None, "labels": {"team": "core"},
        "fingerprint": fingerprint, "deleted": False, "dismissUntil": None, "dismissed": False, "assignee": None,
        "providerId": "p1", "providerType": provider_type, "note": None, "enriched_fields": [], "isNoisy": False,
        "lag": lag,
    })


@pytest.fixture(scope="module")
async def keep_dsn(stack_env: dict[str, str]) -> str:
    url, conn = await new_keep_database(stack_env["ALERTSTREAM_DATABASE_URL"], "keep")
    try:
        await conn.execute("INSERT INTO tenant VALUES ('keep', 'single tenant'), ('acme-keep', 'acme')")
        alerts = [
            (IDS["disk1"], "keep", T1, "keep", "p1", keep_event("disk full", "firing", "disk", lag=1), "disk"),
            (IDS["disk2"], "keep", T2, "keep", "p1", keep_event("disk full", "firing", "disk", lag=2), "disk"),
            (IDS["disk3"], "keep", T3, "keep", "p1", keep_event("disk full", "resolved", "disk", lag=2), "disk"),
            (IDS["cpu"], "acme-keep", T2, "prometheus", None, keep_event("cpu", "firing", "cpu", lag=0, provider_type="prometheus"), "cpu"),
            (IDS["broken"], "keep", T2, "keep", None, json.dumps({"status": "firing", "labels": {}}), "nameless"),
            (IDS["old"], "keep", OLD, "keep", None, keep_event("ancient", "firing", "old", lag=0), "old"),
        ]
        await conn.executemany(
            "INSERT INTO alert (id, tenant_id, timestamp, provider_type, provider_id, event, fingerprint, alert_hash)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, 'h')", [(a[0], a[1], naive(a[2]), *a[3:]) for a in alerts])
        await conn.executemany(
            "INSERT INTO lastalert VALUES ($1, $2, $3, $4, $5, 'h')",
            [("keep", "disk", IDS["disk3"], naive(T3), naive(T1)), ("acme-keep", "cpu", IDS["cpu"], naive(T2), naive(T2)),
             ("keep", "nameless", IDS["broken"], naive(T2), naive(T2))])
        await conn.executemany(
            "INSERT INTO alertraw (id, tenant_id, raw_alert, timestamp, provider_type, error, error_message)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7)",
            [(IDS["raw_ok"], "keep", '{"alerts": [1]}', naive(T1), "prometheus", False, None),
             (IDS["raw_err"], "keep", '{"bad": true}', naive(T2), None, True, "KeyError: name")])
    finally:
        await conn.close()
    return url


@pytest.fixture(scope="module")
async def dsn(stack_env: dict[str, str]) -> str:
    return await fresh_database(stack_env["ALERTSTREAM_DATABASE_URL"], "fromkeep")


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    yield conn
    await conn.close()


async def snapshot(db: asyncpg.Connection) -> tuple[list, list, list]:
    return (
        [dict(r) for r in await db.fetch("SELECT * FROM alert ORDER BY id")],
        [dict(r) for r in await db.fetch("SELECT * FROM last_alert ORDER BY tenant, fingerprint")],
        [dict(r) for r in await db.fetch("SELECT * FROM alert_raw ORDER BY id")],
    )


async def run_import(keep_dsn: str, dsn: str):  # noqa: ANN201
    return await import_from_keep(keep_dsn, dsn, default_tenant="default", tenant_map={"acme-keep": "acme"},
                                  since=NOW - timedelta(days=30), batch=2)


async def test_import_converts_keep_tables(keep_dsn: str, dsn: str, db: asyncpg.Connection) -> None:
    report = await run_import(keep_dsn, dsn)
    assert (report.alerts_read, report.alerts_written, report.alerts_failed) == (5, 4, 1)  # `old` is before `since`
    assert (report.last_alerts_read, report.last_alerts_written, report.last_alerts_failed) == (3, 2, 1)
    assert (report.raw_read, report.raw_written) == (2, 2)

    rows = {r["id"]: r for r in await db.fetch("SELECT *, tableoid::regclass::text AS part FROM alert")}
    assert set(rows) == {IDS["disk1"], IDS["disk2"], IDS["disk3"], IDS["cpu"]}
    disk3, cpu = rows[IDS["disk3"]], rows[IDS["cpu"]]
    assert (disk3["tenant"], disk3["fingerprint"], disk3["status"], disk3["received_at"]) == ("default", "disk", "resolved", T3)
    assert (cpu["tenant"], cpu["provider_type"]) == ("acme", "prometheus")
    assert disk3["part"] == f"alert_p{T3:%Y%m%d}"  # straight into its day, not DEFAULT
    event = orjson.loads(disk3["event"])
    assert event["extra"] == {"lag": 2}  # the alert's own unknown field; Keep's bookkeeping keys are gone
    assert not {"isFullDuplicate", "apiKeyRef", "pushed", "enriched_fields"} & (set(event) | set(event["extra"]))
    assert event["providerType"] == "keep" and event["labels"] == {"team": "core"}
    # disk2 → disk3 differ only by status: different content hashes; disk1 → disk2 by `lag`
    assert len({rows[IDS[k]]["content_hash"] for k in ("disk1", "disk2", "disk3")}) == 3

    last = {(r["tenant"], r["fingerprint"]): r for r in await db.fetch("SELECT * FROM last_alert")}
    disk = last[("default", "disk")]
    assert (disk["alert_id"], disk["status"], disk["received_count"]) == (IDS["disk3"], "resolved", 3)
    assert (disk["first_received"], disk["last_received"], disk["source_marks"]) == (T1, T3, "{}")
    assert disk["content_hash"] == disk3["content_hash"]
    assert last[("acme", "cpu")]["received_count"] == 1

    raw = {r["id"]: r for r in await db.fetch("SELECT * FROM alert_raw")}
    assert raw[IDS["raw_ok"]]["error"] is None and orjson.loads(raw[IDS["raw_ok"]]["raw"]) == {"alerts": [1]}
    assert raw[IDS["raw_err"]]["error"] == "KeyError: name"
    assert raw[IDS["broken"]]["error"].startswith("keep_import missing_field")  # not lost: kept with why


async def test_a_second_import_changes_nothing(keep_dsn: str, dsn: str, db: asyncpg.Connection) -> None:
    before = await snapshot(db)
    report = await run_import(keep_dsn, dsn)
    assert (report.alerts_written, report.last_alerts_written, report.raw_written) == (0, 0, 0)
    assert await snapshot(db) == before


async def test_reimport_catches_up_with_keep_but_never_overwrites_alertstream_rows(
        keep_dsn: str, dsn: str, db: asyncpg.Connection) -> None:
    # alertstream has taken over `disk` (a live sighting), while Keep got a newer `cpu`
    sink = PostgresSink(dsn, pool_size=1)
    await sink.start()
    try:
        live = alerts_at("default", NOW, 1)
        live.sightings[0] = Sighting("default", "disk", live.sightings[0].received_at_ms, 0, 5, None, "alerts:0")
        await sink.write(WriteBatch(sightings=live.sightings))
    finally:
        await sink.close()
    disk_before = dict(await db.fetchrow("SELECT * FROM last_alert WHERE tenant = 'default' AND fingerprint = 'disk'"))
    assert disk_before["source_marks"] == '{"alerts:0": 5}' and disk_before["received_count"] == 4

    keep = await asyncpg.connect(keep_dsn)
    try:
        new_cpu = uuid.uuid4()
        t4 = NOW - timedelta(hours=1)
        await keep.execute("INSERT INTO alert VALUES ($1, 'acme-keep', $2, 'prometheus', NULL, $3, 'cpu', 'h2')",
                           new_cpu, naive(t4), keep_event("cpu", "resolved", "cpu", lag=0, provider_type="prometheus"))
        await keep.execute("UPDATE lastalert SET alert_id = $1, timestamp = $2 WHERE fingerprint = 'cpu'", new_cpu, naive(t4))
        await keep.execute("UPDATE lastalert SET timestamp = $1 WHERE fingerprint = 'disk'", naive(t4))
    finally:
        await keep.close()

    report = await run_import(keep_dsn, dsn)
    assert (report.alerts_written, report.last_alerts_written) == (1, 1)
    cpu = await db.fetchrow("SELECT * FROM last_alert WHERE tenant = 'acme' AND fingerprint = 'cpu'")
    assert (cpu["alert_id"], cpu["status"], cpu["received_count"], cpu["last_received"]) == (new_cpu, "resolved", 2, t4)
    assert dict(await db.fetchrow("SELECT * FROM last_alert WHERE tenant = 'default' AND fingerprint = 'disk'")) == disk_before


def test_the_cli_command(keep_dsn: str, dsn: str) -> None:
    """`alertstream migrate-from-keep` as an operator runs it (through sinks.cli's parsers)."""
    code = (
        "import argparse, sys; from sinks.cli import add_parsers; from config.settings import Settings\n"
        "p = argparse.ArgumentParser(); sub = p.add_subparsers(dest='command', required=True); add_parsers(sub)\n"
        "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a, Settings()))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "ALERTSTREAM_DATABASE_URL": dsn}
    out = subprocess.run([sys.executable, "-c", code, "migrate-from-keep", "--keep-url", keep_dsn,
                          "--tenant", "acme-keep=acme"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "keep import since" in out.stderr and "alert:" in out.stderr, out.stderr
    out = subprocess.run([sys.executable, "-c", code, "maintain"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "maintenance:" in out.stderr, out.stderr


# ------------------------------------------------------------------ identities re-fingerprinted at import

ZBX_NAME = "Free disk space is less than 10% on /var"
ZBX_KEEP_FP = hashlib.sha256(ZBX_NAME.encode()).hexdigest()  # Keep: AlertDto's default, sha256(name)
ZBX_IDS = [uuid.uuid4() for _ in range(3)]


def zabbix_event(host: str, event_id: str, status: str = "firing") -> str:
    """What Keep's ZabbixProvider stored for a media-type call: the parameters spread into the AlertDto."""
    return json.dumps({
        "id": event_id, "name": ZBX_NAME, "status": status, "severity": "warning", "lastReceived": T1.isoformat(),
        "triggerId": "44120", "host_name": host, "host_ip": "10.8.1.11", "service": host.split(".")[0],
        "environment": "staging", "source": ["zabbix"], "pushed": True, "fingerprint": ZBX_KEEP_FP,
        "providerType": "zabbix", "isFullDuplicate": False, "tags": {"component": "storage"},
    })


@pytest.fixture(scope="module")
async def merged_keep_dsn(stack_env: dict[str, str]) -> str:
    """One Keep identity (a Zabbix trigger name) that holds two hosts: three alert rows, one lastalert."""
    url, conn = await new_keep_database(stack_env["ALERTSTREAM_DATABASE_URL"], "keepz")
    try:
        await conn.execute("INSERT INTO tenant VALUES ('keep', 'single tenant')")
        rows = [(ZBX_IDS[0], T1, zabbix_event("app-stg-01.example.net", "1")),
                (ZBX_IDS[1], T2, zabbix_event("app-stg-02.example.net", "2")),
                (ZBX_IDS[2], T3, zabbix_event("app-stg-01.example.net", "3", "resolved"))]
        await conn.executemany(
            "INSERT INTO alert VALUES ($1, 'keep', $2, 'zabbix', NULL, $3, $4, 'h')",
            [(i, naive(t), e, ZBX_KEEP_FP) for i, t, e in rows])
        await conn.execute("INSERT INTO lastalert VALUES ('keep', $1, $2, $3, $4, 'h')",
                           ZBX_KEEP_FP, ZBX_IDS[2], naive(T3), naive(T1))
    finally:
        await conn.close()
    return url



async def test_a_keep_identity_that_merged_hosts_is_split_into_alertstreams(
        merged_keep_dsn: str, stack_env: dict[str, str]) -> None:
    from schemas.normalizers import zabbix

    target = await fresh_database(stack_env["ALERTSTREAM_DATABASE_URL"], "fromkeepz")
    report = await import_from_keep(merged_keep_dsn, target, default_tenant="default", since=NOW - timedelta(days=30))
    assert (report.alerts_written, report.alerts_refingerprinted) == (3, 3)
    assert (report.last_alerts_written, report.last_alerts_split) == (2, 1)
    host1 = zabbix.identity("44120", "app-stg-01.example.net")
    host2 = zabbix.identity("44120", "app-stg-02.example.net")
    conn = await asyncpg.connect(target)
    try:
        alerts = {r["id"]: r for r in await conn.fetch("SELECT * FROM alert")}
        assert [alerts[i]["fingerprint"] for i in ZBX_IDS] == [host1, host2, host1]
        assert all(orjson.loads(a["event"])["extra"]["keepFingerprint"] == ZBX_KEEP_FP for a in alerts.values())
        last = {r["fingerprint"]: r for r in await conn.fetch("SELECT * FROM last_alert")}
        assert set(last) == {host1, host2}  # nothing under Keep's key
        one, two = last[host1], last[host2]
        # the identity Keep's lastalert names: its newest alert, its imported rows counted
        assert (one["alert_id"], one["status"], one["received_count"]) == (ZBX_IDS[2], "resolved", 2)
        assert (one["first_received"], one["last_received"]) == (T1, T3)
        # the host split off: its own newest (and only) imported row
        assert (two["alert_id"], two["status"], two["received_count"], two["source_marks"]) == (ZBX_IDS[1], "firing", 1, "{}")
        assert (two["first_received"], two["last_received"]) == (T2, T2)
        before = [dict(r) for r in await conn.fetch("SELECT * FROM last_alert ORDER BY fingerprint")]
    finally:
        await conn.close()

    again = await import_from_keep(merged_keep_dsn, target, default_tenant="default", since=NOW - timedelta(days=30))
    assert (again.alerts_written, again.last_alerts_written, again.last_alerts_split) == (0, 0, 0)
    conn = await asyncpg.connect(target)
    try:
        assert [dict(r) for r in await conn.fetch("SELECT * FROM last_alert ORDER BY fingerprint")] == before
    finally:
        await conn.close()
