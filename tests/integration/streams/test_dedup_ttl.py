"""Identities not seen for the state TTL are swept from the dedup table (and its changelog):
their next sighting is new again. Runs a worker with a 3 s TTL and the Bloom filter on."""

from __future__ import annotations

import time
import urllib.request

import pytest

from streams.topics import ensure_topics
from tests.conftest import WorkerProcess, wait_until
from tests.integration.streams.test_pipeline_e2e import generic_alert, produce
from tests.integration.streams.test_worker_restart import restart_settings, sighted_and_rows

pytestmark = pytest.mark.integration
TENANT = "ttl"  # the session's Postgres is shared: a tenant of its own


def expired_total(port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("alertstream_dedup_state_expired_total"))


def test_inactive_identities_expire_and_come_back_as_new(stack_env, tmp_path) -> None:  # noqa: ANN001
    settings = restart_settings(stack_env, tmp_path, "ttl").model_copy(update={
        "topic_partitions": 1,
        "producer_one_record_batches": False, "dedup_state_ttl_s": 3, "dedup_bloom_capacity": 10_000,
    })
    ensure_topics(settings)
    dsn = settings.require_database_url()
    send = lambda records: produce(settings.require_kafka(), settings.topic_alerts, records, tenant=TENANT)  # noqa: E731
    old = [("keep", f"o{i}".encode(), generic_alert(30_000 + i)) for i in range(20)]
    worker = WorkerProcess(settings, tmp_path / "ttl.log")
    try:
        send(old + old)  # 20 identities, each seen twice: 20 rows
        wait_until(lambda: sighted_and_rows(dsn, TENANT)[0] >= 40, timeout=120, what="first sightings processed")
        assert sighted_and_rows(dsn, TENANT)[1] == 20
        time.sleep(4)  # past the TTL
        # traffic on the partition drives the sweep; then the old identities come back
        send([("keep", b"k", generic_alert(40_000))])
        wait_until(lambda: expired_total(settings.worker_web_port) >= 20, timeout=60, what="the sweep expired the old identities")
        send(old)
        wait_until(lambda: sighted_and_rows(dsn, TENANT)[0] >= 61, timeout=60, what="re-sent identities processed")
        assert sighted_and_rows(dsn, TENANT)[1] == 20 + 1 + 20  # forgotten identities are stored as new again
    finally:
        worker.stop()
