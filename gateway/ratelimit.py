"""Token buckets per tenant and per (tenant, provider), and the IETF RateLimit headers.

Pure: time is passed in, nothing here sleeps or reads a clock, so the logic is
tested exactly (tests/unit/test_gateway_ratelimit.py). A request must find a
token in both its tenant's bucket and its (tenant, provider) bucket; it takes
both or neither, so a request refused by one bucket does not drain the other.

Headers follow draft-ietf-httpapi-ratelimit-headers (structured fields):
`RateLimit-Policy: "tenant";q=400;w=2, "provider";q=200;w=2` and
`RateLimit: "provider";r=12;t=0`, naming the bucket closest to empty.
A bucket of size `burst` refilling at `rate_per_s` is described as a quota of
`burst` requests per window `w = burst / rate_per_s` seconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from streams.settings import RateLimit, Settings


@dataclass(slots=True)
class Bucket:
    rate_per_s: float
    burst: float
    tokens: float
    updated: float  # monotonic seconds of the last refill

    @classmethod
    def full(cls, limit: RateLimit, now: float) -> "Bucket":
        return cls(limit.rate_per_s, limit.burst, limit.burst, now)

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate_per_s)
            self.updated = now

    def wait_s(self, cost: float = 1.0) -> float:
        """Seconds until `cost` tokens are there (0 if they are now)."""
        missing = cost - self.tokens
        # float slack: a client that waited exactly the advertised Retry-After must get through
        return 0.0 if missing <= 1e-9 else missing / self.rate_per_s

    def reset_s(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.burst - self.tokens) / self.rate_per_s)

    @property
    def window_s(self) -> int:
        return max(1, math.ceil(self.burst / self.rate_per_s))


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after_s: int  # whole seconds to wait before a retry can pass (0 when allowed)
    headers: dict[str, str]
    limited_by: str | None  # "tenant" or "provider" when refused


class RateLimiter:
    """Buckets created on first use; the key sets are bounded by tenants (API keys) x providers."""

    def __init__(self, tenant_default: RateLimit, provider_default: RateLimit,
                 tenant_overrides: dict[str, RateLimit] | None = None,
                 provider_overrides: dict[str, RateLimit] | None = None) -> None:
        self._tenant_default = tenant_default
        self._provider_default = provider_default
        self._tenant_overrides = tenant_overrides or {}
        self._provider_overrides = provider_overrides or {}
        self._tenants: dict[str, Bucket] = {}
        self._providers: dict[tuple[str, str], Bucket] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> "RateLimiter":
        return cls(settings.gateway_tenant_rate_limit, settings.gateway_provider_rate_limit,
                   settings.gateway_tenant_rate_limits, settings.gateway_provider_rate_limits)

    def _buckets(self, tenant: str, provider: str, now: float) -> tuple[Bucket, Bucket]:
        t = self._tenants.get(tenant)
        if t is None:
            t = self._tenants[tenant] = Bucket.full(self._tenant_overrides.get(tenant, self._tenant_default), now)
        p = self._providers.get((tenant, provider))
        if p is None:
            limit = self._provider_overrides.get(provider, self._provider_default)
            p = self._providers[(tenant, provider)] = Bucket.full(limit, now)
        return t, p

    def acquire(self, tenant: str, provider: str, now: float) -> Decision:
        t, p = self._buckets(tenant, provider, now)
        t.refill(now)
        p.refill(now)
        wait = max(t.wait_s(), p.wait_s())
        allowed = wait == 0.0
        if allowed:
            t.tokens -= 1
            p.tokens -= 1
        limited_by = None if allowed else ("tenant" if t.wait_s() >= p.wait_s() else "provider")
        retry_after = 0 if allowed else max(1, math.ceil(wait))
        return Decision(allowed, retry_after, rate_limit_headers(t, p, retry_after), limited_by)


def rate_limit_headers(tenant: Bucket, provider: Bucket, retry_after_s: int = 0) -> dict[str, str]:
    policy = f'"tenant";q={_num(tenant.burst)};w={tenant.window_s}, "provider";q={_num(provider.burst)};w={provider.window_s}'
    name, bucket = ("tenant", tenant) if tenant.tokens <= provider.tokens else ("provider", provider)
    remaining = max(0, math.floor(bucket.tokens))
    # t: with tokens left, seconds until the bucket is full; when empty, until the next token
    reset = max(1, retry_after_s, math.ceil(bucket.wait_s())) if remaining == 0 else math.ceil(bucket.reset_s())
    return {"RateLimit-Policy": policy, "RateLimit": f'"{name}";r={remaining};t={reset}'}


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"
