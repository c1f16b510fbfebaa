"""The search sink against the real local store (osmem, OpenSearch-compatible): the template and
write alias, idempotent re-indexing, a real partial bulk failure, and 429s from a real HTTP proxy."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import pytest
from aiohttp import ClientSession, web

from config.settings import RetryConfig, Settings
from core.records import RejectedAlerts, WriteBatch
from schemas.alert import Alert, NormalizedAlert
from sinks.base import CircuitBreaker
from sinks.search import SearchSink, make_client
from sinks.search_schema import first_index, template_name

pytestmark = pytest.mark.integration


def alert(n: int, tenant: str = "acme", *, last_received: str = "2025-01-15T10:00:00Z", ms: int = 1_736_935_200_000) -> NormalizedAlert:
    a = Alert(name=f"disk full {n}", last_received=last_received, fingerprint=f"fp-{n}", tenant=tenant,
              severity="critical" if n % 2 else "warning", labels={"cluster": f"c{n % 3}", "team.name": "sre"},
              message=f"volume /data{n} is full")
    return NormalizedAlert(str(uuid.UUID(int=n + 1)), ms + n, f"h{n}", a)


@pytest.fixture
def search_settings(stack_env: dict[str, str]) -> Settings:
    return Settings(search_url=stack_env["ALERTSTREAM_SEARCH_URL"], search_index=f"t-{uuid.uuid4().hex[:8]}",
                    search_shards=2, search_replicas=0,
                    sink_retry=RetryConfig(initial_backoff_s=0.05, max_backoff_s=0.2, attempt_timeout_s=10))


async def _with_sink(settings: Settings, url: str | None = None):  # noqa: ANN202
    sink = SearchSink(make_client(url or settings.search_url), settings.search_index, settings)
    await sink.start()
    return sink


async def _count(settings: Settings, query: dict | None = None) -> int:
    client = make_client(settings.search_url)
    try:
        await client.indices.refresh(index=settings.search_index)
        return (await client.count(index=settings.search_index, query=query or {"match_all": {}}))["count"]
    finally:
        await client.close()


def test_template_is_applied_through_the_write_alias(search_settings: Settings) -> None:
    async def run() -> tuple:
        sink = await _with_sink(search_settings)
        try:
            await sink.write(WriteBatch(stored=[alert(1)]))
            client = make_client(search_settings.search_url)
            try:
                index = first_index(search_settings.search_index)
                aliases = (await client.indices.get_alias(name=search_settings.search_index)).body
                mapping = (await client.indices.get_mapping(index=index)).body[index]["mappings"]
                index_settings = (await client.indices.get_settings(index=index)).body[index]["settings"]["index"]
                template = (await client.indices.get_index_template(name=template_name(search_settings.search_index))).body
                await client.indices.refresh(index=search_settings.search_index)
                by_label = await client.count(index=search_settings.search_index, query={"term": {"labels.cluster": "c1"}})
            finally:
                await client.close()
            return sink.schema, aliases, mapping, index_settings, template, by_label["count"]
        finally:
            await sink.close()

    schema, aliases, mapping, index_settings, template, by_label = asyncio.run(run())
    assert schema.flavour.value == "opensearch"
    assert schema.lifecycle == "unsupported"  # osmem has no ISM endpoint: reported, not fatal
    assert schema.labels_indexed
    assert aliases == {first_index(search_settings.search_index): {"aliases": {search_settings.search_index: {"is_write_index": True}}}}
    assert mapping["properties"]["labels"] == {"type": "flat_object"}
    assert mapping["properties"]["tenant"] == {"type": "keyword"}
    assert mapping["dynamic"] in (False, "false")
    assert (index_settings["number_of_shards"], index_settings["number_of_replicas"]) == ("2", "0")
    assert template["index_templates"][0]["index_template"]["index_patterns"] == [f"{search_settings.search_index}-*"]
    assert by_label == 1  # labels are searchable by key, one field in the mapping


def test_reindexing_the_same_alerts_is_idempotent(search_settings: Settings) -> None:
    batch = WriteBatch(stored=[alert(n) for n in range(50)])

    async def run() -> None:
        sink = await _with_sink(search_settings)
        try:
            for _ in range(3):
                assert await sink.write(batch) == 50
        finally:
            await sink.close()
        # a second process starting on the same store: the template and alias are kept as they are
        sink = await _with_sink(search_settings)
        try:
            assert await sink.write(WriteBatch(stored=batch.stored[:10])) == 10
        finally:
            await sink.close()

    asyncio.run(run())
    assert asyncio.run(_count(search_settings)) == 50


def test_partial_bulk_failure_goes_to_the_dlq_with_its_reason_and_the_rest_is_written(search_settings: Settings) -> None:
    """osmem enforces the mapping: a `lastReceived` that is not a date is refused per document (400)."""
    good = [alert(n) for n in range(10)]
    bad = [alert(100, last_received="not a date"), alert(101, last_received="yesterday-ish")]
    dead: dict[str, str] = {}

    async def dead_letter(item: NormalizedAlert, reason: str) -> None:  # the worker sends these to the DLQ topic
        dead[item.uid] = reason

    async def run() -> None:
        sink = await _with_sink(search_settings)
        try:
            with pytest.raises(RejectedAlerts) as info:
                await sink.write(WriteBatch(stored=good[:5] + bad + good[5:]))
            assert set(info.value.rejected) == {b.uid for b in bad} and not info.value.retry.stored
            await CircuitBreaker(sink, search_settings.sink_retry, dead_letter).write(WriteBatch(stored=good + bad))
        finally:
            await sink.close()

    asyncio.run(run())
    assert set(dead) == {b.uid for b in bad}
    assert all("400" in r and "mapper_parsing_exception" in r and "lastReceived" in r for r in dead.values())
    assert asyncio.run(_count(search_settings)) == 10


def test_each_acknowledged_document_observes_its_ingest_to_indexed_latency(search_settings: Settings) -> None:
    """`alertstream_e2e_index_latency_seconds`: one observation per document the real store took,
    none for one it refused; each the time since its record's Kafka timestamp."""
    from prometheus_client import REGISTRY

    def sample(suffix: str) -> float:
        return REGISTRY.get_sample_value(f"alertstream_e2e_index_latency_seconds_{suffix}") or 0.0

    count, total = sample("count"), sample("sum")

    async def run() -> float:
        sink = await _with_sink(search_settings)
        try:
            started = time.time()
            sent_ms = int(started * 1000) - 3000  # the records were produced 3 s ago
            good = [alert(n, ms=sent_ms) for n in range(10)]
            bad = [alert(100, last_received="not a date", ms=sent_ms)]
            with pytest.raises(RejectedAlerts):
                await sink.write(WriteBatch(stored=good + bad))
            return time.time() - started
        finally:
            await sink.close()

    took = asyncio.run(run())
    assert sample("count") - count == 10
    assert 10 * 2.95 <= sample("sum") - total <= 10 * (3.1 + took)


