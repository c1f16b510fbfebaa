"""A record parked on retry tier 1 comes back to its target topic after the tier's delay."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer

from tests.conftest import wait_until
from tests.integration.streams.test_pipeline_e2e import generic_alert, sql

pytestmark = pytest.mark.integration


def test_parked_record_is_forwarded_after_its_delay(worker, pipeline_settings) -> None:  # noqa: ANN001
    settings = pipeline_settings
    producer = Producer({"bootstrap.servers": settings.require_kafka()})
    parked_at = time.time()
    producer.produce(f"{settings.topic_retry_prefix}1", key=b"r", value=generic_alert(777_777), headers=[
        ("provider", b"keep"), ("tenant", b"retried"), ("retry_target", settings.topic_alerts.encode()),
        ("dlq_attempts", b"1"), ("dlq_error_class", b"TimeoutError"),
    ])
    assert producer.flush(10) == 0
    rows = wait_until(lambda: sql(settings.require_database_url(),
                                  "SELECT received_at FROM alert WHERE tenant = 'retried'"), timeout=120, what="forwarded and stored")
    waited = rows[0]["received_at"].timestamp() - parked_at  # re-produced to `alerts` no earlier than the delay
    assert waited >= settings.retry_delays_s[0] - 0.5, waited
