"""End to end on the real stack: a real Kafka producer, the real worker process,
real Postgres and the real search store; exact rows, documents and DLQ records."""

from __future__ import annotations

import asyncio
import copy

import asyncpg
import orjson
import pytest
from confluent_kafka import Consumer, Producer

from streams.demo import example
from tests.conftest import wait_until

pytestmark = pytest.mark.integration

IDENTITIES = 1000
WEBHOOKS = 100
MALFORMED = b'{"name": "cut off", "status": '
NAMELESS = orjson.dumps({"status": "firing", "severity": "high"})


def generic_alert(i: int, changed: bool = False) -> bytes:
    alert = copy.deepcopy(example("keep_generic_alertdto.json"))
    alert["fingerprint"] = f"e2e-{i}"
    alert["name"] = f"queue lag {i}"
    if changed:
        alert["lag"] = 99_999
    return orjson.dumps(alert)


def alertmanager_webhook(i: int) -> bytes:
    hook = copy.deepcopy(example("prometheus_alertmanager_webhook.json"))
    for j, item in enumerate(hook["alerts"]):
        item["fingerprint"] = f"am-{i}-{j}"
    return orjson.dumps(hook)


def build_input() -> list[tuple[str, bytes, bytes]]:
    """(provider, key, value): 1000 identities sent three times (the third time a quarter
    changed), 100 Alertmanager webhooks of 2 alerts sent twice, one malformed and one
    invalid record in the middle."""
    records = []
    for round_ in range(3):
        for i in range(IDENTITIES):
            records.append(("keep", f"g{i}".encode(), generic_alert(i, changed=(round_ == 2 and i % 4 == 0))))
        if round_ == 1:
            records.append(("keep", b"bad", MALFORMED))
            records.append(("keep", b"nameless", NAMELESS))
    for _ in range(2):
        for i in range(WEBHOOKS):
            records.append(("prometheus", f"am{i}".encode(), alertmanager_webhook(i)))
    return records


EXPECTED_ALERTS = IDENTITIES * 3 + WEBHOOKS * 2 * 2
EXPECTED_ROWS = IDENTITIES + IDENTITIES // 4 + WEBHOOKS * 2
EXPECTED_IDENTITIES = IDENTITIES + WEBHOOKS * 2


def produce(bootstrap: str, topic: str, records: list[tuple[str, bytes, bytes]], tenant: str = "acme") -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 10, "acks": "all"})
    failures = []
    for provider, key, value in records:
        producer.produce(topic, key=key, value=value, headers=[("provider", provider.encode()), ("tenant", tenant.encode())],
                         on_delivery=lambda err, msg: failures.append(err) if err else None)
        producer.poll(0)
    assert producer.flush(30) == 0
    assert not failures


async def fetch(dsn: str, query: str, *args):  # noqa: ANN001
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def sql(dsn: str, query: str, *args):  # noqa: ANN001
    return asyncio.run(fetch(dsn, query, *args))


@pytest.fixture(scope="module")
def processed(worker, pipeline_settings):  # noqa: ANN001
    """Produce the input once and wait until every alert is accounted for in last_alert."""
    settings = pipeline_settings
    produce(settings.require_kafka(), settings.topic_alerts, build_input())
    dsn = settings.require_database_url()

    def all_sighted() -> bool:
        assert worker.proc.poll() is None, f"worker died:\n{worker.log_tail()}"
        total = sql(dsn, "SELECT coalesce(sum(received_count), 0) AS n FROM last_alert WHERE tenant = 'acme'")[0]["n"]
        return total >= EXPECTED_ALERTS

    wait_until(all_sighted, timeout=180, what="all alerts sighted in last_alert")
    return settings


def test_alert_rows_are_exactly_new_and_changed_alerts(processed) -> None:  # noqa: ANN001
    dsn = processed.require_database_url()
    rows = sql(dsn, "SELECT fingerprint, count(*) AS n FROM alert WHERE tenant = 'acme' GROUP BY fingerprint")
    per_fingerprint = {r["fingerprint"]: r["n"] for r in rows}
    assert sum(per_fingerprint.values()) == EXPECTED_ROWS
    for i in range(IDENTITIES):
        assert per_fingerprint[f"e2e-{i}"] == (2 if i % 4 == 0 else 1), i
    for i in range(WEBHOOKS):
        assert per_fingerprint[f"am-{i}-0"] == per_fingerprint[f"am-{i}-1"] == 1


