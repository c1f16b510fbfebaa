"""The Faust app: topics, the dedup table and the three stages, wired together.

    alerts ──normalize──► alerts.normalized ──deduplicate──► Postgres (alert, last_alert)
      │                  (by tenant+fingerprint)     └──► alerts.stored ──index──► search store
      └──► alerts.dlq (records that cannot be processed)

`describe()` prints this topology from the live objects.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict

import faust
import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agents.deduplicator import PackedRecord, StageTwoPlan, plan_batch
from agents.normalizer import StageOneResult, dead_letter_headers, pack, process_records, unpack
from schemas.alert import NormalizedAlert
from schemas.rules import load_rules
from sinks.base import CircuitBreaker, WriteBatch
from sinks.postgres import PostgresSink
from sinks.search import SearchSink, make_client
from streams.batch_consumer import BatchConsumer
from streams.metrics import (
    ALERTS,
    DEDUP_BLOOM_SKIPPED_READS,
    DEDUP_CACHE_HIT_RATIO,
    DEDUP_EXPIRED,
    DEDUP_RATIO,
    DLQ_RECORDS,
    RECORDS_RECEIVED,
)
from streams.settings import Settings
from tables.bloom import PartitionBlooms
from tables.dedup_state import DedupStore, Outcome, make_table
from tables.hot_cache import HotCache

log = logging.getLogger(__name__)


_encode_json = msgspec.json.Encoder().encode
MAX_RECORD_BYTES = 16 * 1024 * 1024  # the largest input record alertstream can read and dead-letter


def build_search_sink(settings: Settings) -> SearchSink:
    if not settings.search_url:
        raise RuntimeError("ALERTSTREAM_SEARCH_URL is not set (or set ALERTSTREAM_SEARCH_ENABLED=false)")
    client = make_client(
        settings.search_url,
        username=settings.search_username,
        password=settings.search_password.get_secret_value() if settings.search_password else None,
        api_key=settings.search_api_key.get_secret_value() if settings.search_api_key else None,
    )
    return SearchSink(client, settings.search_index)


def create_app(settings: Settings) -> faust.App:
    datadir = settings.data_dir / f"worker-{settings.worker_web_port}"
    datadir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{host}" for host in settings.require_kafka().split(",")],
        store="rocksdb://",
        datadir=str(datadir),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        web_port=settings.worker_web_port,
        web_bind=settings.worker_web_bind,  # web_host alone still binds 0.0.0.0
        web_host=settings.worker_web_bind,
        broker_session_timeout=settings.broker_session_timeout_s,
        broker_heartbeat_interval=min(3.0, settings.broker_session_timeout_s / 3),
        consumer_auto_offset_reset="earliest",
        key_serializer="raw",
        value_serializer="raw",
        producer_acks=-1,
        # a dead letter carries the original bytes, which may be far over our own payload limit
        producer_max_request_size=MAX_RECORD_BYTES,
        # aiokafka's batch limit is in bytes: 1 byte means one record per batch (see the setting)
        producer_max_batch_size=1 if settings.producer_one_record_batches else 16384,
        recovery_consistency_check=settings.table_recovery_consistency_check,
        autodiscover=False,
    )
    normalized_topic = app.topic(settings.topic_normalized, partitions=settings.topic_partitions)
    dlq_topic = app.topic(settings.topic_dlq, partitions=settings.topic_partitions)
    stored_topic = app.topic(settings.topic_stored, partitions=settings.topic_partitions)
    rules = load_rules(settings.fingerprint_rules_path)  # an invalid file stops the worker here, with its line
    store = DedupStore(
        make_table(app, settings.topic_partitions),
        cache=HotCache(settings.dedup_cache_entries),
        blooms=PartitionBlooms(settings.dedup_bloom_capacity, 0.01, ttl_s=2 * settings.dedup_state_ttl_s or None)
        if settings.dedup_bloom_capacity else None,
    )
    ttl_ms = int(settings.dedup_state_ttl_s * 1000)

    @app.on_partitions_revoked.connect
    async def forget_revoked(app, revoked, **kwargs) -> None:  # noqa: ANN001
        store.forget_partitions({tp.partition for tp in revoked if tp.topic == settings.topic_normalized})

    async def emit(result: StageOneResult) -> None:
        """Send packed alerts and dead letters; return once the broker has acked all of them."""
        pending = []
        for partition, alerts in result.by_partition.items():
            for blob in pack(alerts, settings.packed_record_max_bytes):
                pending.append(await normalized_topic.send(value=blob, partition=partition, force=True))
        now_ms = int(time.time() * 1000)
        for letter in result.dead_letters:
            DLQ_RECORDS.labels(letter.reason).inc()
            log.warning("DLQ %s/%d@%d: %s (%s)", letter.record.topic, letter.record.partition,
                        letter.record.offset, letter.reason, letter.detail[:200])
            pending.append(await dlq_topic.send(
                key=letter.record.key, value=letter.record.value or b"",
                headers=dead_letter_headers(letter, now_ms), force=True,
            ))
        await asyncio.gather(*pending)

    @app.task
    async def normalize() -> None:
        """Stage 1 as a batch consumer: stateless, so it needs none of Faust's per-record
        machinery, which caps an agent at ~5k records/s on this hardware (docs/decisions.md)."""
        consumer = BatchConsumer(settings, group_id=f"{settings.app_id}-normalize", topic=settings.topic_alerts)
        await consumer.start()
        try:
            async for records in consumer.batches(settings.stream_batch):
                RECORDS_RECEIVED.labels("normalize").inc(len(records))
                await emit(process_records(
                    records,
                    partitions=settings.topic_partitions,
                    default_tenant=settings.default_tenant,
                    max_payload_bytes=settings.max_payload_bytes,
                    rules=rules,
                    max_age_ms=int(settings.record_max_age_s * 1000),
                ))
                await consumer.commit(records)  # only after the broker acked the output
        finally:
            await consumer.stop()

    async def dead_letter_alert(item: NormalizedAlert, reason: str) -> None:
        """An alert a sink refused: to the DLQ as canonical JSON (a Keep generic alert), so that
        `alertstream dlq replay` can send it through the pipeline again after a fix."""
        DLQ_RECORDS.labels("sink_rejected").inc()
        fut = await dlq_topic.send(key=item.alert.fingerprint.encode(), value=_encode_json(item.alert), force=True, headers={
            "provider": b"keep", "tenant": item.alert.tenant.encode(),
            "dlq_reason": b"sink_rejected", "dlq_detail": reason[:2000].encode(),
            "dlq_topic": settings.topic_alerts.encode(), "dlq_alert_uid": item.uid.encode(),
            "dlq_first_failure_ms": str(int(time.time() * 1000)).encode(), "dlq_attempts": b"1",
        })
        await fut

    @app.agent(normalized_topic, name="deduplicate")
    async def deduplicate(stream):  # noqa: ANN001
        postgres = PostgresSink(settings.require_database_url(), pool_size=settings.db_pool_size)
        # blocking this agent is the backpressure: Faust stops fetching once its buffers are full
        postgres_circuit = CircuitBreaker(postgres, settings.sink_retry, dead_letter_alert)
        await postgres.start()
        try:
            async for events in stream.take_events(settings.dedup_batch.max_events, settings.dedup_batch.timeout_s):
                RECORDS_RECEIVED.labels("deduplicate").inc(len(events))
                records = [PackedRecord(e.message.partition, e.message.offset, e.value, e) for e in events]
                plan = plan_batch(records, store.get, rules, refresh_after_ms=ttl_ms // 2 or None)
                # durable first (Postgres, and the stored alerts handed to the indexer), then state
                await asyncio.gather(postgres_circuit.write(plan.batch), hand_to_indexer(plan))
                for key, (state, event) in plan.state_writes.items():
                    store.put(key, state, event)
                if ttl_ms:
                    now_ms = int(time.time() * 1000)
                    for event in {e.message.partition: e for e in events}.values():
                        DEDUP_EXPIRED.inc(store.sweep_expired(event, now_ms, ttl_ms, settings.dedup_sweep_budget))
                record_outcomes(plan)
        finally:
            await postgres.close()

    seen_totals: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])  # (tenant, provider) → [seen, duplicates]

    def record_outcomes(plan: StageTwoPlan) -> None:
        for (tenant, provider, outcome), count in plan.outcomes.items():
            ALERTS.labels(tenant, provider, outcome.value).inc(count)
            totals = seen_totals[(tenant, provider)]
            totals[0] += count
            totals[1] += count if outcome is Outcome.DUPLICATE else 0
            DEDUP_RATIO.labels(tenant, provider).set(totals[1] / totals[0])
        DEDUP_CACHE_HIT_RATIO.set(store.cache_hit_ratio)
        DEDUP_BLOOM_SKIPPED_READS.set(store.bloom_skipped_reads)

    async def hand_to_indexer(plan: StageTwoPlan) -> None:
        if not settings.search_enabled:
            return
        by_partition: dict[int, list[NormalizedAlert]] = defaultdict(list)
        for sighting in plan.batch.sightings:
            if sighting.stored is not None:
                by_partition[sighting.partition].append(sighting.stored)
        pending = [await stored_topic.send(value=blob, partition=partition, force=True)
                   for partition, alerts in by_partition.items()
                   for blob in pack(alerts, settings.packed_record_max_bytes)]
        await asyncio.gather(*pending)

    if settings.search_enabled:
        @app.task
        async def index() -> None:
            """The search sink as its own consumer of stored alerts: a slow or down search
            store shows as this consumer's lag, and never holds back Postgres."""
            search = build_search_sink(settings)
            await search.start()
            consumer = BatchConsumer(settings, group_id=f"{settings.app_id}-index", topic=settings.topic_stored)
            circuit = CircuitBreaker(search, settings.sink_retry, dead_letter_alert, wait=consumer.wait_paused)
            await consumer.start()
            try:
                async for records in consumer.batches(settings.stream_batch):
                    RECORDS_RECEIVED.labels("index").inc(len(records))
                    batch = WriteBatch(stored=[a for r in records for a in unpack(r.value)])
                    await circuit.write(batch)
                    await consumer.commit(records)
            finally:
                await consumer.stop()
                await search.close()

    @app.page("/metrics")
    async def metrics(web, request):  # noqa: ANN001
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    return app


def describe(settings: Settings) -> str:
    return (
        f"{settings.topic_alerts} ({settings.topic_partitions} partitions)\n"
        f"  └─ normalize: decode, normalize, fingerprint ─► {settings.topic_normalized} (by tenant+fingerprint)\n"
        f"       └─ deduplicate: table dedup-state ─► postgres alert/last_alert\n"
        + (f"            └─ stored alerts ─► {settings.topic_stored} ─► index: search {settings.search_index}\n"
           if settings.search_enabled else "") +
        f"  invalid records ─► {settings.topic_dlq} (headers dlq_reason, dlq_detail, dlq_topic/partition/offset)"
    )
