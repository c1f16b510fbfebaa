"""The ceilings a pipeline run is compared with, measured in the same run on the same machine.

- broker: records of the run's size produced and consumed back with no processing;
- copy: rows of the run's size COPYed into Postgres with no processing.
Ratios to these hold on noisy machines where absolute numbers do not.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

import asyncpg
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic


@dataclass
class Ceiling:
    name: str
    items: int
    seconds: float
    items_s: float
    mb_s: float

    def as_dict(self) -> dict:
        return asdict(self)


def broker_ceiling(bootstrap: str, values: list[bytes], partitions: int, timeout_s: float = 120) -> Ceiling:
    """Produce `values` to a fresh topic and consume them back: the end-to-end broker path."""
    topic = f"bench.ceiling.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.num.messages": 10000,
                         "queue.buffering.max.messages": 2_000_000, "queue.buffering.max.kbytes": 2_000_000})
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"ceiling-{topic}",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    started = time.perf_counter()
    for i, value in enumerate(values):
        producer.produce(topic, key=str(i).encode(), value=value)
        if i % 5000 == 0:
            producer.poll(0)
    producer.flush(timeout_s)
    received = 0
    deadline = time.monotonic() + timeout_s
    while received < len(values) and time.monotonic() < deadline:
        for message in consumer.consume(num_messages=10000, timeout=1.0):
            if not message.error():
                received += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    admin.delete_topics([topic])
    if received < len(values):
        raise RuntimeError(f"broker ceiling: consumed {received} of {len(values)}")
    total = sum(map(len, values))
    return Ceiling("broker_produce_consume", len(values), elapsed, len(values) / elapsed, total / elapsed / 1e6)


def copy_ceiling(dsn: str, values: list[bytes]) -> Ceiling:
    """COPY the same payloads as jsonb rows into a temp table: Postgres' raw ingest path."""

    async def run() -> float:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE TEMP TABLE ceiling (id uuid, received_at timestamptz, body jsonb)")
            ts = datetime.now(tz=timezone.utc)
            rows = [(uuid.uuid4(), ts, v.decode()) for v in values]
            started = time.perf_counter()
            for i in range(0, len(rows), 5000):
                await conn.copy_records_to_table("ceiling", records=rows[i:i + 5000])
            return time.perf_counter() - started
        finally:
            await conn.close()

    elapsed = asyncio.run(run())
    total = sum(map(len, values))
    return Ceiling("postgres_copy", len(values), elapsed, len(values) / elapsed, total / elapsed / 1e6)
