"""Every Prometheus metric of the worker, named `alertstream_*`, in one place.

Labels are bounded: tenant and provider come from configuration-sized sets,
reasons and outcomes from fixed code lists.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Sequence
from datetime import datetime
from typing import Protocol

from prometheus_client import Counter, Gauge, Histogram

from core.records import WriteBatch


class Received(Protocol):  # a stored alert: schemas.alert.PackedAlert or NormalizedAlert
    @property
    def received_at_ms(self) -> int: ...


RECORDS_RECEIVED = Counter(
    "alertstream_records_received_total", "Kafka records taken by a stage.", ["stage"]
)
ALERTS = Counter(
    "alertstream_alerts_total",
    "Alerts seen by the dedup stage, by outcome: new (first sighting), changed (partial duplicate, stored), duplicate (exact repeat, not stored).",
    ["tenant", "provider", "outcome"],
)
DLQ_RECORDS = Counter(
    "alertstream_dlq_records_total", "Records sent to the dead-letter topic, by reason.", ["reason"]
)
SINK_WRITTEN = Counter(
    "alertstream_sink_rows_written_total", "Alerts durably written by a sink.", ["sink"]
)
SINK_ERRORS = Counter(
    "alertstream_sink_errors_total", "Failed sink write attempts (retried), by error class.", ["sink", "error"]
)
SINK_FLUSH_SECONDS = Histogram(
    "alertstream_sink_flush_seconds", "Time to write one batch to a sink, retries included.", ["sink"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SINK_BATCH_SIZE = Histogram(
    "alertstream_sink_batch_size", "Alerts per sink batch.", ["sink"],
    buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000, 10000),
)
DEDUP_EXPIRED = Counter(
    "alertstream_dedup_state_expired_total", "Identities removed from the dedup table after the state TTL without a sighting."
)
DEDUP_REPLAYED = Counter(
    "alertstream_dedup_replayed_sightings_total", "Sightings read again after a crash or a rebalance (their flow's "
    "position was already decided and durable): skipped, neither stored nor counted twice.", ["stage"],
)
OFFSET_GAPS = Counter(
    "alertstream_dedup_offset_gaps_total", "Times a dedup agent was handed an offset past the next one it expected on a partition "
    "(records skipped by the consumer, or offsets the broker left out).", ["topic"],
)
DEDUP_BATCH_FAILURES = Counter(
    "alertstream_dedup_batch_failures_total", "Dedup batches that failed and were not acked: retried in-process, then the "
    "process exits for a fresh one that resumes from the committed offsets.", ["stage"],
)
PRIORITY_IN_FLIGHT = Gauge(
    "alertstream_priority_in_flight_records", "Critical records (input or internal) this process is working on right now; while "
    "non-zero, its bulk stages wait (at most 0.5 s) before their next batch.",
)
DEDUP_RATIO = Gauge(
    "alertstream_dedup_ratio",
    "Exact duplicates / alerts seen since the worker started, per tenant and provider (use rate() of alertstream_alerts_total for windows).",
    ["tenant", "provider"],
)
NORMALIZE_RESEND_HITS = Counter(
    "alertstream_normalize_resend_cache_hits_total",
    "Records the normalize stage found in its re-send cache: built before, not normalized again.")
NORMALIZE_RESEND_MISSES = Counter(
    "alertstream_normalize_resend_cache_misses_total", "Records the normalize stage looked up in its re-send cache and normalized.")
NORMALIZE_RESEND_CACHE_BYTES = Gauge("alertstream_normalize_resend_cache_bytes", "Bytes held by the normalize stage's re-send cache (its entries' counted size).")
DEDUP_CACHE_HIT_RATIO = Gauge("alertstream_dedup_cache_hit_ratio", "Dedup state reads answered by the in-process LRU cache.")
DEDUP_BLOOM_SKIPPED_READS = Gauge(
    "alertstream_dedup_bloom_skipped_reads", "Table reads skipped because the Bloom filter said the identity is certainly new (since start)."
)
CIRCUIT_STATE = Gauge("alertstream_sink_circuit_state", "Circuit of a sink: 0 closed, 1 open (sink failing, partitions paused), 2 half-open (probing).", ["sink"])
SINK_REJECTED = Counter("alertstream_sink_rejected_total", "Alerts a sink refused for good (bad data), sent to the DLQ.", ["sink"])
EVENT_LOOP_LAG = Gauge("alertstream_event_loop_lag_seconds", "How late the last event-loop probe woke up (the loop was busy or blocked this long).")
EVENT_LOOP_BLOCKED = Counter("alertstream_event_loop_blocked_total", "Probes that found the event loop blocked longer than ALERTSTREAM_LOOP_BLOCKED_THRESHOLD_S.")
RETRIES = Counter("alertstream_retry_records_total", "Records parked on a retry topic after a transient failure, by tier topic.", ["topic"])

# --- observability (issue #9): lag, end-to-end latency, process health ---------------------------
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
CONSUMER_LAG = Gauge(
    "alertstream_consumer_lag",
    "Records between a consumer group's committed offset and the partition's end offset (no commit yet: from the log start).",
    ["group", "topic", "partition"],
)
CONSUMER_LAG_POLL_ERRORS = Counter(
    "alertstream_consumer_lag_poll_errors_total", "Lag polls that failed (broker unreachable, group coordinator busy), by group.", ["group"]
)
CONSUMER_LAG_POLLED = Gauge(
    "alertstream_consumer_lag_last_poll_timestamp_seconds", "Unix time of the last successful lag poll."
)
E2E_EVENT_LATENCY = Histogram(
    "alertstream_e2e_event_latency_seconds",
    "From the alert's own time (lastReceived) to its Postgres write, for stored (new or changed) alerts.",
    ["provider"], buckets=LATENCY_BUCKETS,
)
E2E_INGEST_LATENCY = Histogram(
    "alertstream_e2e_ingest_latency_seconds",
    "From the input record's Kafka timestamp (ingest) to the Postgres write of its alert, every sighting (duplicates too).",
    buckets=LATENCY_BUCKETS,
)
# Finer between 1 and 10 s than LATENCY_BUCKETS: "searchable within 5 s" must be told from 2.5-5 s.
INDEX_LATENCY_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 4, 5, 7.5, 10, 30, 60, 300, 900, 3600)
E2E_INDEX_LATENCY = Histogram(
    "alertstream_e2e_index_latency_seconds",
    "From the input record's Kafka timestamp (ingest) to the search store's acknowledgement of its stored alert; "
    "searchable after the index's next refresh (search_refresh_interval).",
    buckets=INDEX_LATENCY_BUCKETS,
)
WORKER_RSS = Gauge("alertstream_worker_rss_bytes", "Resident memory of the worker process.")


def _rss_bytes() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss)


WORKER_RSS.set_function(_rss_bytes)  # read at scrape time: always current, no sampler task


def observe_many(histogram, values: list[float]) -> None:  # noqa: ANN001 - a Histogram or its child
    """Observe many values at once: one lock round per bucket instead of per value.

    prometheus-client has no bulk observe and `observe()` costs ~1-2 us, too much per alert on the
    dedup stage's hot path; this fills the same (non-cumulative) bucket counters that `observe()`
    fills. tests/unit/streams/test_health.py checks that the result equals one `observe()` per value, so a
    library change that breaks the assumption fails a test rather than the metric."""
    if not values:
        return
    bounds = getattr(histogram, "_upper_bounds", None)
    if bounds is None:  # not the layout this relies on: the slow, public way
        for value in values:
            histogram.observe(value)
        return
    counts = [0] * len(bounds)
    for value in values:
        counts[bisect_left(bounds, value)] += 1  # the first bound >= value, as observe() picks it
    histogram._sum.inc(sum(values))
    for i, count in enumerate(counts):
        if count:
            histogram._buckets[i].inc(count)


def observe_end_to_end(batch: WriteBatch, now_s: float | None = None) -> None:
    """Latency of a batch just written to Postgres: ingest → write for every sighting, event time
    → write for the stored alerts (an unparsable event time is skipped, never fatal)."""
    now_s = time.time() if now_s is None else now_s
    observe_many(E2E_INGEST_LATENCY, [max(0.0, now_s - s.received_at_ms / 1000) for s in batch.sightings])
    by_provider: dict[str, list[float]] = {}
    event_seconds: dict[str, float | None] = {}  # alerts of one webhook share their timestamp: parse once
    for item in batch.stored:
        stamp = item.alert.last_received
        if stamp not in event_seconds:
            event_seconds[stamp] = _epoch_s(stamp)
        if (event_s := event_seconds[stamp]) is not None:
            by_provider.setdefault(item.alert.provider_type, []).append(max(0.0, now_s - event_s))
    for provider, values in by_provider.items():
        observe_many(E2E_EVENT_LATENCY.labels(provider), values)


def observe_indexed(items: Sequence[Received], now_s: float | None = None) -> None:
    """Latency of stored alerts the search store just acknowledged: ingest → indexed."""
    now_s = time.time() if now_s is None else now_s
    observe_many(E2E_INDEX_LATENCY, [max(0.0, now_s - item.received_at_ms / 1000) for item in items])


def _epoch_s(iso: str) -> float | None:
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError, TypeError):
        return None
