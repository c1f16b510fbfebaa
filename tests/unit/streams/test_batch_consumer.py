"""The batch consumers' fetch settings reach aiokafka (the broker's side is measured by the bench)."""

from __future__ import annotations

from config.settings import Settings
from streams.batch_consumer import BatchConsumer


async def test_the_broker_may_hold_a_fetch_to_fill_it() -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:9", consumer_fetch_min_bytes=4096, consumer_fetch_max_wait_ms=80)
    consumer = BatchConsumer(settings, group_id="g", topic="t")._consumer  # built, never started
    assert (consumer._fetch_min_bytes, consumer._fetch_max_wait_ms) == (4096, 80)
    defaults = BatchConsumer(Settings(kafka_bootstrap="127.0.0.1:9"), group_id="g", topic="t")._consumer
    assert defaults._fetch_min_bytes == 1024 * 1024 and defaults._fetch_max_wait_ms == 50


async def test_a_sparse_topic_is_fetched_from_its_first_byte_with_a_long_idle_wait() -> None:
    settings = Settings(kafka_bootstrap="127.0.0.1:9", consumer_sparse_fetch_max_wait_ms=700)
    consumer = BatchConsumer(settings, group_id="g", topic="t", sparse=True)._consumer
    assert (consumer._fetch_min_bytes, consumer._fetch_max_wait_ms) == (1, 700)
