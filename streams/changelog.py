"""The dedup table's changelog producer: a batch's state changes sent in bulk and waited for once.

librdkafka (confluent-kafka) rather than Faust's producer: a `produce` call costs about a
microsecond in C, and the batch is waited for once (`flush` in a thread), where Faust sends each
table write on its own through a buffer that pauses every stream while it is full. The records are
what Faust's table writes would have been (raw key, raw value, None for a delete, on the key's own
partition), so Faust's recovery and standbys read them as before.
"""

from __future__ import annotations

import asyncio
import logging

from confluent_kafka import KafkaError, KafkaException, Producer

from config.settings import Settings

log = logging.getLogger(__name__)


class ChangelogError(Exception):
    """Some records of a checkpoint were not acked: the batch is not done and is not acked either."""


def producer_config(settings: Settings) -> dict[str, object]:
    config: dict[str, object] = {
        "bootstrap.servers": settings.require_kafka(),
        "acks": "all",
        "enable.idempotence": settings.kafka_idempotent_producers,
        "linger.ms": 2,  # a checkpoint is sent at once; the short linger only groups partitions
        "compression.type": "lz4",
        "message.timeout.ms": int(settings.changelog_send_timeout_s * 1000),
        "queue.buffering.max.messages": 2_000_000,
    }
    if not settings.kafka_idempotent_producers:
        # a retried request must not be overtaken: a key's last record is its state on recovery
        config["max.in.flight.requests.per.connection"] = 1
    if settings.producer_one_record_batches:  # exact end offsets on the local stand-in broker (INFRA.md)
        config["batch.num.messages"] = 1
    return config


class KafkaChangelog:
    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self._producer = Producer(producer_config(settings))

    async def send(self, records: list[tuple[int, bytes, bytes | None]]) -> dict[int, int]:
        offsets: dict[int, int] = {}
        errors: list[KafkaError] = []
        pending = len(records)

        def delivered(err: KafkaError | None, msg) -> None:  # noqa: ANN001 - a confluent_kafka Message
            nonlocal pending
            pending -= 1
            if err is not None:
                errors.append(err)
            elif msg.offset() > offsets.get(msg.partition(), -1):
                offsets[msg.partition()] = msg.offset()

        for partition, key, value in records:
            while True:
                try:
                    self._producer.produce(self.topic, key=key, value=value, partition=partition, on_delivery=delivered)
                    break
                except BufferError:  # librdkafka's queue is full: let it drain, then go on
                    await asyncio.to_thread(self._producer.poll, 0.05)
        # flush serves the callbacks of every message in flight (also another stage's) until ours are
        # all delivered or failed (a broker that stays down: failed after `message.timeout.ms`)
        while pending > 0:
            await asyncio.to_thread(self._producer.flush, 1.0)
        if errors:
            raise ChangelogError(f"{len(errors)} of {len(records)} changelog records not written: {errors[0]}")
        return offsets

    def close(self) -> None:
        """At shutdown. Every checkpoint waited for its records, so nothing of ours is in flight;
        a bounded flush hands librdkafka's own bookkeeping back before the process goes."""
        try:
            left = self._producer.flush(10.0)
        except KafkaException as exc:
            log.warning("changelog producer: %s", exc)
            return
        if left:
            log.warning("changelog producer: %d records still queued at shutdown (their batches were not acked)", left)
