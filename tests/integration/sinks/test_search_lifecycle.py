"""The search store's lifecycle on a real OpenSearch: the write alias is rolled over for real, and
federated search (`GET /alerts/search`) still finds every alert exactly once.

On OpenSearch 2.19 (`ALERTSTREAM_LOCAL_SEARCH=opensearch`), this module shows that:

1. alerts are written by the worker's own `SearchSink` into the write alias (`<alias>-000001`);
2. a forced `POST <alias>/_rollover` creates `<alias>-000002`. It is the alias's write index and
   has the template's mapping (labels `flat_object`, searchable by key) and settings;
3. alerts written after that land in `-000002` only. Each concrete index is queried to check it,
   for the sink that was running during the rollover and for one started after it;
4. a real gateway's federated search finds every alert exactly once, newest first, with pages of
   any size and no gaps or repeats. A key never sees another tenant's alerts;
5. indexing the same alerts again after the rollover puts a second copy of the old ones in
   `-000002`: the sink writes by `_id` to the alias, and an `_id` is unique only within one index.
   Federated search (and `query.federated.search` over the store alone) still shows each alert once.

The lifecycle *policy* cannot be shown as attached here. The ISM plugin is not served by Maven
Central, so this OpenSearch answers the policy request with `no handler` and the sink reports
`unsupported` (docs/decisions.md). The test asserts that report. On a store where the policy is
installed, the test checks instead that ISM manages both indices; that branch does not run here.
osmem has no `_rollover` (`no handler found`), so on it this module is skipped.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from config.settings import Settings
from core.records import WriteBatch
from query.federated import SearchFilter, search
from query.search_reader import SearchReader
from schemas.alert import Alert, NormalizedAlert
from sinks.maintenance import ensure_partition
from sinks.postgres import PostgresSink
from sinks.search import SearchSink, make_client
from sinks.search_schema import SchemaReport, first_index, policy_name, template_name
from streams import localstack
from tests.integration.gateway.gateway_support import GatewayProcess, create_key, gateway_settings
from tests.integration.sinks.test_postgres_maintenance import fresh_database

pytestmark = pytest.mark.integration

SEVERITIES = ("critical", "high", "warning", "info")
TODAY = datetime.now(timezone.utc).date()
T0 = int(datetime(TODAY.year, TODAY.month, TODAY.day, 6, tzinfo=timezone.utc).timestamp() * 1000)
MAX_LIMIT = 200


def search_engine(url: str, basetemp: Path) -> str:
    """The engine behind `url`. `tests/integration/streams/test_sink_outages.py` reads it from
    `localstack.status`, and this function does the same. The session stack's state dir is a
    `stack*` dir of the pytest base temp, so the one whose search endpoint is `url` is used. A
    store this session did not start is asked directly: osmem names itself in `cluster_name`."""
    for state_dir in sorted(basetemp.glob("stack*")):
        for service in localstack.status(state_dir):
            if service.name == "search" and service.endpoint == url and service.engine:
                return service.engine
    info = httpx.get(url, timeout=10).json()
    if info.get("cluster_name") == "osmem":
        return "osmem"
    return (info.get("version") or {}).get("distribution") or "elasticsearch"


def make_alert(n: int, tenant: str, ms: int) -> NormalizedAlert:
    a = Alert(name=f"{'disk full' if n % 3 == 0 else 'cpu hot'} on node{n}", last_received="2025-01-15T10:00:00Z",
              fingerprint=f"{tenant}-fp-{n}", tenant=tenant, severity=SEVERITIES[n % 4],
              status="resolved" if n % 4 == 3 else "firing", provider_type="prometheus" if n % 2 else "datadog",
              labels={"cluster": f"c{n % 3}", "team.name": "sre"}, message=f"node{n} needs attention")
    return NormalizedAlert(str(uuid.uuid4()), ms, f"h{n}", a)


def alerts_of(tenant: str) -> dict[str, list[NormalizedAlert]]:
    """The alerts of one tenant, by when they are written relative to the rollover.

    - `before`: 30, written to `-000001`. Two of them share each minute (ties are broken by id).
    - `after`: 30, written after the rollover. They interleave with `before` in time: the
      archiver, or a replay, writes old alerts into the current write index. Every even one has
      the very millisecond of a `before` alert, so a tie is broken by id *across* the two indices.
    - `live`: 10 newer ones, written after the rollover by a sink started after it. They are also
      in Postgres, as the live pipeline writes both stores.
    The other tenant gets the same times, so its alerts tie with acme's too.
    """
    return {
        "before": [make_alert(n, tenant, T0 + (n // 2) * 60_000) for n in range(30)],
        "after": [make_alert(n, tenant, T0 + (n - 30) * 30_000) for n in range(30, 60)],
        "live": [make_alert(n, tenant, T0 + 3_600_000 + n * 1000) for n in range(60, 70)],
    }


def everything(alerts: dict[str, list[NormalizedAlert]]) -> list[NormalizedAlert]:
    return [a for part in alerts.values() for a in part]


def newest_first(alerts: list[NormalizedAlert]) -> list[str]:
    return [a.uid for a in sorted(alerts, key=lambda a: (a.received_at_ms, a.uid), reverse=True)]


@dataclass
class World:
    settings: Settings
    alias: str
    schema: SchemaReport
    rollover: dict[str, Any]
    aliases: dict[str, Any]
    mappings: dict[str, Any]  # concrete index → its mapping
    index_settings: dict[str, Any]  # concrete index → its `index` settings
    template_mappings: dict[str, Any]
    by_label: dict[str, int]  # concrete index → count of `labels.cluster: c1`
    contents: dict[str, Counter]  # concrete index → alertId → copies, after steps 1-3
    ism: dict[str, Any] | None  # ISM explain of both indices, where the policy is installed
    alerts: dict[str, dict[str, list[NormalizedAlert]]]  # tenant → part → alerts
    gateway: GatewayProcess
    keys: dict[str, str]
    replayed: bool = False  # set once the store holds two copies of the old alerts


async def index_contents(client, index: str) -> Counter:  # noqa: ANN001
    """alertId → number of documents carrying it in this concrete index."""
    response = await client.search(index=index, query={"match_all": {}}, size=1000, source=["alertId"])
    return Counter(h["_source"]["alertId"] for h in response["hits"]["hits"])


@pytest.fixture(scope="module")
def real_search(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> str:
    engine = search_engine(stack_env["ALERTSTREAM_SEARCH_URL"], tmp_path_factory.getbasetemp())
    if engine == "osmem":
        pytest.skip("the search store is osmem, which has no _rollover (`no handler found`): the lifecycle needs a "
                    "real OpenSearch (ALERTSTREAM_LOCAL_SEARCH=opensearch)")
    return engine


@pytest.fixture(scope="module")
def world(real_search: str, pipeline_settings: Settings, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    alerts = {t: alerts_of(t) for t in ("acme", "other")}

    async def build() -> tuple:
        dsn = await fresh_database(pipeline_settings.require_database_url(), "lifecycle")
        alias = f"life-{uuid.uuid4().hex[:8]}"
        settings = gateway_settings(pipeline_settings, database_url=SecretStr(dsn), search_index=alias,
                                    search_shards=2, search_replicas=0, search_query_max_limit=MAX_LIMIT)
        old, new = first_index(alias), f"{alias}-000002"

        # 1. the worker's sink writes into the write alias
        sink = SearchSink(make_client(settings.search_url), alias, settings)
        await sink.start()
        for tenant in alerts:
            await sink.write(WriteBatch(stored=alerts[tenant]["before"]))

        client = make_client(settings.search_url)
        try:
            # 2. forced rollover through the alias (what the lifecycle's hot phase does)
            rollover = (await client.indices.rollover(alias=alias)).body

            # 3. more alerts: from the sink that was running, and from one started after the rollover
            for tenant in alerts:
                await sink.write(WriteBatch(stored=alerts[tenant]["after"]))
            await sink.close()
            restarted = SearchSink(make_client(settings.search_url), alias, settings)
            await restarted.start()
            try:
                for tenant in alerts:
                    await restarted.write(WriteBatch(stored=alerts[tenant]["live"]))
            finally:
                await restarted.close()

            # the live pipeline wrote the newest alerts, and a few old ones, to Postgres too
            conn = await asyncpg.connect(dsn)
            try:
                await ensure_partition(conn, "alert", TODAY)
            finally:
                await conn.close()
            pg = PostgresSink(dsn)
            await pg.start()
            await pg.write(WriteBatch(stored=alerts["acme"]["live"] + alerts["acme"]["before"][:3]
                                      + alerts["acme"]["after"][:3] + alerts["other"]["live"][:3]))

            await client.indices.refresh(index=alias)
            aliases = (await client.indices.get_alias(name=alias)).body
            mappings = {i: (await client.indices.get_mapping(index=i)).body[i]["mappings"] for i in (old, new)}
            index_settings = {i: (await client.indices.get_settings(index=i)).body[i]["settings"]["index"] for i in (old, new)}
            template = (await client.indices.get_index_template(name=template_name(alias))).body
            template_mappings = template["index_templates"][0]["index_template"]["template"]["mappings"]
            by_label = {i: (await client.count(index=i, query={"term": {"labels.cluster": "c1"}}))["count"] for i in (old, new)}
            contents = {i: await index_contents(client, i) for i in (old, new)}
            ism = None
            if sink.schema.lifecycle == "installed":  # not on this OpenSearch: no ISM plugin (docs/decisions.md)
                ism = (await client.perform_request("GET", f"/_plugins/_ism/explain/{alias}-*",
                                                    headers={"accept": "application/json"})).body
        finally:
            await client.close()
        return (settings, alias, sink.schema, rollover, aliases, mappings, index_settings, template_mappings,
                by_label, contents, ism, dsn)

    (settings, alias, schema, rollover, aliases, mappings, index_settings, template_mappings, by_label, contents, ism,
     dsn) = asyncio.run(build())
    gateway = GatewayProcess(settings, tmp_path_factory.mktemp("lifecyclegw") / "gateway.log")
    try:
        keys = {t: create_key(dsn, t)[1] for t in ("acme", "other")}
        yield World(settings, alias, schema, rollover, aliases, mappings, index_settings, template_mappings, by_label,
                    contents, ism, alerts, gateway, keys)
    finally:
        gateway.stop()


# ------------------------------------------------------------------------------------------ reading

def get(world: World, key_of: str, **params) -> httpx.Response:  # noqa: ANN003
    """`GET /alerts/search` with the key of tenant `key_of` (`params` may hold a `tenant`: ignored)."""
    return httpx.get(world.gateway.url + "/alerts/search", params=params, headers={"X-API-KEY": world.keys[key_of]},
                     timeout=30)


def all_pages(world: World, key_of: str, **params) -> tuple[list[list[dict]], set[str]]:  # noqa: ANN003
    """Every page of one query, following `next_cursor`; and the stores that answered with hits."""
    pages, stores, cursor = [], set(), None
    for _ in range(500):
        response = get(world, key_of, **params, **({"cursor": cursor} if cursor else {}))
        assert response.status_code == 200, response.text
        body = response.json()
        pages.append(body["alerts"])
        stores |= {name for name, n in body["stores"].items() if n}
        cursor = body["next_cursor"]
        if cursor is None:
            return pages, stores
    raise AssertionError("no last page")


def assert_each_once(world: World, tenant: str, limit: int) -> set[str]:
    """Every alert of `tenant` written anywhere is found exactly once, newest first, across pages of
    at most `limit`; nothing of another tenant. Returns the stores that answered.

    A page may be shorter than `limit` before the last one. When a store's `limit + 1` hits hold
    two copies of an alert, nothing older than its last hit is emitted in that page (the
    per-store position, docs/search.md), so a page may hold fewer distinct alerts. `next_cursor`
    continues from there, and nothing is skipped or repeated. For the same reason the last page
    can be empty: the page before it ended on an alert whose second copy filled the store's page."""
    pages, stores = all_pages(world, tenant, limit=limit)
    got = [a["alertId"] for page in pages for a in page]
    assert len(got) == len(set(got)), f"repeats: {[i for i, n in Counter(got).items() if n > 1]}"
    assert got == newest_first(everything(world.alerts[tenant]))  # no gap, no repeat, in order
    sizes = [len(page) for page in pages]
    assert all(0 < n <= limit for n in sizes[:-1]) and sizes[-1] <= limit, sizes
    if not world.replayed:  # every alert once per store: every page but the last is full
        assert all(len(page) == limit for page in pages[:-1])
    assert {a["tenant"] for page in pages for a in page} == {tenant}
    return stores


