"""A sparse topic's consumer against the session's broker (streams/batch_consumer.py): the broker
answers its fetch on the first record, long before the idle wait, so the critical lane and the
retry tiers add no fetch latency while asking the broker seldom when idle."""

from __future__ import annotations

import asyncio
import time

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from config.settings import Settings
from streams.batch_consumer import BatchConsumer


async def test_a_sparse_consumer_gets_a_record_at_once_though_its_fetch_may_wait_long(pipeline_settings: Settings) -> None:
    s = pipeline_settings.model_copy(update={"consumer_sparse_fetch_max_wait_ms": 4000})
    consumer, topic, first = await joined_consumer(s, "sparse-fetch", sparse=True)
    producer = AIOKafkaProducer(bootstrap_servers=s.require_kafka())
    await producer.start()
    try:
        idle_fetches = await fetches_in(consumer, 2.0)  # its fetch is held by the broker meanwhile
        sent = time.monotonic()
        await producer.send_and_wait(topic, b"critical")
        records = await asyncio.wait_for(first, 10)
        took = time.monotonic() - sent
        assert [r.value for r in records] == [b"critical"]
        # a bulk consumer would be held for fetch.min.bytes; this one is answered on arrival, well
        # inside the 4 s the broker may hold an empty fetch
        assert took < 1.5, f"the record took {took:.2f} s"
        assert idle_fetches <= 2, f"{idle_fetches} fetches in 2 s of idle"  # a bulk consumer's: below
    finally:
        first.cancel()
        await producer.stop()
        await consumer.stop()


async def test_a_bulk_consumer_asks_often_when_idle(pipeline_settings: Settings) -> None:
    """The other side of the trade, why sparse topics have their own wait: 50 ms, so about 40 fetches."""
    consumer, _, pending = await joined_consumer(pipeline_settings, "bulk-fetch", sparse=False)
    try:
        assert await fetches_in(consumer, 2.0) >= 10
    finally:
        pending.cancel()
        await consumer.stop()


async def joined_consumer(s: Settings, prefix: str, *, sparse: bool) -> tuple[BatchConsumer, str, asyncio.Future]:
    """A started consumer of a new one-partition topic, its partition assigned, and the future of
    its first batch (it keeps fetching meanwhile)."""
    topic = f"{prefix}-{time.time_ns()}"
    admin = AIOKafkaAdminClient(bootstrap_servers=s.require_kafka())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    consumer = BatchConsumer(s, group_id=f"{topic}-g", topic=topic, sparse=sparse)
    await consumer.start()
    first = asyncio.ensure_future(anext(consumer.batches(s.stream_batch)))
    deadline = time.monotonic() + 30
    while not consumer._consumer.assignment():
        if time.monotonic() > deadline:
            first.cancel()
            await consumer.stop()
            raise AssertionError("the consumer never got its partition")
        await asyncio.sleep(0.1)
    return consumer, topic, first


async def fetches_in(consumer: BatchConsumer, seconds: float) -> int:
    """Fetch requests the consumer sent to the broker in `seconds` (its client's real requests, counted)."""
    client = consumer._consumer._client
    real_send = client.send
    count = 0

    async def counting(node_id, request, **kwargs):  # noqa: ANN001, ANN003, ANN202
        nonlocal count
        count += type(request).__name__.startswith("FetchRequest")
        return await real_send(node_id, request, **kwargs)

    client.send = counting
    try:
        await asyncio.sleep(seconds)
    finally:
        del client.send  # the class's method again
    return count
