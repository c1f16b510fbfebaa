"""Consumer-side throttling with a real worker: a flooding provider is delayed through the first
retry tier, every one of its alerts is still stored, and other providers are not held back."""

from __future__ import annotations


import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from config.settings import BatchConfig
from streams.topics import ensure_topics
from tests.conftest import WorkerProcess, wait_until
from tests.integration.streams.test_pipeline_e2e import generic_alert, produce, sql
from tests.integration.streams.test_worker_restart import restart_settings

pytestmark = pytest.mark.integration
EXAMPLE = "schemas/examples/zabbix_webhook.json"
TENANT = "throttled"


def zabbix(i: int) -> bytes:
    from tests.conftest import REPO

    body = orjson.loads((REPO / EXAMPLE).read_bytes())
    body.update(id=str(1000 + i), name=f"flood {i}")
    return orjson.dumps(body)


def headers_on(bootstrap: str, topic: str, partitions: int) -> list[dict[str, bytes]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "throttle-reader", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        out, idle = [], 0
        while idle < 3:
            msg = consumer.poll(1.0)
            if msg is None:
                idle += 1
            elif not msg.error():
                out.append(dict(msg.headers() or []))
        return out
    finally:
        consumer.close()


def test_a_flooding_provider_is_delayed_not_dropped(stack_env, tmp_path) -> None:  # noqa: ANN001
    settings = restart_settings(stack_env, tmp_path / "w", "throttle").model_copy(update={
        "producer_one_record_batches": False, "table_recovery_consistency_check": False,
        "retry_delays_s": [2.0, 5.0, 10.0], "stream_batch": BatchConfig(max_events=100, timeout_s=0.1),
        "consumer_provider_rate_limits": {"zabbix": {"rate_per_s": 2, "burst": 2}}})
    ensure_topics(settings)
    dsn = settings.require_database_url()
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        produce(settings.require_kafka(), settings.topic_alerts, [("keep", b"warm", generic_alert(-1))], tenant="throttle-warmup")
        wait_until(lambda: sql(dsn, "SELECT 1 FROM alert WHERE tenant = 'throttle-warmup'"), timeout=120, what="worker up")
        produce(settings.require_kafka(), settings.topic_alerts, [("zabbix", f"z{i}".encode(), zabbix(i)) for i in range(10)], tenant=TENANT)
        produce(settings.require_kafka(), settings.topic_alerts, [("keep", f"k{i}".encode(), generic_alert(900 + i)) for i in range(3)], tenant=TENANT)

        def stored() -> list:
            assert worker.proc.poll() is None, worker.log_tail()
            return sql(dsn, "SELECT provider_type, received_at FROM alert WHERE tenant = $1", TENANT)
        rows = wait_until(lambda: (r := stored()) and len(r) >= 13 and r, timeout=90, interval=1, what="all 13 alerts stored")
    finally:
        worker.stop()
    assert len(rows) == 13
    flood = sorted(r["received_at"] for r in rows if r["provider_type"] == "zabbix")
    others = sorted(r["received_at"] for r in rows if r["provider_type"] != "zabbix")
    assert len(flood) == 10 and len(others) == 3
    # re-injected records carry their new position's time: the last flood alerts came back through the tier
    assert (flood[-1] - flood[0]).total_seconds() >= settings.retry_delays_s[0] - 0.5
    assert max(others) < flood[-1]
    parked = headers_on(settings.require_kafka(), f"{settings.topic_retry_prefix}1", settings.topic_partitions)
    assert parked and all(h["provider"] == b"zabbix" and h["retry_target"] == settings.topic_alerts.encode()
                          and int(h["throttled_count"]) >= 1 and "dlq_attempts" not in h for h in parked)
    assert not headers_on(settings.require_kafka(), settings.topic_dlq, settings.topic_partitions)
