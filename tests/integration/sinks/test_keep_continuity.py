"""Continuity after `migrate-from-keep`, per provider, on the real stack: a Keep-shaped database holds,
for each of the eight providers, the alert Keep stored for a payload of the Keep corpus
(tests/golden/keep_corpus, `keepStored`) under the fingerprint Keep gave it; it is imported into the
session's store; then the same payload goes through the session's worker (a real producer, the real
worker process) and must land on the imported identity.

"The same identity" means the same (tenant, fingerprint) key, precisely:
- the `last_alert` row the import wrote is the one that moves on (received_count + 1, alert_id the
  new row, source marks now the worker's), and no other `last_alert` row appears for that alert:
  none under Keep's fingerprint where alertstream's differs, none under any other key;
- the `alert` row of the first sighting carries the imported fingerprint.
The worker's dedup table (RocksDB, in the worker) knows nothing of imported identities: the first
sighting is `new` to it, so it is stored once as an alert row (a change of the imported identity,
Keep's "partial duplicate"), never as a second identity; the same payload again is then a
duplicate (no alert row, received_count + 1)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from schemas.fingerprint import fingerprint_of
from schemas.normalizers import NormalizeContext, normalize
from sinks.keep_import import import_from_keep
from tests.conftest import wait_until
from tests.integration.sinks.keep_support import new_keep_database
from tests.integration.streams.test_pipeline_e2e import produce, sql

pytestmark = pytest.mark.integration

CORPUS = Path(__file__).resolve().parents[2] / "golden" / "keep_corpus"
CASES = {p.stem: orjson.loads(p.read_bytes()) for p in sorted(CORPUS.glob("*.json"))}
STORED = sorted(name for name, case in CASES.items() if "keepStored" in case)
RUN = uuid.uuid4().hex[:6]  # tenants of their own: the session's store is shared with other tests
NOW = datetime.now(timezone.utc).replace(microsecond=0)
IMPORTED_AT = NOW - timedelta(days=1)
# Keep merged these two Zabbix hosts (one trigger name: sha256(name), keephq/keep#4766); the import
# splits them, and the second host's payload continues its own imported identity
ZABBIX_OTHER = "zabbix_problem_other_host"


def tenant_of(name: str) -> str:
    """One tenant per stored case (its other payloads, e.g. a second Zabbix host, share it)."""
    return f"cont-{RUN}-{'zabbix_problem' if name == ZABBIX_OTHER else name}"


def identities(name: str) -> list[str]:
    """The fingerprints alertstream gives the case's payload (the normalizer's, else sha256(name))."""
    case = CASES[name]
    alerts = normalize(case["provider"], orjson.dumps(case["payload"]),
                       NormalizeContext(tenant="t", received_at="2025-01-01T00:00:00.000Z"))
    return [fingerprint_of(a) for a in alerts]


def naive(ts: datetime) -> datetime:
    return ts.astimezone(timezone.utc).replace(tzinfo=None)


def zabbix_other_host_stored() -> dict:
    event = dict(CASES["zabbix_problem"]["keepStored"]["event"])
    payload = CASES[ZABBIX_OTHER]["payload"]
    event.update({k: payload[k] for k in ("id", "host_name", "host_ip", "service", "message")},
                 lastReceived="2025-03-10T09:33:40.000Z")
    return event


@pytest.fixture(scope="module")
def keep_dsn(stack_env: dict[str, str]) -> str:
    """A Keep-shaped database: per stored case one Keep tenant with the alert and its lastalert row
    (two alerts under one fingerprint for Zabbix: two hosts Keep merged)."""

    async def build() -> str:
        url, conn = await new_keep_database(stack_env["ALERTSTREAM_DATABASE_URL"], "keepcont")
        try:
            for case_name in STORED:
                stored = CASES[case_name]["keepStored"]
                keep_tenant = f"keep-{case_name}"
                keep_fp = stored["event"]["fingerprint"]
                await conn.execute("INSERT INTO tenant VALUES ($1, $1)", keep_tenant)
                rows = [(uuid.uuid4(), IMPORTED_AT, stored["event"])]
                if case_name == "zabbix_problem":  # the other host, earlier, under the same Keep fingerprint
                    rows.insert(0, (uuid.uuid4(), IMPORTED_AT - timedelta(minutes=5), zabbix_other_host_stored()))
                for row_id, at, event in rows:
                    await conn.execute(
                        "INSERT INTO alert (id, tenant_id, timestamp, provider_type, provider_id, event, fingerprint,"
                        " alert_hash) VALUES ($1, $2, $3, $4, NULL, $5, $6, 'h')",
                        row_id, keep_tenant, naive(at), stored["providerType"], json.dumps(event), keep_fp)
                newest_id, newest_at, _ = rows[-1]
                await conn.execute("INSERT INTO lastalert VALUES ($1, $2, $3, $4, $5, 'h')", keep_tenant, keep_fp,
                                   newest_id, naive(newest_at), naive(rows[0][1]))
        finally:
            await conn.close()
        return url

    return asyncio.run(build())


@pytest.fixture(scope="module")
def imported(keep_dsn: str, worker, pipeline_settings):  # noqa: ANN001
    """The Keep database imported into the store the session's worker writes to."""
    dsn = pipeline_settings.require_database_url()
    tenant_map = {f"keep-{n}": tenant_of(n) for n in STORED}
    report = asyncio.run(import_from_keep(keep_dsn, dsn, tenant_map=tenant_map, since=NOW - timedelta(days=7)))
    assert report.alerts_failed == 0 and report.last_alerts_failed == 0, report.summary()
    return report