class ThrottlingProxy:
    """A real HTTP proxy in front of osmem that answers the first `bulk_429s` bulk requests with
    429 and, for the next `item_429s` bulk requests, marks the first document of the response as
    429. osmem never throttles, and a real Elasticsearch does both under load (es_rejected_execution_exception);
    this is the only honest way to produce them here."""

    def __init__(self, upstream: str, bulk_429s: int = 0, item_429s: int = 0) -> None:
        self.upstream, self.bulk_429s, self.item_429s = upstream.rstrip("/"), bulk_429s, item_429s
        self.bulk_requests = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        is_bulk = request.path.endswith("/_bulk")
        if is_bulk:
            self.bulk_requests += 1
            if self.bulk_429s > 0:
                self.bulk_429s -= 1
                return web.json_response({"error": {"type": "es_rejected_execution_exception", "reason": "rejected execution"},
                                          "status": 429}, status=429)
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept", "authorization")}
        async with ClientSession() as session, session.request(request.method, self.upstream + request.path_qs,
                                                              data=body, headers=headers) as upstream:
            payload = await upstream.read()
            response_headers = {k: v for k, v in upstream.headers.items() if k.lower() in ("content-type", "x-elastic-product")}
            if is_bulk and self.item_429s > 0 and upstream.status == 200:
                import orjson

                self.item_429s -= 1
                result = orjson.loads(payload)
                first = next(iter(result["items"][0].values()))
                first.update(status=429, error={"type": "es_rejected_execution_exception", "reason": "queue full"})
                result["errors"] = True
                payload = orjson.dumps(result)
            return web.Response(body=payload, status=upstream.status, headers=response_headers)


@pytest.fixture
def proxy_factory(search_settings: Settings) -> Iterator:  # noqa: ANN001
    runners = []

    async def start(proxy: ThrottlingProxy) -> str:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", proxy.handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # noqa: SLF001 - the bound port

    yield start, runners


