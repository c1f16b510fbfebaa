"""The Faust app: topics, the dedup table and the two agents, wired together.

    alerts ──normalize──► alerts.normalized ──deduplicate──► Postgres + search store
      │                    (by tenant+fingerprint)   │
      └──────────── alerts.dlq ◄─────────────────────┘ (undecodable records)

`describe()` prints this topology from the live objects.
"""

from __future__ import annotations

import asyncio
import logging
import time

import faust
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agents.deduplicator import PackedRecord, plan_batch
from agents.normalizer import RawRecord, dead_letter_headers, pack, process_records
from sinks.base import Sink, write_with_retry
from sinks.postgres import PostgresSink
from sinks.search import SearchSink, make_client
from streams.metrics import ALERTS, DLQ_RECORDS, RECORDS_RECEIVED
from streams.settings import Settings
from tables.dedup_state import DedupStore, make_table

log = logging.getLogger(__name__)


def build_sinks(settings: Settings) -> list[Sink]:
    sinks: list[Sink] = [PostgresSink(settings.require_database_url(), pool_size=settings.db_pool_size)]
    if settings.search_enabled and settings.search_url:
        client = make_client(
            settings.search_url,
            username=settings.search_username,
            password=settings.search_password.get_secret_value() if settings.search_password else None,
            api_key=settings.search_api_key.get_secret_value() if settings.search_api_key else None,
        )
        sinks.append(SearchSink(client, settings.search_index))
    return sinks


def create_app(settings: Settings) -> faust.App:
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{host}" for host in settings.require_kafka().split(",")],
        store="rocksdb://",
        datadir=str(settings.data_dir / f"worker-{settings.worker_web_port}"),
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
        producer_max_request_size=max(settings.max_payload_bytes, settings.packed_record_max_bytes) + 64 * 1024,
        autodiscover=False,
    )
    raw_topic = app.topic(settings.topic_alerts, partitions=settings.topic_partitions)
    normalized_topic = app.topic(settings.topic_normalized, partitions=settings.topic_partitions)
    dlq_topic = app.topic(settings.topic_dlq, partitions=settings.topic_partitions)
    store = DedupStore(make_table(app, settings.topic_partitions))

    @app.agent(raw_topic, name="normalize")
    async def normalize(stream):  # noqa: ANN001 - Faust passes its stream
        async for events in stream.take_events(settings.stream_batch.max_events, settings.stream_batch.timeout_s):
            RECORDS_RECEIVED.labels("normalize").inc(len(events))
            result = process_records(
                [_raw_record(e) for e in events],
                partitions=settings.topic_partitions,
                default_tenant=settings.default_tenant,
                max_payload_bytes=settings.max_payload_bytes,
            )
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
            # wait for the broker's ack before the input events are acked
            await asyncio.gather(*pending)

    @app.agent(normalized_topic, name="deduplicate")
    async def deduplicate(stream):  # noqa: ANN001
        sinks = build_sinks(settings)
        for sink in sinks:
            await sink.start()
        try:
            async for events in stream.take_events(settings.dedup_batch.max_events, settings.dedup_batch.timeout_s):
                RECORDS_RECEIVED.labels("deduplicate").inc(len(events))
                records = [PackedRecord(e.message.partition, e.message.offset, e.value, e) for e in events]
                plan = plan_batch(records, store.get)
                await asyncio.gather(*(write_with_retry(s, plan.batch, settings.sink_retry) for s in sinks))
                for key, (state, event) in plan.state_writes.items():
                    store.put(key, state, event)
                for (tenant, provider, outcome), count in plan.outcomes.items():
                    ALERTS.labels(tenant, provider, outcome.value).inc(count)
        finally:
            for sink in sinks:
                await sink.close()

    @app.page("/metrics")
    async def metrics(web, request):  # noqa: ANN001
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    return app


def _raw_record(event) -> RawRecord:  # noqa: ANN001
    message = event.message
    headers = message.headers or []
    return RawRecord(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp_ms=int(message.timestamp * 1000),
        key=message.key,
        value=message.value,
        headers={k: v for k, v in (headers.items() if isinstance(headers, dict) else headers) if v is not None},
    )


def describe(settings: Settings) -> str:
    return (
        f"{settings.topic_alerts} ({settings.topic_partitions} partitions)\n"
        f"  └─ normalize: decode, normalize, fingerprint ─► {settings.topic_normalized} (by tenant+fingerprint)\n"
        f"       └─ deduplicate: table dedup-state ─► postgres alert/last_alert"
        f"{', search ' + settings.search_index if settings.search_enabled else ''}\n"
        f"  invalid records ─► {settings.topic_dlq} (headers dlq_reason, dlq_detail, dlq_topic/partition/offset)"
    )