def last_rows(dsn: str, tenant: str) -> dict[str, dict]:
    return {r["fingerprint"]: dict(r) for r in sql(dsn, "SELECT * FROM last_alert WHERE tenant = $1", tenant)}


def send_and_wait(settings, worker, name: str, fingerprint: str, count: int) -> None:  # noqa: ANN001
    case = CASES[name]
    dsn = settings.require_database_url()
    produce(settings.require_kafka(), settings.topic_alerts,
            [(case["provider"], name.encode(), orjson.dumps(case["payload"]))], tenant=tenant_of(name))

    def arrived() -> bool:
        assert worker.proc.poll() is None, f"worker died:\n{worker.log_tail()}"
        row = last_rows(dsn, tenant_of(name)).get(fingerprint)
        return row is not None and row["received_count"] >= count

    wait_until(arrived, timeout=120, what=f"{name}: sighting {count} of {fingerprint}")


def test_the_import_carries_every_provider_over(imported) -> None:  # noqa: ANN001
    assert {CASES[n]["provider"] for n in STORED} == {
        "prometheus", "grafana", "datadog", "pagerduty", "cloudwatch", "sentry", "zabbix", "keep"}
    assert imported.last_alerts_split == 1  # the second Zabbix host
    # re-fingerprinted: Zabbix (2 rows), CloudWatch, PagerDuty v3, Sentry's issue alert, Grafana without fingerprint
    assert imported.alerts_refingerprinted == 6


@pytest.mark.parametrize("name", STORED)
def test_a_webhook_after_the_import_continues_the_imported_identity(imported, worker, pipeline_settings,  # noqa: ANN001
                                                                      name: str) -> None:
    case = CASES[name]
    dsn = pipeline_settings.require_database_url()
    tenant = tenant_of(name)
    keep_fp = case["keepStored"]["event"]["fingerprint"]
    fingerprint = identities(name)[0]
    before = last_rows(dsn, tenant)
    assert fingerprint in before, f"{name}: the import wrote no last_alert row under {fingerprint}"
    imported_row = before[fingerprint]
    assert imported_row["source_marks"] == "{}"
    if fingerprint != keep_fp:  # re-fingerprinted at import; Keep's key is kept on the alert
        assert keep_fp not in before
        (event,) = [r["event"] for r in sql(dsn, "SELECT event FROM alert WHERE id = $1", imported_row["alert_id"])]
        assert orjson.loads(event)["extra"]["keepFingerprint"] == keep_fp
    imported_ids = {r["id"] for r in sql(dsn, "SELECT id FROM alert WHERE tenant = $1", tenant)}

    # first sighting: `new` to the worker's dedup table, stored, on the imported identity
    send_and_wait(pipeline_settings, worker, name, fingerprint, imported_row["received_count"] + 1)
    after = last_rows(dsn, tenant)
    new_rows = [r for r in sql(dsn, "SELECT * FROM alert WHERE tenant = $1", tenant) if r["id"] not in imported_ids]
    mine = [r for r in new_rows if r["fingerprint"] == fingerprint]
    assert len(mine) == 1, f"{name}: {[(r['fingerprint'], r['name']) for r in new_rows]}"
    row = after[fingerprint]
    assert row["alert_id"] == mine[0]["id"] and row["source_marks"] != "{}"
    assert row["received_count"] == imported_row["received_count"] + 1
    assert row["first_received"] == imported_row["first_received"]  # the identity's history goes on
    assert keep_fp == fingerprint or keep_fp not in after  # never a second identity beside the imported one
    # every key is the identity of one alert of the payload (a webhook of several alerts may bring others)
    assert set(after) - set(before) <= set(identities(name)) - {fingerprint}
    assert {r["fingerprint"] for r in new_rows} <= set(identities(name))

    # the same payload again: a duplicate of that identity, no alert row
    send_and_wait(pipeline_settings, worker, name, fingerprint, imported_row["received_count"] + 2)
    stored = sql(dsn, "SELECT id FROM alert WHERE tenant = $1 AND fingerprint = $2", tenant, fingerprint)
    assert [r["id"] for r in stored if r["id"] not in imported_ids] == [mine[0]["id"]]
    assert last_rows(dsn, tenant)[fingerprint]["alert_id"] == mine[0]["id"]


def test_a_host_keep_merged_continues_its_own_identity(imported, worker, pipeline_settings) -> None:  # noqa: ANN001
    dsn = pipeline_settings.require_database_url()
    tenant = tenant_of(ZABBIX_OTHER)
    fingerprint = identities(ZABBIX_OTHER)[0]
    assert fingerprint != identities("zabbix_problem")[0]
    before = last_rows(dsn, tenant)
    assert before[fingerprint]["source_marks"] == "{}" and before[fingerprint]["received_count"] == 1
    send_and_wait(pipeline_settings, worker, ZABBIX_OTHER, fingerprint, 2)
    after = last_rows(dsn, tenant)
    assert set(after) == set(before)  # no new identity: the split one moved on
    assert after[fingerprint]["source_marks"] != "{}"
