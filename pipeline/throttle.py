"""Consumer-side throttling: a token bucket per (tenant, provider), counted in alerts.

A record whose provider is over its processing rate is not processed now: the
normalizer parks it unchanged on the first retry tier (`core.errors.ErrorRouter.park`),
whose forwarder brings it back after the tier's delay (docs/gateway.md, "Consumer-side
throttling").
Pure: the clock is passed in.
"""

from __future__ import annotations

from prometheus_client import Counter

from config.settings import RateLimit
from core.token_bucket import Bucket


class ConsumerThrottle:
    def __init__(self, limits: dict[str, RateLimit]) -> None:
        self._limits = limits
        self._buckets: dict[tuple[str, str], Bucket] = {}

    def __bool__(self) -> bool:
        return bool(self._limits)

    def admit(self, tenant: str, provider: str, alerts: int, now: float) -> bool:
        """Take `alerts` tokens if they are there. A record bigger than the burst passes once the
        bucket is full (costing all of it), so no record waits forever."""
        limit = self._limits.get(provider)
        if limit is None:
            return True
        bucket = self._buckets.get((tenant, provider))
        if bucket is None:
            bucket = self._buckets[(tenant, provider)] = Bucket.full(limit, now)
        bucket.refill(now)
        cost = min(max(alerts, 1), bucket.burst)
        if bucket.wait_s(cost) > 0:
            return False
        bucket.tokens -= cost
        return True


THROTTLED_RECORDS = Counter(
    "alertstream_normalizer_throttled_records_total",
    "Input records over their provider's processing rate, parked on the first retry tier (delayed, not dropped).",
    ["tenant", "provider"])