async def store_only_pages(settings: Settings, tenant: str, limit: int) -> list[str]:
    """`query.federated.search` over the search store alone (both indices, through the alias)."""
    client = make_client(settings.search_url)
    try:
        readers = {"search": SearchReader(client, settings.search_index)}
        flt, after, out = SearchFilter(tenant=tenant), None, []
        for _ in range(500):
            page = await search(readers, flt, after, limit)
            out += [h.alert_id for h in page.hits]
            if page.next_key is None:
                return out
            after = page.next_key
        raise AssertionError("no last page")
    finally:
        await client.close()


# ------------------------------------------------------------------------------------------ tests

def test_lifecycle_policy_is_attached_or_reported_unsupported(world: World) -> None:
    if world.schema.lifecycle == "installed":
        managed = {i: world.ism[i].get("index.plugins.index_state_management.policy_id") or world.ism[i].get("policy_id")
                   for i in (first_index(world.alias), f"{world.alias}-000002")}
        assert managed == dict.fromkeys(managed, policy_name(world.alias)), world.ism
    else:
        # the ISM plugin is not in this OpenSearch (docs/decisions.md): reported, and the template
        # carries no lifecycle setting that the server would refuse at rollover
        assert (world.schema.flavour.value, world.schema.lifecycle) == ("opensearch", "unsupported")
        assert not any("index_state_management" in key or "lifecycle" in key
                       for s in world.index_settings.values() for key in _flat(s))


