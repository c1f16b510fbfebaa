"""A batch consumer for stateless stages: many records per call, offsets committed explicitly.

The caller commits a batch only after its output is durable, so a crash or a
rebalance replays at most the batches in flight (at-least-once).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, RebalanceInProgressError

from config.settings import BatchConfig, Settings
from core.records import RawRecord

log = logging.getLogger(__name__)


class BatchConsumer:
    def __init__(self, settings: Settings, *, group_id: str, topic: str, sparse: bool = False) -> None:
        """`sparse`: a topic that is mostly idle and wants each record at once (the critical lane,
        the retry tiers). Its fetches return on the first byte and wait long when there is none:
        waiting for a full fetch would add latency, and the bulk consumers' short wait would make
        an idle consumer ask the broker 20 times a second for nothing."""
        self._topic = topic
        self._consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=settings.require_kafka(),
            group_id=group_id,
            group_instance_id=settings.group_instance_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            session_timeout_ms=int(settings.broker_session_timeout_s * 1000),
            heartbeat_interval_ms=int(min(3.0, settings.broker_session_timeout_s / 3) * 1000),
            max_poll_records=settings.stream_batch.max_events,
            # fewer, larger batches below saturation: every batch's packed records, sink writes and
            # commits are per-batch costs, paid again downstream (docs/performance.md)
            fetch_min_bytes=1 if sparse else settings.consumer_fetch_min_bytes,
            fetch_max_wait_ms=settings.consumer_sparse_fetch_max_wait_ms if sparse else settings.consumer_fetch_max_wait_ms,
            fetch_max_bytes=64 * 1024 * 1024,
            # must hold the largest record the broker accepts, or that record would stall the partition
            max_partition_fetch_bytes=16 * 1024 * 1024,
        )

    async def start(self) -> None:
        await self._consumer.start()

    async def stop(self) -> None:
        await self._consumer.stop()

    async def batches(self, batch: BatchConfig) -> AsyncIterator[list[RawRecord]]:
        while True:
            fetched = await self._consumer.getmany(timeout_ms=int(batch.timeout_s * 1000), max_records=batch.max_events)
            records = [_raw(m) for messages in fetched.values() for m in messages]
            if records:
                yield records

    async def wait_paused(self, seconds: float) -> None:
        """Backpressure while a sink is down: pause every assigned partition and keep polling (so
        the group does not evict this consumer) without taking records; resume afterwards."""
        deadline = asyncio.get_running_loop().time() + seconds
        try:
            while (remaining := deadline - asyncio.get_running_loop().time()) > 0:
                self._consumer.pause(*self._consumer.assignment())  # again: a rebalance may add partitions
                fetched = await self._consumer.getmany(timeout_ms=int(min(remaining, 1.0) * 1000))
                for tp, messages in fetched.items():  # fetched before the pause took effect: read again later
                    self._consumer.seek(tp, messages[0].offset)
        finally:
            self._consumer.resume(*self._consumer.assignment())

    async def commit(self, records: list[RawRecord]) -> None:
        offsets: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
        try:
            await self._consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, RebalanceInProgressError) as exc:
            # the partitions moved to another worker, which replays from the last commit: harmless
            log.warning("commit of %d partitions failed after a rebalance (%s); the batch will be replayed",
                        len(offsets), type(exc).__name__)


def _raw(message) -> RawRecord:  # noqa: ANN001 - aiokafka's ConsumerRecord
    return RawRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=message.timestamp,
        key=message.key,
        value=message.value,
        headers={k: v for k, v in (message.headers or ()) if v is not None},
    )
