"""Re-sends through a real worker: the normalize stage takes them from its re-send cache
(pipeline/resend_cache.py), and each sighting still carries its own record's time and is counted
once. Alertmanager alerts have no time of their own, so `lastReceived` is the record's."""

from __future__ import annotations

import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest
from confluent_kafka import Producer

import schemas
from streams.topics import ensure_topics
from tests.conftest import WorkerProcess, wait_until
from tests.integration.streams.test_pipeline_e2e import sql
from tests.integration.streams.test_worker_restart import restart_settings, sighted_and_rows

pytestmark = pytest.mark.integration
WEBHOOK = (Path(schemas.__file__).parent / "examples" / "prometheus_alertmanager_webhook.json").read_bytes()
TENANTS = ("resend-a", "resend-b")  # the session's Postgres is shared: tenants of their own


def metric(port: int, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def produce_at(bootstrap: str, topic: str, tenant: str, timestamp_ms: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    producer.produce(topic, key=b"group", value=WEBHOOK, timestamp=timestamp_ms,
                     headers=[("provider", b"prometheus"), ("tenant", tenant.encode())])
    assert producer.flush(30) == 0


def test_a_resent_webhook_is_taken_from_the_cache_with_its_own_time(stack_env, tmp_path) -> None:  # noqa: ANN001
    settings = restart_settings(stack_env, tmp_path, "resend").model_copy(update={
        "topic_partitions": 1, "producer_one_record_batches": False})
    ensure_topics(settings)
    dsn = settings.require_database_url()
    now_ms = int(time.time() * 1000)
    first, second = now_ms - 60_000, now_ms - 1_000
    worker = WorkerProcess(settings, tmp_path / "resend.log")
    try:
        produce_at(settings.require_kafka(), settings.topic_alerts, TENANTS[0], first)
        wait_until(lambda: sighted_and_rows(dsn, TENANTS[0])[0] >= 2, timeout=120, what="the first webhook's two alerts")
        produce_at(settings.require_kafka(), settings.topic_alerts, TENANTS[0], second)  # the same bytes again
        produce_at(settings.require_kafka(), settings.topic_alerts, TENANTS[1], second)  # and for another tenant
        wait_until(lambda: sighted_and_rows(dsn, TENANTS[0])[0] >= 4 and sighted_and_rows(dsn, TENANTS[1])[0] >= 2,
                   timeout=120, what="the re-sends")
        port = settings.worker_web_port
        assert metric(port, "alertstream_normalize_resend_cache_hits_total") == 1  # tenant b's is a key of its own
        assert metric(port, "alertstream_normalize_resend_cache_misses_total") == 2
        assert metric(port, "alertstream_normalize_resend_cache_bytes") > len(WEBHOOK)
    finally:
        worker.stop()
    # each tenant: the webhook's two alerts, stored once (the re-send is an exact duplicate), every
    # sighting counted, and the last one at the re-send's own time
    second_time = datetime.fromtimestamp(second / 1000, tz=timezone.utc)
    for tenant, sightings in ((TENANTS[0], 2), (TENANTS[1], 1)):
        rows = sql(dsn, "SELECT received_count, first_received, last_received FROM last_alert WHERE tenant = $1", tenant)
        assert len(rows) == 2
        assert all(r["received_count"] == sightings and r["last_received"] == second_time for r in rows), rows
        assert sighted_and_rows(dsn, tenant)[1] == 2
    first_time = datetime.fromtimestamp(first / 1000, tz=timezone.utc)
    assert all(r["first_received"] == first_time
               for r in sql(dsn, "SELECT first_received FROM last_alert WHERE tenant = $1", TENANTS[0]))
