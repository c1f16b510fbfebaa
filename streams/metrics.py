"""Every Prometheus metric of the worker, named `alertstream_*`, in one place.

Labels are bounded: tenant and provider come from configuration-sized sets,
reasons and outcomes from fixed code lists.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

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
DEDUP_RATIO = Gauge(
    "alertstream_dedup_ratio",
    "Exact duplicates / alerts seen since the worker started, per tenant and provider (use rate() of alertstream_alerts_total for windows).",
    ["tenant", "provider"],
)
DEDUP_CACHE_HIT_RATIO = Gauge("alertstream_dedup_cache_hit_ratio", "Dedup state reads answered by the in-process LRU cache.")
DEDUP_BLOOM_SKIPPED_READS = Gauge(
    "alertstream_dedup_bloom_skipped_reads", "Table reads skipped because the Bloom filter said the identity is certainly new (since start)."
)
CIRCUIT_STATE = Gauge("alertstream_sink_circuit_state", "Circuit of a sink: 0 closed, 1 open (sink failing, partitions paused), 2 half-open (probing).", ["sink"])
SINK_REJECTED = Counter("alertstream_sink_rejected_total", "Alerts a sink refused for good (bad data), sent to the DLQ.", ["sink"])
EVENT_LOOP_LAG = Gauge("alertstream_event_loop_lag_seconds", "How late the last event-loop probe woke up (the loop was busy or blocked this long).")
EVENT_LOOP_BLOCKED = Counter("alertstream_event_loop_blocked_total", "Probes that found the event loop blocked longer than ALERTSTREAM_LOOP_BLOCKED_THRESHOLD_S.")
RETRIES = Counter("alertstream_retry_records_total", "Records parked on a retry topic after a transient failure, by tier topic.", ["topic"])