def test_429s_are_retried_with_backoff_and_nothing_is_lost(search_settings: Settings, proxy_factory) -> None:  # noqa: ANN001
    start, runners = proxy_factory
    proxy = ThrottlingProxy(search_settings.search_url, bulk_429s=2, item_429s=2)
    batch = WriteBatch(stored=[alert(n) for n in range(20)])

    waits: list[float] = []

    async def wait(seconds: float) -> None:
        waits.append(seconds)
        await asyncio.sleep(seconds)

    async def never(*_) -> None:  # noqa: ANN002
        raise AssertionError("nothing is still throttled after the retries")

    async def run() -> None:
        url = await start(proxy)
        sink = await _with_sink(search_settings, url)
        try:
            # the sink sends one request per write; the breaker's shared backoff retries the throttled part
            await CircuitBreaker(sink, search_settings.sink_retry, never, wait=wait, retry_later=never,
                                 throttle_retries=search_settings.search_throttle_retries).write(batch)
        finally:
            await sink.close()
            for r in runners:
                await r.cleanup()

    asyncio.run(run())
    assert proxy.bulk_requests == 5  # 2 whole-request 429s, then 2 responses with a throttled document, then the last one
    assert len(waits) == 4
    assert asyncio.run(_count(search_settings)) == 20


def test_documents_still_throttled_after_the_retries_are_handed_back_not_dropped(search_settings: Settings, proxy_factory) -> None:  # noqa: ANN001
    start, runners = proxy_factory
    settings = search_settings.model_copy(update={"search_throttle_retries": 1})
    proxy = ThrottlingProxy(settings.search_url, bulk_429s=5)
    batch = WriteBatch(stored=[alert(n) for n in range(5)])
    parked: list[WriteBatch] = []

    async def retry_later(b: WriteBatch, exc: Exception) -> None:  # the worker parks these on a retry topic
        parked.append(b)

    async def run() -> None:
        url = await start(proxy)
        sink = await _with_sink(settings, url)
        try:
            with pytest.raises(RejectedAlerts) as info:  # one request, no retries of the sink's own
                await sink.write(batch)
            assert not info.value.rejected and len(info.value.retry.stored) == 5 and proxy.bulk_requests == 1
            await CircuitBreaker(sink, settings.sink_retry, lambda *_: None, retry_later=retry_later,
                                 throttle_retries=settings.search_throttle_retries).write(batch)
        finally:
            await sink.close()
            for r in runners:
                await r.cleanup()

    asyncio.run(run())
    assert [len(b.stored) for b in parked] == [5]
    assert proxy.bulk_requests == 3  # the sink's one, then the breaker's first attempt and its one retry


def test_elasticsearch_flavour_on_a_store_without_ilm_or_flattened_falls_back_and_says_so(search_settings: Settings) -> None:
    """Forced to the Elasticsearch flavour, osmem refuses the ILM endpoint and `flattened`: the sink
    reports both, installs a template without them, and writes all the same."""
    from sinks.search_schema import LIFECYCLE_POLICIES, TEMPLATE_INSTALLS

    settings = search_settings.model_copy(update={"search_flavour": "elasticsearch"})
    unsupported = LIFECYCLE_POLICIES.labels("unsupported")._value.get()  # noqa: SLF001 - reading our own counter
    fallbacks = TEMPLATE_INSTALLS.labels("labels_fallback")._value.get()  # noqa: SLF001

    async def run():  # noqa: ANN202
        sink = await _with_sink(settings)
        try:
            assert await sink.write(WriteBatch(stored=[alert(n) for n in range(3)])) == 3
            client = make_client(settings.search_url)
            try:
                index = first_index(settings.search_index)
                return sink.schema, (await client.indices.get_mapping(index=index)).body[index]["mappings"]
            finally:
                await client.close()
        finally:
            await sink.close()

    schema, mapping = asyncio.run(run())
    assert (schema.flavour.value, schema.lifecycle, schema.labels_indexed) == ("elasticsearch", "unsupported", False)
    assert mapping["properties"]["labels"]["enabled"] in (False, "false")
    assert LIFECYCLE_POLICIES.labels("unsupported")._value.get() == unsupported + 1  # noqa: SLF001
    assert TEMPLATE_INSTALLS.labels("labels_fallback")._value.get() == fallbacks + 1  # noqa: SLF001
    assert asyncio.run(_count(settings)) == 3
