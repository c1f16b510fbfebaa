"""Token buckets of the gateway, and the IETF RateLimit headers.

Pure: time is passed in, nothing here sleeps or reads a clock, so the logic is
tested exactly (tests/unit/gateway/test_ratelimit.py).

After authentication a webhook must find tokens in three buckets: its tenant's
(requests), its (tenant, provider) pair's (requests) and its tenant's **bytes**
bucket (the body's size: a 1 MB body of tiny alerts costs what validating it
costs, not what a 12-byte one does). It takes from all of them or from none,
so a request refused by one bucket does not drain the others.

A sender that never retries (Grafana) is deferred over its limit rather than
refused, but the deferral is charged like an accepted request: the buckets go
into debt, at most `max_debt` bursts deep; beyond that it is refused too.

Before authentication, `AuthGuard` limits what unauthenticated traffic can cost:
unknown keys per client address, and key lookups in Postgres per process.

Headers follow draft-ietf-httpapi-ratelimit-headers (structured fields):
`RateLimit-Policy: "tenant";q=400;w=2, "provider";q=200;w=2, "bytes";q=16777216;qu="content-bytes";w=4`
and `RateLimit: "provider";r=12;t=0`, naming the bucket closest to empty
(relative to its size). A bucket of size `burst` refilling at `rate_per_s` is
described as a quota of `burst` per window `w = burst / rate_per_s` seconds.
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from dataclasses import dataclass

from config.settings import RateLimit, Settings
from core.token_bucket import Bucket


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    retry_after_s: int  # whole seconds to wait before a retry can pass (0 when allowed or deferred)
    headers: dict[str, str]
    limited_by: str | None  # "tenant", "provider" or "bytes" when over a limit (refused or deferred)
    deferred: bool = False  # over the limit, taken anyway as debt (senders that never retry)


class RateLimiter:
    """Buckets created on first use; the key sets are bounded by tenants (API keys) x providers."""

    def __init__(self, tenant_default: RateLimit, provider_default: RateLimit,
                 tenant_overrides: dict[str, RateLimit] | None = None,
                 provider_overrides: dict[str, RateLimit] | None = None, *,
                 byte_default: RateLimit | None = None, byte_overrides: dict[str, RateLimit] | None = None,
                 max_debt: float = 1.0) -> None:
        self._tenant_default = tenant_default
        self._provider_default = provider_default
        self._tenant_overrides = tenant_overrides or {}
        self._provider_overrides = provider_overrides or {}
        self._byte_default = byte_default
        self._byte_overrides = byte_overrides or {}
        self._max_debt = max_debt
        self._tenants: dict[str, Bucket] = {}
        self._providers: dict[tuple[str, str], Bucket] = {}
        self._bytes: dict[str, Bucket] = {}

    @classmethod
    def from_settings(cls, settings: Settings) -> "RateLimiter":

        return cls(settings.gateway_tenant_rate_limit, settings.gateway_provider_rate_limit,
                   settings.gateway_tenant_rate_limits, settings.gateway_provider_rate_limits,
                   byte_default=settings.gateway_tenant_byte_rate_limit,
                   byte_overrides=settings.gateway_tenant_byte_rate_limits,
                   max_debt=settings.gateway_defer_max_debt)

    def _buckets(self, tenant: str, provider: str, now: float) -> tuple[Bucket, Bucket, Bucket | None]:
        t = self._tenants.get(tenant)
        if t is None:
            t = self._tenants[tenant] = Bucket.full(self._tenant_overrides.get(tenant, self._tenant_default), now)
        p = self._providers.get((tenant, provider))
        if p is None:
            limit = self._provider_overrides.get(provider, self._provider_default)
            p = self._providers[(tenant, provider)] = Bucket.full(limit, now)
        b = self._bytes.get(tenant)
        if b is None and self._byte_default is not None:
            b = self._bytes[tenant] = Bucket.full(self._byte_overrides.get(tenant, self._byte_default), now)
        return t, p, b

    def acquire(self, tenant: str, provider: str, now: float, size: int = 0, defer: bool = False) -> Decision:
        """One request of `size` body bytes. `defer`: the sender never retries, so over the limit it
        is deferred (charged as debt) while every bucket stays within `max_debt` bursts of debt."""
        t, p, b = self._buckets(tenant, provider, now)
        # a body bigger than the byte burst passes once the bucket is full, costing all of it
        charges = [("tenant", t, 1.0), ("provider", p, 1.0)]
        if b is not None:
            charges.append(("bytes", b, float(min(size, b.burst))))
        for _, bucket, _ in charges:
            bucket.refill(now)
        waits = {name: bucket.wait_s(cost) for name, bucket, cost in charges}
        wait = max(waits.values())
        if wait == 0.0:
            for _, bucket, cost in charges:
                bucket.tokens -= cost
            return Decision(True, 0, rate_limit_headers(t, p, 0, b), None)
        limited_by = max(waits, key=lambda name: waits[name])
        if defer and all(bucket.tokens - cost >= -self._max_debt * bucket.burst - 1e-9 for _, bucket, cost in charges):
            for _, bucket, cost in charges:
                bucket.tokens -= cost
            return Decision(False, 0, rate_limit_headers(t, p, 0, b), limited_by, deferred=True)
        retry_after = max(1, math.ceil(wait))
        return Decision(False, retry_after, rate_limit_headers(t, p, retry_after, b), limited_by)


def rate_limit_headers(tenant: Bucket, provider: Bucket, retry_after_s: int = 0, body_bytes: Bucket | None = None) -> dict[str, str]:
    policy = f'"tenant";q={_num(tenant.burst)};w={tenant.window_s}, "provider";q={_num(provider.burst)};w={provider.window_s}'
    named = [("tenant", tenant), ("provider", provider)]
    if body_bytes is not None:
        policy += f', "bytes";q={_num(body_bytes.burst)};qu="content-bytes";w={body_bytes.window_s}'
        named.append(("bytes", body_bytes))
    # the bucket closest to empty, relative to its size (requests and bytes are different units)
    name, bucket = min(named, key=lambda nb: nb[1].tokens / nb[1].burst)
    remaining = max(0, math.floor(bucket.tokens))
    # t: with tokens left, seconds until the bucket is full; when empty, until the next token
    reset = max(1, retry_after_s, math.ceil(bucket.wait_s())) if remaining == 0 else math.ceil(bucket.reset_s())
    return {"RateLimit-Policy": policy, "RateLimit": f'"{name}";r={remaining};t={reset}'}


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) else f"{value:g}"


# ---------------------------------------------------------------- before authentication

def client_bucket_key(host: str | None) -> str:
    """The address a pre-auth bucket is kept for: IPv4 as is, IPv6 by its /64 (one host owns a
    whole /64, so per-address buckets would be free to dodge)."""
    if not host:
        return "unknown"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # an IPv4 client on a dual-stack socket
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)


class AuthGuard:
    """What unauthenticated traffic may cost, checked before a key is looked up in Postgres.

    - `failures`: per client address, one token per key that Postgres did not know (a lookup spent
      for nothing). An empty bucket means no more lookups for that address until it refills; keys
      still in the cache keep working from it (they cost nothing).
    - `lookups`: per process, one token per Postgres lookup of a key not in the cache, whoever
      asks. It bounds what a crowd of addresses can make Postgres do.
    The address map is an LRU of `max_addresses`; an evicted address starts again with a full bucket.
    """

    def __init__(self, failure_limit: RateLimit, lookup_limit: RateLimit, max_addresses: int = 65_536) -> None:
        self._failure_limit = failure_limit
        self._lookups = Bucket.full(lookup_limit, float("-inf"))  # full at the first call, whatever the clock
        self._max = max_addresses
        self._failures: OrderedDict[str, Bucket] = OrderedDict()

    @classmethod
    def from_settings(cls, settings: Settings) -> "AuthGuard":
        return cls(settings.gateway_auth_failure_rate_limit, settings.gateway_key_lookup_rate_limit)

    def _bucket(self, address: str, now: float) -> Bucket | None:
        bucket = self._failures.get(address)
        if bucket is not None:
            bucket.refill(now)
            self._failures.move_to_end(address)
        return bucket

    def address_wait_s(self, address: str, now: float) -> int:
        """0 if this address may have a key looked up now, else whole seconds until it may."""
        bucket = self._bucket(address, now)
        if bucket is None:
            return 0
        wait = bucket.wait_s()
        return 0 if wait == 0.0 else max(1, math.ceil(wait))

    def failed(self, address: str, now: float) -> None:
        """A lookup found no key: it costs this address a token."""
        bucket = self._bucket(address, now)
        if bucket is None:
            bucket = self._failures[address] = Bucket.full(self._failure_limit, now)
            while len(self._failures) > self._max:
                self._failures.popitem(last=False)
        bucket.tokens = max(0.0, bucket.tokens - 1)

    def take_lookup(self, now: float) -> bool:
        self._lookups.refill(now)
        if self._lookups.wait_s() > 0:
            return False
        self._lookups.tokens -= 1
        return True

    def lookup_wait_s(self) -> int:
        return max(1, math.ceil(self._lookups.wait_s()))