def test_last_alert_has_one_row_per_identity_with_counts_and_newest_content(processed) -> None:  # noqa: ANN001
    dsn = processed.require_database_url()
    rows = {r["fingerprint"]: r for r in sql(dsn, "SELECT * FROM last_alert WHERE tenant = 'acme'")}
    assert len(rows) == EXPECTED_IDENTITIES
    assert rows["e2e-0"]["received_count"] == 3 and rows["am-0-1"]["received_count"] == 2
    assert rows["am-0-0"]["status"] == "firing" and rows["am-0-1"]["status"] == "resolved"
    assert rows["e2e-0"]["last_received"] >= rows["e2e-0"]["first_received"]
    # last_alert points at the newest stored row: the changed content where i % 4 == 0
    pointed = sql(dsn, """
        SELECT la.fingerprint, la.content_hash AS la_hash, a.content_hash, a.event->'extra'->>'lag' AS lag
        FROM last_alert la JOIN alert a ON a.id = la.alert_id WHERE la.tenant = 'acme'""")
    assert len(pointed) == EXPECTED_IDENTITIES
    for r in pointed:
        assert r["la_hash"] == r["content_hash"]
        if r["fingerprint"].startswith("e2e-"):
            i = int(r["fingerprint"].removeprefix("e2e-"))
            assert r["lag"] == ("99999" if i % 4 == 0 else "48211"), r["fingerprint"]


def test_search_store_holds_one_document_per_alert_row(processed) -> None:  # noqa: ANN001
    from sinks.search import make_client

    dsn = processed.require_database_url()
    ids = {str(r["id"]) for r in sql(dsn, "SELECT id FROM alert WHERE tenant = 'acme'")}

    async def documents() -> set[str]:
        client = make_client(processed.search_url)
        try:
            await client.indices.refresh(index=processed.search_index)
            found: set[str] = set()
            response = await client.search(index=processed.search_index, query={"term": {"tenant": "acme"}},
                                           size=1000, sort=[{"alertId": "asc"}])
            while response["hits"]["hits"]:
                found.update(h["_id"] for h in response["hits"]["hits"])
                response = await client.search(index=processed.search_index, query={"term": {"tenant": "acme"}},
                                               size=1000, sort=[{"alertId": "asc"}],
                                               search_after=response["hits"]["hits"][-1]["sort"])
            return found
        finally:
            await client.close()

    # the indexer is its own consumer: wait until it has caught up, then compare exactly
    wait_until(lambda: len(asyncio.run(documents())) >= len(ids), timeout=120, interval=2, what="search indexer caught up")
    assert asyncio.run(documents()) == ids


def test_invalid_records_reach_the_dlq_with_reason_and_original_bytes(processed) -> None:  # noqa: ANN001
    consumer = Consumer({"bootstrap.servers": processed.require_kafka(), "group.id": "e2e-dlq-reader",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([processed.topic_dlq])
    letters = {}
    try:
        deadline = 60
        import time
        end = time.monotonic() + deadline
        while len(letters) < 2 and time.monotonic() < end:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            headers = dict(msg.headers())
            if headers.get("tenant") == b"acme":
                letters[msg.value()] = headers
    finally:
        consumer.close()
    assert set(letters) == {MALFORMED, NAMELESS}
    assert letters[MALFORMED]["dlq_reason"] == b"malformed_json"
    assert letters[NAMELESS]["dlq_reason"] == b"missing_field"
    assert b"name" in letters[NAMELESS]["dlq_detail"]
    for headers in letters.values():
        assert headers["dlq_topic"] == processed.topic_alerts.encode()
        assert int(headers["dlq_offset"]) >= 0
        assert headers["provider"] == b"keep"
