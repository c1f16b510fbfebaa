"""The agent consumer's fetch bounds reach the fetcher aiokafka builds when it starts, against the
session's broker (streams/app.py `_worker_consumer_with_fuller_fetches`; the app side:
tests/unit/streams/test_app.py)."""

from __future__ import annotations

import time
from pathlib import Path

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from config.settings import Settings
from streams.app import create_app


async def test_the_started_fetcher_waits_for_the_configured_bytes(pipeline_settings: Settings, tmp_path: Path) -> None:
    s = pipeline_settings.model_copy(update={"data_dir": tmp_path, "consumer_fetch_min_bytes": 4 * 1024 * 1024,
                                             "consumer_fetch_max_wait_ms": 400})
    app = create_app(s)
    consumer = app.consumer._thread._create_worker_consumer(app.transport)
    await consumer.start()
    try:
        assert consumer._fetcher._fetch_min_bytes == 4 * 1024 * 1024
        assert consumer._fetcher._fetch_max_wait_ms == 400
        # and the broker honours them: one small record is held for the wait, not answered at once
        topic = f"agent-fetch-{time.time_ns()}"
        admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, 1, 1)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(bootstrap_servers=s.kafka_bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(topic, b"x")
        finally:
            await producer.stop()
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        started = time.monotonic()
        batch = await consumer.getmany(tp, timeout_ms=5000)
        waited = time.monotonic() - started
        assert [m.value for m in batch[tp]] == [b"x"]
        assert waited >= 0.35  # the broker held the fetch for the 4 MiB it never got
    finally:
        await consumer.stop()
