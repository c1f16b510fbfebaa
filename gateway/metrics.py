"""Prometheus metrics of the HTTP gateway, `alertstream_gateway_*`, served on the gateway's metrics
listener only (gateway/server.py): they name tenants.

Labels are bounded: `tenant` comes from API keys ("unknown" before
authentication), `provider` from the fixed provider list ("unknown" for any
other path), `reason` from fixed codes (auth, rate limit, backpressure,
validation reasons of the normalizers).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS_ACCEPTED = Counter(
    "alertstream_gateway_requests_accepted_total",
    "Webhooks answered 202: the broker acknowledged their record.", ["tenant", "provider"])
ALERTS_ACCEPTED = Counter(
    "alertstream_gateway_alerts_accepted_total",
    "Alerts in accepted webhooks (as the normalizer counts them).", ["tenant", "provider"])
REQUESTS_REJECTED = Counter(
    "alertstream_gateway_requests_rejected_total",
    "Webhooks refused, by reason: unauthenticated, bad_key, auth_rate_limited, keystore_busy, rate_limited, too_large, "
    "unsupported_media_type, validation_busy, validation_timeout, broker_unavailable, lag, the normalizer's "
    "invalid-payload codes, ...", ["tenant", "provider", "reason"])
REQUESTS_DEFERRED = Counter(
    "alertstream_gateway_requests_deferred_total",
    "Webhooks over their rate limit from senders that never retry, accepted onto the first retry tier (delayed, not lost).",
    ["tenant", "provider"])
RECEIVED_BYTES = Counter(
    "alertstream_gateway_received_bytes_total", "Body bytes of webhooks read, accepted or not.", ["tenant", "provider"])
REQUEST_SECONDS = Histogram(
    "alertstream_gateway_request_duration_seconds",
    "Time from request start to answer, broker acknowledgement included.", ["tenant", "provider"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))
INFLIGHT_BYTES = Gauge("alertstream_gateway_inflight_bytes", "Bytes produced but not yet acknowledged by the broker.")
BROKER_UP = Gauge("alertstream_gateway_broker_up", "1 while the last broker metadata request succeeded.")
CONSUMER_LAG = Gauge("alertstream_gateway_consumer_lag_records",
                     "Unprocessed records on the input topics (normalizer groups), as last measured by the gateway.")
