"""The Faust app: topics, the dedup table and the three stages, wired together.

    alerts ──normalize──► alerts.normalized ──deduplicate──► Postgres (alert, last_alert)
      │                  (by tenant+fingerprint)     └──► alerts.stored ──index──► search store
      └──► alerts.dlq (records that cannot be processed)

`describe()` prints this topology with the configured topic names (`alertstream topology`); the
deduplicate stage itself is `streams/dedup_stage.py`, which this module only wires.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
import weakref
from collections import defaultdict
from collections.abc import Awaitable, Callable

import faust
import msgspec
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient
from faust.transport.consumer import Consumer as FaustConsumer
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.exceptions import NotReady
from faust.transport.producer import ProducerBuffer
from mode.utils.logging import cry
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from config.metrics import (
    ALERTS,
    DEDUP_BATCH_FAILURES,
    DEDUP_BLOOM_SKIPPED_READS,
    DEDUP_CACHE_HIT_RATIO,
    DEDUP_RATIO,
    DLQ_RECORDS,
    NORMALIZE_RESEND_CACHE_BYTES,
    NORMALIZE_RESEND_HITS,
    NORMALIZE_RESEND_MISSES,
    OFFSET_GAPS,
    RECORDS_RECEIVED,
    RETRIES,
    observe_end_to_end,
)
from config.settings import Settings
from core.errors import (
    ATTEMPTS,
    PROVIDER,
    RETRIES_EXHAUSTED,
    SINK_REJECTED,
    UNDECODABLE,
    Classifier,
    Role,
    Routed,
    permanent,
    provider_of,
    retry_target_of,
    tenant_of,
)
from core.records import RawRecord, WriteBatch
from pipeline.deduplicator import PackedRecord, StageTwoPlan
from pipeline.normalizer import RecordTemplate, StageOneResult, iter_process_records, pack, unpack
from pipeline.resend_cache import ResendCache
from pipeline.throttle import THROTTLED_RECORDS, ConsumerThrottle
from schemas.alert import NormalizedAlert, PackedAlert
from schemas.normalizers import NormalizeLimits
from schemas.normalizers.canonical import PROVIDER as CANONICAL_PROVIDER
from schemas.rules import load_rules
from sinks.base import CircuitBreaker, Sinks
from sinks.maintenance import run_maintenance_forever
from sinks.postgres import PostgresSink
from sinks.raw_storage import RawBatch, RawPolicy, RawSink, raw_rows_for
from sinks.search import SearchSink, make_client
from streams import stall_watchdog as stall_exit
from streams.batch_consumer import BatchConsumer
from streams.changelog import KafkaChangelog
from streams.dedup_stage import BatchNotDurable, DeduplicateStage
from streams.failpoints import FailPoints
from streams.loop_monitor import PROBE_INTERVAL_S, watch_event_loop
from streams.priority import PriorityGate
from streams.retry import by_origin, due_in_s, error_router, tier_topics
from streams.stall_watchdog import EXIT_STALLED, AgentWatchdog, OffsetTracker
from streams.status_page import install as install_observability
from streams.topology import Wiring, build_topology, render
from tables.bloom import PartitionBlooms
from tables.dedup_state import DedupStore, Outcome, make_table
from tables.hot_cache import HotCache

log = logging.getLogger(__name__)


_encode_json = msgspec.json.Encoder().encode
_decode_canonical = msgspec.json.Decoder(NormalizedAlert).decode  # a dead-lettered alert, replayed
MAX_RECORD_BYTES = 16 * 1024 * 1024  # the largest input record alertstream can read and dead-letter
# the indexer's failures per record: bytes on alerts.stored that are not alertstream's are
# dead-lettered; anything else is not about the record and fails the batch (core/errors.py)
INDEX_CLASSIFIER = Classifier((permanent(msgspec.DecodeError, UNDECODABLE),))


class HeldAcks:
    """Acks of a Faust stream held until the stage says the batch is durable.

    faust-streaming 0.15.3's `take_events` acks every event of a batch in a `finally` as soon as the
    loop body returns, also when the batch failed, and the deduplicate stage returns before a batch
    is durable (it plans the next one meanwhile). So the stream's own acks do nothing here; `release`
    acks a batch's events once it is durable, and after `refuse` nothing is acked again: the
    committed offsets stay before the failed batch and the next owner of its partitions processes
    it again."""

    def __init__(self, stream) -> None:  # noqa: ANN001 - a Faust stream
        self._ack = stream.ack
        self.refused = False

        async def held(event) -> bool:  # noqa: ANN001
            return False

        stream.ack = held

    async def release(self, events) -> None:  # noqa: ANN001
        if not self.refused:
            for event in events:
                await self._ack(event)

    def refuse(self) -> None:
        self.refused = True


async def _refuse_offset_gaps(consumer, tp, offset_from: int, offset_to: int) -> None:  # noqa: ANN001
    """Faust takes a jump in the offsets it reads for a run of transaction markers or compacted
    records and commits over it (`Consumer._add_gap`). alertstream's acked topics have neither (no
    transactions; inputs and internal topics are not compacted): a jump there is Faust losing
    records it fetched (faust-streaming issues 175, 640), and filling it committed past alerts that
    were never written (seen on Apache Kafka after a kill -9 under load). Refused: the missing
    offsets stay unacked, nothing past them is committed, and the skip/stall guard replaces the
    process (streams/stall_watchdog.py)."""
    OFFSET_GAPS.labels(tp.topic).inc()
    log.error("%s[%d]: the consumer jumped from offset %d to %d; not committing past the gap",
              tp.topic, tp.partition, offset_from - 1, offset_to)


# (fetch.min.bytes, fetch.max.wait.ms) of each app's agent consumer, read when Faust creates it
_AGENT_FETCH: weakref.WeakKeyDictionary[faust.App, tuple[int, int]] = weakref.WeakKeyDictionary()
_faust_worker_consumer = AIOKafkaConsumerThread._create_worker_consumer


def _worker_consumer_with_fuller_fetches(self, transport):  # noqa: ANN001, ANN202
    """Faust's agent consumer (the dedup agents' input), with the fetch bounds of the batch consumers.
    Faust leaves fetch.min.bytes at 1 and offers no setting for it: the broker answers each fetch with
    whatever has arrived, and at saturation the agent consumer's thread spent 2% of the worker's CPU
    writing fetch requests alone (py-spy, docs/performance.md)."""
    consumer = _faust_worker_consumer(self, transport)
    fetch = _AGENT_FETCH.get(self.app)
    if fetch is not None:
        # the constructor only stores them; start() hands them to the fetcher it builds
        consumer._fetch_min_bytes, consumer._fetch_max_wait_ms = fetch
    return consumer


def build_search_sink(settings: Settings) -> SearchSink:
    if not settings.search_url:
        raise RuntimeError("ALERTSTREAM_SEARCH_URL is not set (or set ALERTSTREAM_SEARCH_ENABLED=false)")
    client = make_client(
        settings.search_url,
        username=settings.search_username,
        password=settings.search_password.get_secret_value() if settings.search_password else None,
        api_key=settings.search_api_key.get_secret_value() if settings.search_api_key else None,
    )
    return SearchSink(client, settings.search_index, settings)


def create_app(settings: Settings) -> faust.App:
    FaustConsumer._add_gap = _refuse_offset_gaps
    AIOKafkaConsumerThread._create_worker_consumer = _worker_consumer_with_fuller_fetches
    datadir = settings.data_dir / f"worker-{settings.worker_web_port}"
    datadir.mkdir(parents=True, exist_ok=True)  # Faust creates only the last level
    stateful = settings.worker_role != "stateless"
    app = faust.App(
        # a stateless process has no agent and no table: its Faust consumer (only Faust's own
        # leader topic) stays out of the dedup agents' group, whose rebalances it would otherwise join
        settings.app_id if stateful else f"{settings.app_id}-stateless",
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
        producer_compression_type=None if settings.producer_compression == "none" else settings.producer_compression,
        recovery_consistency_check=settings.table_recovery_consistency_check,
        consumer_group_instance_id=settings.group_instance_id,
        autodiscover=False,
        # Faust's own pages show dedup state (/table/), routing (/router/) and the topology without
        # auth; the worker serves only its own endpoints (/metrics, /healthz, /readyz, /status)
        web_router_enabled=False,
        web_tables_enabled=False,
        web_graph_enabled=False,
        web_stats_enabled=False,
    )
    _AGENT_FETCH[app] = (settings.consumer_fetch_min_bytes, settings.consumer_fetch_max_wait_ms)
    normalized_topic = app.topic(settings.topic_normalized, partitions=settings.topic_partitions)
    dlq_topic = app.topic(settings.topic_dlq, partitions=settings.topic_partitions)
    stored_topic = app.topic(settings.topic_stored, partitions=settings.topic_partitions)
    critical_topic = app.topic(settings.topic_normalized_critical, partitions=settings.topic_partitions)
    rules = load_rules(settings.fingerprint_rules_path)  # an invalid file stops the worker here, with its line
    raw_policy = RawPolicy.load(settings.raw_storage_policy_path)  # likewise
    if stateful:  # the table exists only where the dedup stage runs: declaring it restores it from its changelog
        table = make_table(app, settings.topic_partitions)
        changelog = KafkaChangelog(settings, table.changelog_topic.get_topic_name())
        store = DedupStore(
            table, changelog,
            cache=HotCache(settings.dedup_cache_entries),
            blooms=PartitionBlooms(settings.dedup_bloom_capacity, 0.01, ttl_s=2 * settings.dedup_state_ttl_s or None)
            if settings.dedup_bloom_capacity else None,
        )
    ttl_ms = int(settings.dedup_state_ttl_s * 1000)
    failpoints = FailPoints(settings.failpoints_path)
    limits = NormalizeLimits(**settings.normalizer_limits.model_dump())
    # one per process, for both normalize stages (its keys name the topic): built for these rules and limits
    resend_cache: ResendCache[RecordTemplate] | None = \
        ResendCache(settings.normalizer_resend_cache_bytes) if settings.normalizer_resend_cache_bytes else None
    resend_counted = [0, 0]  # hits and misses already added to the metric
    router = error_router(settings)  # every dead letter, retry and parked record is built there
    # the one owner of the sinks: each stage holds the ones it writes to (`sinks.use`), the first
    # to ask starts a sink, the last stage to stop closes them all, in reverse order
    sinks = Sinks()
    postgres = sinks.add(PostgresSink(settings.require_database_url(), pool_size=settings.db_pool_size))
    raw_sink = None if raw_policy.stores_nothing else sinks.add(RawSink(settings.require_database_url(), pool_size=2))
    topics_by_name: dict[str, faust.TopicT] = {settings.topic_dlq: dlq_topic}
    wire = Wiring(app, build_topology(settings, raw_store=raw_sink is not None), settings.worker_role)

    def topic_named(name: str) -> faust.TopicT:
        if name not in topics_by_name:
            topics_by_name[name] = app.topic(name)
        return topics_by_name[name]

    async def send_routed(routed: Routed) -> Awaitable:
        """Send what the error router built; returns the delivery future (await it for the ack)."""
        return await topic_named(routed.topic).send(key=routed.key, value=routed.value, headers=routed.headers, force=True)

    if stateful:
        @app.on_partitions_revoked.connect
        async def forget_revoked(app, revoked, **kwargs) -> None:  # noqa: ANN001
            internal = {settings.topic_normalized, settings.topic_normalized_critical}
            store.forget_partitions({tp.partition for tp in revoked if tp.topic in internal})
            offsets.forget(revoked)

    async def emit(result: StageOneResult) -> None:
        """Send packed alerts and dead letters; return once the broker has acked all of them."""
        pending = []
        for target, by_partition in ((normalized_topic, result.by_partition), (critical_topic, result.critical_by_partition)):
            for partition, alerts in by_partition.items():
                for blob in pack(alerts, settings.packed_record_max_bytes, settings.internal_record_format):
                    pending.append(await target.send(value=blob, partition=partition, force=True))
        now_ms = int(time.time() * 1000)
        for letter in result.dead_letters:
            DLQ_RECORDS.labels(letter.reason).inc()
            log.warning("DLQ %s/%d@%d: %s (%s)", letter.record.topic, letter.record.partition,
                        letter.record.offset, letter.reason, letter.detail[:200])
            pending.append(await send_routed(router.dead_letter(letter.record, letter.reason, letter.detail, now_ms)))
        for record in result.throttled:  # consumer-side throttling: wait on the first tier, come back (docs/gateway.md)
            THROTTLED_RECORDS.labels(tenant_of(record.headers, settings.default_tenant), provider_of(record.headers)).inc()
            pending.append(await send_routed(router.park(key=record.key, value=record.value, headers=record.headers,
                                                         target=record.topic)))
        await asyncio.gather(*pending)

    gate = PriorityGate()

    def count_resend_lookups(cache: ResendCache[RecordTemplate]) -> None:
        hits, misses = cache.hits - resend_counted[0], cache.misses - resend_counted[1]
        NORMALIZE_RESEND_HITS.inc(hits)
        NORMALIZE_RESEND_MISSES.inc(misses)
        resend_counted[:] = cache.hits, cache.misses
        NORMALIZE_RESEND_CACHE_BYTES.set(cache.bytes)

    async def normalize_from(topic: str, group_id: str, critical: bool) -> None:
        """Stage 1 as a batch consumer: stateless, so it needs none of Faust's per-record
        machinery, which caps an agent at ~5k records/s on this hardware (docs/decisions.md)."""
        consumer = BatchConsumer(settings, group_id=group_id, topic=topic, sparse=critical)
        throttle = None if critical else ConsumerThrottle(settings.consumer_provider_rate_limits)
        raw_circuit = None
        if raw_sink is not None:
            raw_circuit = CircuitBreaker(raw_sink, settings.sink_retry, dead_letter_alert(settings.topic_alerts),
                                         wait=consumer.wait_paused)
        async with sinks.use(*([raw_sink] if raw_sink is not None else [])):
            await consumer.start()
            try:
                await normalize_batches(consumer, critical, throttle, raw_circuit)
            except NotReady:
                if not app.should_stop:
                    raise
                # a graceful stop took the producer away under a batch in flight: that batch is not
                # committed, so the next start reads it again; not a crash
                log.info("normalize (%s): stopped with a batch in flight; it is read again on restart", topic)
            finally:
                await consumer.stop()

    async def normalize_batches(consumer: BatchConsumer, critical: bool, throttle: ConsumerThrottle | None,
                                raw_circuit: CircuitBreaker[RawBatch] | None) -> None:
        async for records in consumer.batches(settings.stream_batch):
            RECORDS_RECEIVED.labels("normalize").inc(len(records))
            # critical work holds this process's bulk stages back while it runs (streams/priority.py)
            with gate.holding(len(records)) if critical else contextlib.nullcontext():
                # in chunks: sending one (an await) gives the loop its turn and bounds what is held
                for result in iter_process_records(
                        records, partitions=settings.topic_partitions, default_tenant=settings.default_tenant,
                        max_payload_bytes=settings.max_payload_bytes, rules=rules,
                        max_age_ms=int(settings.record_max_age_s * 1000), throttle=throttle,
                        clock_s=time.monotonic(), limits=limits, chunk_max_ms=settings.normalizer_chunk_max_ms,
                        chunk_max_output_bytes=settings.normalizer_chunk_max_output_bytes, cache=resend_cache):
                    raw_rows = raw_rows_for(result.records, result.dead_letters, raw_policy,
                                            default_tenant=settings.default_tenant) if raw_circuit is not None else []
                    await asyncio.gather(emit(result), raw_circuit.write(RawBatch(raw_rows)) if raw_rows else asyncio.sleep(0))
                await consumer.commit(records)  # only after the broker acked every chunk's output
            if resend_cache is not None:
                count_resend_lookups(resend_cache)
            if not critical:
                await gate.wait_idle()  # let critical work in flight go first

    @wire("normalize")
    async def normalize() -> None:
        await normalize_from(settings.topic_alerts, f"{settings.app_id}-normalize", critical=False)

    @wire("normalize-critical")
    async def normalize_critical() -> None:
        """Critical alerts have their own input topic and consumer: no backlog of the main topic delays them."""
        await normalize_from(settings.topic_critical, f"{settings.app_id}-normalize-critical", critical=True)

    def dead_letter_alert(replay_to: str) -> Callable[[NormalizedAlert | PackedAlert, str], Awaitable[None]]:
        async def dead_letter(refused: NormalizedAlert | PackedAlert, reason: str) -> None:
            """An alert a sink refused: to the DLQ as alertstream built it (the JSON of the whole
            NormalizedAlert, provider `alertstream`), so that `alertstream dlq replay` restores it
            exactly after a fix: to the input topic for Postgres (normalized as it is, not again),
            to the stored-alerts topic for the search store (its dedup state is already written)."""
            failpoints.hit("dedup.dead_letter")
            DLQ_RECORDS.labels(SINK_REJECTED).inc()
            item = refused.normalized()
            await (await send_routed(router.dead_letter_alert(
                key=item.alert.fingerprint.encode(), value=_encode_json(item), tenant=item.alert.tenant, uid=item.uid,
                provider=CANONICAL_PROVIDER, detail=reason, replay_to=replay_to, now_ms=int(time.time() * 1000))))
        return dead_letter

    async def deduplicate_stream(stream, stage: str, critical: bool) -> None:  # noqa: ANN001 - a Faust stream
        # blocking this agent is the backpressure: Faust stops fetching once its buffers are full
        async def dead_letter_and_note(item: NormalizedAlert, reason: str) -> None:
            await to_dlq(item, reason)
            dedup.rejected.add(item.uid)

        acks = HeldAcks(stream)

        def not_durable(exc: Exception) -> None:  # the stage counted its failed attempts already
            acks.refuse()
            exit_for_a_fresh_process(f"agent {stage}: {exc}")

        to_dlq = dead_letter_alert(settings.topic_alerts)
        circuit = CircuitBreaker(postgres, settings.sink_retry, dead_letter_and_note)
        topic = settings.topic_normalized_critical if critical else settings.topic_normalized
        dedup = DeduplicateStage(stage, topic, store=store, rules=rules, write_rows=circuit.write, hand_off=hand_to_indexer,
                                 dead_letter_record=dead_letter_record, ttl_ms=ttl_ms,
                                 sweep_budget=settings.dedup_sweep_budget, failpoints=failpoints,
                                 window=settings.dedup_pipeline_window, attempts=settings.dedup_batch_attempts,
                                 backoff_s=retry_backoff_s, on_failure=not_durable)
        watchdog = AgentWatchdog(stage, lambda: offsets.waiting(end_offsets(topic)), settings.worker_stall_timeout_s)
        watchdogs.append(watchdog)

        def durable_then(events):  # noqa: ANN001, ANN202
            async def ack_and_count(plan: StageTwoPlan) -> None:
                await acks.release(events)
                observe_end_to_end(plan.batch)
                record_outcomes(plan)
            return ack_and_count

        try:
            async for events in stream.take_events(settings.dedup_batch.max_events, settings.dedup_batch.timeout_s):
                watchdog.busy()
                if not critical:
                    await gate.wait_idle()
                RECORDS_RECEIVED.labels(stage).inc(len(events))
                try:
                    with gate.holding(len(events)) if critical else contextlib.nullcontext():
                        await check_offsets(stage, events)
                        await dedup.submit([PackedRecord(e.message.partition, e.message.offset, e.value, e) for e in events],
                                           durable_then(events))
                        if critical:  # few and urgent: durable before the gate opens again
                            await dedup.drain()
                except Exception as exc:  # noqa: BLE001 - not durable, or the offsets could not be checked
                    if not isinstance(exc, BatchNotDurable):  # the stage counted its own failed attempts
                        DEDUP_BATCH_FAILURES.labels(stage).inc()
                    not_durable(exc)
                    # take nothing more (the stage refuses it too): a later batch made durable would move
                    # the flows' positions past this one. The stop cancels this agent
                    await asyncio.Event().wait()
                watchdog.idle()
        finally:
            try:  # a stop: finish (and ack) what was submitted, within the stop's time
                if not dedup.spent:  # a spent stage said why already; it has nothing more to finish
                    await asyncio.wait_for(dedup.drain(), settings.worker_stop_timeout_s / 2)
            except Exception:  # noqa: BLE001 - not acked, so processed again by the next owner
                log.exception("agent %s: batches in flight at the stop were not made durable", stage)

    async def check_offsets(stage: str, events) -> None:  # noqa: ANN001
        """`refuse_skipped_offsets`, tried again (an offset query can fail) before the batch is taken."""
        for attempt in range(1, settings.dedup_batch_attempts + 1):
            try:
                failpoints.hit("dedup.offsets")
                await refuse_skipped_offsets(stage, events)
                return
            except Exception as exc:
                if attempt == settings.dedup_batch_attempts:
                    raise RuntimeError(f"checking the offsets of a batch failed {attempt} times ({type(exc).__name__}: {exc})") from exc
                DEDUP_BATCH_FAILURES.labels(stage).inc()
                log.exception("agent %s: checking the offsets of %d records failed (attempt %d of %d)",
                              stage, len(events), attempt, settings.dedup_batch_attempts)
                await asyncio.sleep(retry_backoff_s(attempt))

    def retry_backoff_s(attempt: int) -> float:
        return min(settings.sink_retry.initial_backoff_s * 2 ** attempt, settings.sink_retry.max_backoff_s)

    async def dead_letter_record(record: RawRecord, *, reason: str, detail: str) -> None:
        """A record a stage cannot read: its bytes and headers to the DLQ, named by its position."""
        DLQ_RECORDS.labels(reason).inc()
        log.error("DLQ %s[%d]@%d: %s (%s)", record.topic, record.partition, record.offset, reason, detail[:200])
        await (await send_routed(router.dead_letter(record, reason, detail, int(time.time() * 1000))))

    # Faust's view of where each partition resumes (set when it seeks to the committed offsets)
    offsets = OffsetTracker(lambda tp: app.consumer._committed_offset.get(tp))
    watchdogs: list[AgentWatchdog] = []

    admin: list[AdminClient] = []  # made on first use

    async def group_committed_offset(tp) -> int | None:  # noqa: ANN001
        def ask() -> int | None:
            if not admin:
                admin.append(AdminClient({"bootstrap.servers": settings.require_kafka()}))
            request = [ConsumerGroupTopicPartitions(settings.app_id, [TopicPartition(tp.topic, tp.partition)])]
            answer = next(iter(admin[0].list_consumer_group_offsets(request).values())).result(timeout=10)
            offset = answer.topic_partitions[0].offset
            return offset if offset >= 0 else None
        # None: the group has no committed offset there (a fresh group). A failed query raises:
        # the batch is not processed blindly, it fails and is tried again (fail closed)
        return await asyncio.to_thread(ask)

    def end_offsets(topic: str) -> dict:
        return {tp: app.consumer.highwater(tp) for tp in app.consumer.assignment() if tp.topic == topic}

    def exit_for_a_fresh_process(why: str) -> None:
        """Stop gracefully (SIGTERM to ourselves: finished batches are committed and the group is left,
        so the next process joins a clean group instead of waiting out this member's session, the
        double rebalance that provokes the problem), then exit with EXIT_STALLED; nothing past the
        problem was acked, so the next process resumes before it. A stop that hangs is cut short."""
        if stall_exit.requested:
            return
        stall_exit.requested = True
        log.error("%s: exiting for a fresh process", why)
        cry(file=sys.stderr)  # every task's stack, for the bug report
        # the refused records are never acked, so Faust's wait for in-flight events cannot end: bounded
        asyncio.get_running_loop().call_later(min(15.0, settings.worker_stop_timeout_s), os._exit, EXIT_STALLED)
        os.kill(os.getpid(), signal.SIGTERM)

    async def refuse_skipped_offsets(stage: str, events) -> None:  # noqa: ANN001
        for e in events:
            tp, offset = e.message.tp, e.message.offset
            if offsets.expected(tp) is None:  # Faust did not know it (seen after a crash): ask the broker
                committed = await group_committed_offset(tp)
                if committed is None:  # nothing committed yet: the group reads from the log start (earliest)
                    committed = (await app.consumer.earliest_offsets(tp)).get(tp)
                if committed is not None:
                    offsets.start(tp, committed)
            if (missing := offsets.gap(tp, offset)) is None:
                offsets.took(tp, offset)  # handed over: the next one must follow it
                continue
            log_start = (await app.consumer.earliest_offsets(tp)).get(tp)
            if log_start is not None and log_start > missing:
                # retention deleted them before this group read them (a long outage): nothing to replay
                log.error("%s[%d] offsets %d..%d expired before they were processed", tp.topic, tp.partition, missing, log_start - 1)
                offsets.took(tp, offset)
                continue
            OFFSET_GAPS.labels(tp.topic).inc()
            exit_for_a_fresh_process(f"agent {stage} was handed {tp.topic}[{tp.partition}] offset {offset} "
                                     f"but never offset {missing} (Faust skipped records)")
            await asyncio.Event().wait()  # take nothing more: the stop cancels this agent

    if settings.worker_stall_timeout_s:
        @app.timer(interval=5.0)
        async def watch_for_stalled_agents() -> None:
            """A stalled agent never recovers in-process: exit, and the supervisor restarts us."""
            if app.rebalancing or not app.consumer.flow_active or \
                    app.producer.buffer.size > ProducerBuffer.max_messages:
                for watchdog in watchdogs:  # waiting is expected now: start counting afresh
                    watchdog.idle()
                return
            for watchdog in watchdogs:
                if watchdog.is_stalled():
                    exit_for_a_fresh_process(f"agent {watchdog.name} has been idle {watchdog.stalled_for():.0f} s "
                                             "with records on its partitions it was never handed")

    @wire("deduplicate", normalized_topic)
    async def deduplicate(stream):  # noqa: ANN001
        try:
            async with sinks.use(postgres):
                await deduplicate_stream(stream, "deduplicate", critical=False)
        finally:
            await asyncio.to_thread(changelog.close)  # a bounded flush; every checkpoint already waited for its records

    @wire("deduplicate-critical", critical_topic)
    async def deduplicate_critical(stream):  # noqa: ANN001
        """The same stage for critical alerts, on their own co-partitioned topic and agent: it
        shares the dedup table, so an identity has one state whatever its severity."""
        async with sinks.use(postgres):
            await deduplicate_stream(stream, "deduplicate-critical", critical=True)

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
        failpoints.hit("dedup.send_stored")
        by_partition: dict[int, list[PackedAlert]] = defaultdict(list)
        for sighting in plan.batch.sightings:
            if sighting.stored is not None:
                by_partition[sighting.partition].append(sighting.stored)  # as read: not encoded again
        pending = [await stored_topic.send(value=blob, partition=partition, force=True)
                   for partition, alerts in by_partition.items()
                   for blob in pack(alerts, settings.packed_record_max_bytes, settings.internal_record_format)]
        await asyncio.gather(*pending)

    if settings.search_enabled:
        @wire("index")
        async def index() -> None:
            """The search sink as its own consumer of stored alerts: a slow or down search
            store shows as this consumer's lag, and never holds back Postgres."""
            search = sinks.add(build_search_sink(settings))
            consumer = BatchConsumer(settings, group_id=f"{settings.app_id}-index", topic=settings.topic_stored)
            # throttled documents: tried again with the shared backoff, then parked on a retry topic
            circuit = CircuitBreaker(search, settings.sink_retry, dead_letter_alert(settings.topic_stored), wait=consumer.wait_paused,
                                     retry_later=index_later, throttle_retries=settings.search_throttle_retries)
            async with sinks.use(search):
                await consumer.start()
                try:
                    await index_batches(consumer, circuit)
                finally:
                    await consumer.stop()

        async def index_batches(consumer: BatchConsumer, circuit: CircuitBreaker[WriteBatch]) -> None:
            async for records in consumer.batches(settings.index_batch):
                RECORDS_RECEIVED.labels("index").inc(len(records))
                batch = WriteBatch()
                retried_from.clear()
                for record in records:
                    try:
                        if record.headers.get(PROVIDER) == CANONICAL_PROVIDER.encode():  # replayed from the DLQ
                            batch.stored.append(_decode_canonical(record.value or b""))
                        else:
                            items = unpack(record.value)
                            batch.stored.extend(items)
                            if record.headers.get(ATTEMPTS):  # back from a retry tier: it keeps its count
                                retried_from.update((item.uid, record.headers) for item in items)
                    except Exception as exc:  # foreign bytes on the internal topic: dead-lettered; the rest fails the batch
                        verdict = INDEX_CLASSIFIER.classify(exc)
                        if verdict.transient:
                            raise
                        await dead_letter_record(record, reason=verdict.reason, detail=verdict.detail)
                await circuit.write(batch)
                await consumer.commit(records)

    async def park(value: bytes, headers: dict[str, bytes], *, source: str, partition: int, offset: int,
                   error: Exception | str, target: str) -> None:
        """A record that failed transiently: to the retry tier for its attempt, or the DLQ after the last."""
        routed = router.retry(value=value, headers=headers, source=source, partition=partition, offset=offset,
                              error=error, target=target, now_ms=int(time.time() * 1000))
        if routed.role is Role.DEAD_LETTER:
            DLQ_RECORDS.labels(RETRIES_EXHAUSTED).inc()
        else:
            RETRIES.labels(routed.topic).inc()
        await (await send_routed(routed))

    retried_from: dict[str, dict[str, bytes]] = {}  # this index batch: alert uid → the retry record it came back on

    async def index_later(batch: WriteBatch, error: Exception) -> None:
        """Still throttled: parked again with the failure headers it came back with (none on a first
        failure), so its attempts count up to the DLQ (`retries_exhausted`) instead of starting over."""
        for headers, alerts in by_origin(batch.stored, retried_from, lambda item: item.uid):
            for blob in pack(alerts, settings.packed_record_max_bytes, settings.internal_record_format):
                await park(blob, headers, source=settings.topic_stored, partition=-1, offset=-1, error=error,
                           target=settings.topic_stored)

    def retry_forwarder(tier: int, topic: str, delay_s: float):  # noqa: ANN202
        async def forward() -> None:
            """Sends each parked record back to its target once its delay has passed."""
            consumer = BatchConsumer(settings, group_id=f"{settings.app_id}-retry-{tier}", topic=topic, sparse=True)
            await consumer.start()
            try:
                async for records in consumer.batches(settings.stream_batch):
                    for record in records:
                        if (wait := due_in_s(record.timestamp_ms, delay_s)) > 0:
                            await consumer.wait_paused(wait)
                        target = retry_target_of(record.headers, settings.topic_alerts)
                        await (await topic_named(target).send(key=record.key, value=record.value,
                                                              headers=record.headers, force=True))
                    await consumer.commit(records)
            finally:
                await consumer.stop()
        forward.__name__ = f"retry_tier_{tier}"
        return forward

    for tier, (topic, delay_s) in enumerate(zip(tier_topics(settings), settings.retry_delays_s), start=1):
        wire(f"retry-tier-{tier}")(retry_forwarder(tier, topic, delay_s))

    @wire("maintain-postgres")
    async def maintain_postgres() -> None:
        """Partitions ahead, retention, last_alert TTL: every worker tries, an advisory lock lets one run."""
        await run_maintenance_forever(settings)

    if settings.archive_enabled:
        @wire("archive")
        async def archive() -> None:
            """Old alerts from Postgres to the search store (sinks/archiver.py); an advisory lock lets one worker run it."""
            from sinks.archiver import run_archiver_forever

            await run_archiver_forever(settings)

    @wire("monitor-event-loop")
    async def monitor_event_loop() -> None:
        await watch_event_loop(PROBE_INTERVAL_S, settings.loop_blocked_threshold_s)

    @app.page("/metrics")
    async def metrics(web, request):  # noqa: ANN001
        return web.bytes(generate_latest(), content_type=CONTENT_TYPE_LATEST.split(";")[0])

    install_observability(app, settings)  # lag poller, /healthz, /readyz, /status
    wire.check()  # every stage of the topology has its runner

    return app


def describe(settings: Settings) -> str:
    """The stages `create_app` wires for these settings (streams/topology.py)."""
    raw_store = not RawPolicy.load(settings.raw_storage_policy_path).stores_nothing
    return render(build_topology(settings, raw_store=raw_store))
