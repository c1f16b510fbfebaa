"""`GET /alerts/search` on a real gateway process, with keys from the gateway's key store, over
Postgres and the search store after a real archiver run: archived alerts found exactly once,
pages crossing the boundary between the stores, filters, tenant isolation, refusals."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from core.records import WriteBatch
from schemas.alert import Alert, NormalizedAlert
from sinks.archiver import archive
from sinks.maintenance import ensure_partition
from sinks.postgres import alert_rows
from sinks.search import SearchSink, make_client
from tests.integration.gateway.gateway_support import GatewayProcess, create_key, gateway_settings
from tests.integration.sinks.test_archive import fresh_database

pytestmark = pytest.mark.integration

TODAY = datetime.now(timezone.utc).date()
DAYS = [TODAY - timedelta(days=d) for d in (10, 9, 0)]  # two days to archive, and today
SEVERITIES = ("critical", "high", "warning", "info")
COLUMNS = ["id", "received_at", "tenant", "fingerprint", "provider_type", "provider_id", "name", "status", "severity",
           "content_hash", "event"]


def make_alert(day, n: int, tenant: str) -> NormalizedAlert:  # noqa: ANN001
    ms = int(datetime(day.year, day.month, day.day, 6, tzinfo=timezone.utc).timestamp() * 1000) + n * 60_000
    # n % 5 == 0: two alerts share a millisecond, the tie is broken by id in both stores
    ms -= 60_000 if n % 5 == 0 and n else 0
    a = Alert(name=f"{'disk full' if n % 3 == 0 else 'cpu hot'} on node{n}", last_received="2025-01-15T10:00:00Z",
              fingerprint=f"{tenant}-fp-{day}-{n}", tenant=tenant, severity=SEVERITIES[n % 4],
              status="resolved" if n % 4 == 3 else "firing", provider_type="prometheus" if n % 2 else "datadog",
              message=f"node{n} needs attention", labels={"node": f"node{n}"})
    return NormalizedAlert(str(uuid.uuid4()), ms, f"h{n}", a)


@pytest.fixture(scope="module")
def world(pipeline_settings, tmp_path_factory):  # noqa: ANN001, ANN201
    """A database of its own with acme's and other's alerts; old days archived; a gateway on it."""
    async def build():  # noqa: ANN202
        dsn = await fresh_database(pipeline_settings.require_database_url())
        settings = gateway_settings(pipeline_settings, database_url=SecretStr(dsn), search_index=f"fed-{uuid.uuid4().hex[:8]}",
                                    search_replicas=0, archive_batch_size=8, search_query_max_limit=100)
        alerts = {t: [make_alert(d, n, t) for d in DAYS for n in range(12)] for t in ("acme", "other")}
        conn = await asyncpg.connect(dsn)
        try:
            for day in DAYS:
                await ensure_partition(conn, "alert", day)
            await conn.copy_records_to_table("alert", records=alert_rows(alerts["acme"] + alerts["other"]), columns=COLUMNS)
        finally:
            await conn.close()
        # the live indexer already wrote today's alerts and a few old ones to the store as well
        sink = SearchSink(make_client(settings.search_url), settings.search_index, settings)
        await sink.start()
        await sink.write(WriteBatch(stored=[a for a in alerts["acme"] if a.received_at_ms // 86_400_000 == _day_no(TODAY)]
                                    + alerts["acme"][:3]))
        await sink.close()
        report = await archive(settings, older_than_days=7)
        assert [d.archived for d in report.days] == [True, True]
        return settings, alerts

    settings, alerts = asyncio.run(build())
    process = GatewayProcess(settings, tmp_path_factory.mktemp("fedgw") / "gateway.log")
    keys = {t: create_key(settings.require_database_url(), t)[1] for t in ("acme", "other")}
    yield process, keys, alerts
    process.stop()


def _day_no(day) -> int:  # noqa: ANN001
    return int(datetime(day.year, day.month, day.day, tzinfo=timezone.utc).timestamp()) // 86400


def newest_first(alerts: list[NormalizedAlert]) -> list[str]:
    return [a.uid for a in sorted(alerts, key=lambda a: (a.received_at_ms, a.uid), reverse=True)]


def get(process, key: str, **params):  # noqa: ANN001, ANN003, ANN201
    return httpx.get(process.url + "/alerts/search", params=params, headers={"X-API-KEY": key}, timeout=30)


def all_pages(process, key: str, **params) -> tuple[list[dict], set[str]]:  # noqa: ANN001, ANN003
    out, stores, cursor = [], set(), None
    for _ in range(100):
        response = get(process, key, **params, **({"cursor": cursor} if cursor else {}))
        assert response.status_code == 200, response.text
        body = response.json()
        out += body["alerts"]
        stores |= {name for name, n in body["stores"].items() if n}
        cursor = body["next_cursor"]
        if cursor is None:
            return out, stores
    raise AssertionError("no last page")


def test_an_archived_alert_is_found_exactly_once(world) -> None:  # noqa: ANN001
    process, keys, alerts = world
    archived = alerts["acme"][0]  # in the store twice over (indexed live, then archived), no longer in Postgres
    body = get(process, keys["acme"], fingerprint=archived.alert.fingerprint).json()
    assert [a["alertId"] for a in body["alerts"]] == [archived.uid] and body["next_cursor"] is None
    assert body["stores"] == {"postgres": 0, "search": 1}


@pytest.mark.parametrize("limit", [1, 5, 7, 100])
def test_pages_cross_the_boundary_between_the_stores_without_gaps_or_repeats(world, limit) -> None:  # noqa: ANN001
    process, keys, alerts = world
    got, stores = all_pages(process, keys["acme"], limit=limit)
    assert [a["alertId"] for a in got] == newest_first(alerts["acme"])
    assert stores == {"postgres", "search"}


def test_filters_match_in_both_stores(world) -> None:  # noqa: ANN001
    process, keys, alerts = world
    acme = alerts["acme"]

    def ids(**params) -> list[str]:  # noqa: ANN003
        return [a["alertId"] for a in all_pages(process, keys["acme"], limit=4, **params)[0]]

    assert ids(severity=["critical", "high"]) == newest_first([a for a in acme if a.alert.severity in ("critical", "high")])
    assert ids(status="resolved", provider="prometheus") == newest_first(
        [a for a in acme if a.alert.status == "resolved" and a.alert.provider_type == "prometheus"])
    assert ids(q="Disk FULL") == newest_first([a for a in acme if a.alert.name.startswith("disk full")])
    lo = int(datetime(DAYS[1].year, DAYS[1].month, DAYS[1].day, tzinfo=timezone.utc).timestamp() * 1000)
    hi = lo + 86_400_000
    assert ids(since=str(lo), until=datetime.fromtimestamp(hi / 1000, timezone.utc).isoformat()) == newest_first(
        [a for a in acme if lo <= a.received_at_ms < hi])


def test_a_key_sees_only_its_own_tenant(world) -> None:  # noqa: ANN001
    process, keys, alerts = world
    got, _ = all_pages(process, keys["other"], limit=50, tenant="acme")  # a `tenant` parameter is no filter
    assert [a["alertId"] for a in got] == newest_first(alerts["other"])
    acme_fp = alerts["acme"][5].alert.fingerprint
    assert get(process, keys["other"], fingerprint=acme_fp).json()["alerts"] == []
    # a cursor issued to acme continues acme's query only for acme: for `other` it is another query
    cursor = get(process, keys["acme"], limit=2).json()["next_cursor"]
    response = get(process, keys["other"], limit=2, cursor=cursor)
    assert response.status_code == 400 and "cursor" in response.json()["detail"]


def test_refusals_say_why(world) -> None:  # noqa: ANN001
    process, keys, _ = world
    assert httpx.get(process.url + "/alerts/search", timeout=10).status_code == 401
    assert get(process, "not-a-key").status_code == 401
    for params, words in [({"severity": "urgent"}, "severity"), ({"since": "yesterday"}, "since"),
                          ({"cursor": "garbage"}, "cursor"), ({"limit": 101}, "limit")]:
        response = get(process, keys["acme"], **params)
        assert response.status_code == 400 and words in response.json()["detail"], (params, response.text)
    cursor = get(process, keys["acme"], limit=2).json()["next_cursor"]
    response = get(process, keys["acme"], limit=2, cursor=cursor, severity="critical")
    assert response.status_code == 400 and "other filters" in response.json()["detail"]
