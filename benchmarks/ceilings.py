"""The ceilings a pipeline run is compared with, measured in the same run on the same machine.

- broker: the run's own records (same generator, same sizes, same headers) produced to a fresh
  topic with the run's partition count and consumed back, with no processing: what the broker and
  the Kafka clients alone can carry;
- copy: the canonical alert rows those records become (the pipeline's own normalizer and row
  builder, run before the clock starts) COPYed into a plain table shaped like `alert`, no indexes,
  no upsert: what Postgres alone can ingest.

Both are reported in their own unit (records/s, rows/s) and in alerts/s, the pipeline's unit: a
record carries `alerts_per_record` alerts on average, a row is one alert. Ratios to these hold on
noisy machines where absolute numbers do not. Each ceiling is measured `repeats` times and the best
is kept (a ceiling is what the path can do undisturbed; every attempt is in `detail.attempts_s`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass

import asyncpg
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from benchmarks.payload_factory import GeneratedRecord


@dataclass
class Ceiling:
    name: str
    items: int  # records (broker) or rows (copy)
    unit: str  # "records" | "rows"
    alerts: int  # alerts those items carry
    bytes: int
    seconds: float
    items_s: float
    alerts_s: float
    mb_s: float
    detail: dict

    def as_dict(self) -> dict:
        return asdict(self)


def _ceiling(name: str, unit: str, items: int, alerts: int, nbytes: int, seconds: float, **detail: float) -> Ceiling:
    seconds = max(seconds, 1e-9)
    return Ceiling(name, items, unit, alerts, nbytes, round(seconds, 4), round(items / seconds, 1),
                   round(alerts / seconds, 1), round(nbytes / seconds / 1e6, 3), {k: round(v, 4) for k, v in detail.items()})


def best_of(measure: Callable[[], Ceiling], repeats: int) -> Ceiling:
    """Run `measure` `repeats` times; the fastest attempt, with every attempt's rate in its detail."""
    attempts = [measure() for _ in range(max(1, repeats))]
    best = max(attempts, key=lambda c: c.items_s)
    best.detail["attempts_items_s"] = [a.items_s for a in attempts]
    return best


def broker_ceiling(bootstrap: str, records: list[GeneratedRecord], partitions: int, timeout_s: float = 120) -> Ceiling:
    """Produce `records` (keys, values, headers as the load generator sends them) to a fresh topic and
    consume them all back. Produce + flush and consume are timed separately; the ceiling is the serial
    path, items / (produce_s + consume_s). The consumer is assigned (no group join) and connected
    before the clock starts."""
    topic = f"bench.ceiling.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(30)
    # The load generator's producer settings (loadgen.ProducerOptions defaults), so the ceiling and the run match.
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "batch.num.messages": 10_000,
                         "batch.size": 1_000_000, "compression.type": "lz4", "acks": "all",
                         "enable.idempotence": False, "queue.buffering.max.messages": 2_000_000,
                         "queue.buffering.max.kbytes": 2_000_000, "log_level": 3})
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"ceiling-{topic}", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "fetch.max.bytes": 64 * 1024 * 1024,
                         "max.partition.fetch.bytes": 8 * 1024 * 1024, "log_level": 3})
    errors: list[str] = []

    def delivered(err: KafkaError | None, _msg: object) -> None:
        if err is not None:
            errors.append(str(err))

    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        consumer.consume(num_messages=1, timeout=0.5)  # connect and fetch metadata before the clock starts
        started = time.perf_counter()
        for i, rec in enumerate(records):
            headers = [("provider", rec.provider.encode()), ("tenant", rec.tenant.encode())]
            while True:
                try:
                    producer.produce(topic, rec.value, rec.key, headers=headers, on_delivery=delivered)
                    break
                except BufferError:
                    producer.poll(0.05)
            if i % 1000 == 0:
                producer.poll(0)
        remaining = producer.flush(timeout_s)
        produced = time.perf_counter()
        if remaining or errors:
            raise RuntimeError(f"broker ceiling: {remaining} undelivered, errors {errors[:3]}")
        received = 0
        deadline = time.monotonic() + timeout_s
        while received < len(records) and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=10_000, timeout=0.5):
                if not message.error():
                    received += 1
        consumed = time.perf_counter()
    finally:
        consumer.close()
        admin.delete_topics([topic])
    if received < len(records):
        raise RuntimeError(f"broker ceiling: consumed {received} of {len(records)} within {timeout_s}s")
    n, alerts, nbytes = len(records), sum(r.alerts for r in records), sum(len(r.value) for r in records)
    produce_s, consume_s = produced - started, consumed - produced
    return _ceiling("broker_produce_consume", "records", n, alerts, nbytes, produce_s + consume_s,
                    produce_records_s=n / max(produce_s, 1e-9), consume_records_s=n / max(consume_s, 1e-9),
                    produce_s=produce_s, consume_s=consume_s)


def alert_rows_for(records: list[GeneratedRecord], topic: str = "bench.ceiling") -> tuple[list[tuple], list[str]]:
    """The `alert` rows the pipeline would write for `records` if every alert were stored: the real
    normalizer and row builder, so the ceiling COPYs the pipeline's own row shapes and sizes."""
    from core.records import RawRecord
    from pipeline.normalizer import process_records
    from sinks.postgres import ALERT_COLUMNS, alert_rows

    now_ms = int(time.time() * 1000)
    raws = [RawRecord(topic, 0, i, now_ms, r.key, r.value, {"provider": r.provider.encode(), "tenant": r.tenant.encode()})
            for i, r in enumerate(records)]
    result = process_records(raws, partitions=1, default_tenant="default", max_payload_bytes=1 << 20)
    if result.dead_letters:
        raise RuntimeError(f"copy ceiling: {len(result.dead_letters)} generated records did not normalize: "
                           f"{result.dead_letters[0].reason} {result.dead_letters[0].detail[:200]}")
    stored = [a for alerts in result.by_partition.values() for a in alerts]
    return alert_rows(stored), list(ALERT_COLUMNS)


def copy_ceiling(dsn: str, records: list[GeneratedRecord], chunk: int = 5000,
                 rows: tuple[list[tuple], list[str]] | None = None) -> Ceiling:
    """COPY the rows `records` become into a fresh table `LIKE alert` (no indexes, no keys, WAL-logged
    like the real one), in chunks of `chunk` rows, each chunk its own transaction (as the sink commits
    per batch): Postgres' raw ingest path for this data. `rows`: `alert_rows_for(records)`, if already built."""
    rows, columns = rows if rows is not None else alert_rows_for(records)
    table = f"bench_copy_ceiling_{uuid.uuid4().hex[:8]}"

    async def run() -> float:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(f"CREATE TABLE {table} (LIKE alert INCLUDING DEFAULTS)")
            try:
                started = time.perf_counter()
                for i in range(0, len(rows), chunk):
                    await conn.copy_records_to_table(table, records=rows[i:i + chunk], columns=columns)
                return time.perf_counter() - started
            finally:
                await conn.execute(f"DROP TABLE {table}")
        finally:
            await conn.close()

    elapsed = asyncio.run(run())
    nbytes = sum(len(r[-1]) for r in rows)  # the event jsonb, the bulk of each row
    return _ceiling("postgres_copy", "rows", len(rows), len(rows), nbytes, elapsed)
