"""Poison records reach the DLQ with their reason while good records keep flowing."""

from __future__ import annotations

import time

import orjson
import pytest
from confluent_kafka import Consumer, Producer

from tests.conftest import wait_until
from tests.integration.streams.test_pipeline_e2e import generic_alert, sql

pytestmark = pytest.mark.integration
TENANT = "poison"

POISON = {
    "malformed": ("keep", b'{"name": "half a body", '),
    "wrong_types": ("keep", orjson.dumps({"name": "x", "labels": ["not", "a", "map"]})),
    "huge": ("keep", b'{"name": "' + b"x" * (10 * 1024 * 1024) + b'"}'),
    "bad_utf8": ("keep", b'{"name": "caf\xe9 \xff"}'),
    "unknown_provider": ("nagios-xi", orjson.dumps({"name": "x"})),
}
EXPECTED_REASON = {"malformed": b"malformed_json", "wrong_types": b"invalid_shape", "huge": b"too_large",
                   "bad_utf8": b"malformed_json", "unknown_provider": b"unknown_provider"}


def test_poison_records_go_to_the_dlq_and_good_ones_flow(worker, pipeline_settings) -> None:  # noqa: ANN001
    settings = pipeline_settings
    producer = Producer({"bootstrap.servers": settings.require_kafka(), "message.max.bytes": 16 * 1024 * 1024})
    good = 0
    for name, (provider, value) in POISON.items():
        for _ in range(20):  # good records around every poison record
            producer.produce(settings.topic_alerts, key=b"g%d" % good, value=generic_alert(90_000 + good),
                             headers=[("provider", b"keep"), ("tenant", TENANT.encode())])
            good += 1
        producer.produce(settings.topic_alerts, key=name.encode(), value=value,
                         headers=[("provider", provider.encode()), ("tenant", TENANT.encode()), ("case", name.encode())])
    assert producer.flush(30) == 0

    dsn = settings.require_database_url()
    wait_until(lambda: sql(dsn, "SELECT count(*) AS n FROM last_alert WHERE tenant = $1", TENANT)[0]["n"] == good,
               timeout=120, what="every good record stored")

    consumer = Consumer({"bootstrap.servers": settings.require_kafka(), "group.id": "poison-dlq-reader",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False,
                         "fetch.max.bytes": 64 * 1024 * 1024, "max.partition.fetch.bytes": 32 * 1024 * 1024,
                         "receive.message.max.bytes": 80 * 1024 * 1024})
    consumer.subscribe([settings.topic_dlq])
    letters: dict[str, tuple[dict, bytes]] = {}
    deadline = time.monotonic() + 90
    try:
        while len(letters) < len(POISON) and time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            headers = dict(msg.headers() or [])
            if headers.get("tenant") == TENANT.encode():
                letters[headers["case"].decode()] = (headers, msg.value())
    finally:
        consumer.close()
    assert set(letters) == set(POISON)
    for name, (headers, value) in letters.items():
        assert headers["dlq_reason"] == EXPECTED_REASON[name], (name, headers["dlq_reason"], headers["dlq_detail"])
        assert value == POISON[name][1], f"{name}: the DLQ keeps the original bytes"