def _flat(d: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        out += _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def test_forced_rollover_creates_the_next_write_index_with_the_template(world: World) -> None:
    old, new = first_index(world.alias), f"{world.alias}-000002"
    assert (world.rollover["rolled_over"], world.rollover["old_index"], world.rollover["new_index"]) == (True, old, new)
    assert world.aliases == {old: {"aliases": {world.alias: {"is_write_index": False}}},
                             new: {"aliases": {world.alias: {"is_write_index": True}}}}
    # the new index has the template's mapping: labels as one flat_object, keywords, the sort key
    assert world.mappings[new] == world.mappings[old]
    props = world.mappings[new]["properties"]
    assert props == world.template_mappings["properties"]
    assert props["labels"] == {"type": "flat_object"}
    assert props["alertId"] == props["tenant"] == {"type": "keyword"}
    assert props["receivedAt"] == {"type": "date", "format": "epoch_millis"}
    assert props["extra"]["enabled"] in (False, "false")
    assert world.mappings[new]["dynamic"] in (False, "false")
    assert (world.index_settings[new]["number_of_shards"], world.index_settings[new]["number_of_replicas"]) == ("2", "0")
    # labels are searchable by key in both indices (n % 3 == 1: cluster c1, both tenants)
    for index, part in ((old, "before"), (new, "after")):
        expected = sum(1 for t in world.alerts for a in world.alerts[t][part] + (world.alerts[t]["live"] if part == "after" else [])
                       if a.alert.labels["cluster"] == "c1")
        assert world.by_label[index] == expected, index


def test_alerts_written_after_the_rollover_land_in_the_new_index(world: World) -> None:
    old, new = first_index(world.alias), f"{world.alias}-000002"
    before = {a.uid for t in world.alerts for a in world.alerts[t]["before"]}
    after = {a.uid for t in world.alerts for part in ("after", "live") for a in world.alerts[t][part]}
    assert world.contents[old] == Counter(dict.fromkeys(before, 1))
    assert world.contents[new] == Counter(dict.fromkeys(after, 1))


@pytest.mark.parametrize("limit", [1, 2, 7, 30, MAX_LIMIT])
def test_federated_search_finds_every_alert_of_both_indices_once(world: World, limit: int) -> None:
    stores = assert_each_once(world, "acme", limit)
    assert stores == {"postgres", "search"}


def test_a_key_sees_only_its_own_tenant_across_both_indices(world: World) -> None:
    assert_each_once(world, "other", 7)
    pages, _ = all_pages(world, "other", limit=50, tenant="acme")  # a `tenant` parameter is no filter
    assert [a["alertId"] for page in pages for a in page] == newest_first(everything(world.alerts["other"]))
    for part in ("before", "after"):  # acme's alerts in either index are not found with other's key
        assert get(world, "other", fingerprint=world.alerts["acme"][part][4].alert.fingerprint).json()["alerts"] == []
    # filters apply in both indices: acme's "disk full" alerts, in the old and the new index
    pages, _ = all_pages(world, "acme", limit=4, q="disk full")
    assert [a["alertId"] for page in pages for a in page] == newest_first(
        [a for a in everything(world.alerts["acme"]) if a.alert.name.startswith("disk full")])


def test_reindexing_after_the_rollover_shows_no_duplicates(world: World) -> None:
    """The sink writes `index` by `_id` to the alias. After the rollover, an alert first indexed in
    `-000001` is indexed again into `-000002`, so the store holds two copies. That is by design
    (docs/search.md), and federated search must show the alert once."""
    old, new = first_index(world.alias), f"{world.alias}-000002"
    replay = [a for t in world.alerts for a in everything(world.alerts[t])]

    async def reindex() -> dict[str, Counter]:
        sink = SearchSink(make_client(world.settings.search_url), world.alias, world.settings)
        await sink.start()
        try:
            assert await sink.write(WriteBatch(stored=replay)) == len(replay)
        finally:
            await sink.close()
        client = make_client(world.settings.search_url)
        try:
            await client.indices.refresh(index=world.alias)
            return {i: await index_contents(client, i) for i in (old, new)}
        finally:
            await client.close()

    world.replayed = True
    contents = asyncio.run(reindex())
    every = {a.uid for a in replay}
    assert contents[old] == world.contents[old]  # the old index is no longer written to
    assert contents[new] == Counter(dict.fromkeys(every, 1))  # a re-written new alert overwrote itself
    # the old alerts are now in both indices (and three of acme's in Postgres as well): still once each
    for limit in (1, 3, 30, MAX_LIMIT):
        assert_each_once(world, "acme", limit)
    assert_each_once(world, "other", 4)
    for limit in (1, 2, 7):  # the store alone: the two indices' copies meet in the merge
        for tenant in ("acme", "other"):
            assert asyncio.run(store_only_pages(world.settings, tenant, limit)) == newest_first(everything(world.alerts[tenant]))
    tripled = world.alerts["acme"]["before"][0]  # in Postgres, -000001 and -000002
    body = get(world, "acme", fingerprint=tripled.alert.fingerprint).json()
    assert [a["alertId"] for a in body["alerts"]] == [tripled.uid] and body["next_cursor"] is None
    assert body["stores"] == {"postgres": 1, "search": 2}
