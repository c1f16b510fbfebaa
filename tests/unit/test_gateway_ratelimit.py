"""Token buckets of the gateway: exact behaviour with an explicit clock, and properties."""

from __future__ import annotations

import re

from hypothesis import given, settings as hsettings
from hypothesis import strategies as st

from gateway.ratelimit import Bucket, RateLimiter
from streams.settings import RateLimit


def limiter(tenant=(10, 20), provider=(5, 5), **kw) -> RateLimiter:  # noqa: ANN001
    return RateLimiter(RateLimit(rate_per_s=tenant[0], burst=tenant[1]), RateLimit(rate_per_s=provider[0], burst=provider[1]), **kw)


def test_burst_then_refused_with_retry_after_and_headers() -> None:
    rl = limiter()
    assert all(rl.acquire("acme", "grafana", 0.0).allowed for _ in range(5))
    refused = rl.acquire("acme", "grafana", 0.0)
    assert not refused.allowed and refused.limited_by == "provider"
    assert refused.retry_after_s == 1  # 1 token at 5/s takes 0.2 s, rounded up to whole seconds
    assert refused.headers["RateLimit-Policy"] == '"tenant";q=20;w=2, "provider";q=5;w=1'
    assert re.fullmatch(r'"provider";r=0;t=1', refused.headers["RateLimit"])


def test_refill_over_time() -> None:
    rl = limiter()
    for _ in range(5):
        rl.acquire("acme", "grafana", 0.0)
    assert not rl.acquire("acme", "grafana", 0.1).allowed
    assert rl.acquire("acme", "grafana", 0.3).allowed  # 0.3 s x 5/s = 1.5 tokens


def test_providers_of_one_tenant_have_their_own_buckets_but_share_the_tenant_bucket() -> None:
    rl = limiter(tenant=(1, 8), provider=(1, 5))
    assert sum(rl.acquire("acme", "grafana", 0.0).allowed for _ in range(10)) == 5
    assert sum(rl.acquire("acme", "prometheus", 0.0).allowed for _ in range(10)) == 3  # tenant bucket: 8 in all
    refused = rl.acquire("acme", "datadog", 0.0)
    assert not refused.allowed and refused.limited_by == "tenant"
    assert rl.acquire("other", "grafana", 0.0).allowed  # another tenant is untouched


def test_a_refusal_takes_no_token_from_the_other_bucket() -> None:
    rl = limiter(tenant=(1, 3), provider=(1, 1))
    assert rl.acquire("acme", "grafana", 0.0).allowed
    for _ in range(5):
        assert not rl.acquire("acme", "grafana", 0.0).allowed  # provider bucket empty
    assert sum(rl.acquire("acme", "zabbix", 0.0).allowed for _ in range(5)) == 1  # zabbix's own bucket: 1
    assert rl.acquire("acme", "sentry", 0.0).allowed  # tenant still had 3 - 2 = 1


def test_overrides_per_tenant_and_provider() -> None:
    rl = limiter(tenant_overrides={"big": RateLimit(rate_per_s=100, burst=100)},
                 provider_overrides={"grafana": RateLimit(rate_per_s=1, burst=2)})
    assert sum(rl.acquire("big", "zabbix", 0.0).allowed for _ in range(50)) == 5  # provider default 5
    assert sum(rl.acquire("big", "grafana", 0.0).allowed for _ in range(50)) == 2


def test_headers_on_allowed_requests_count_down() -> None:
    rl = limiter(tenant=(10, 20), provider=(5, 5))
    first = rl.acquire("acme", "grafana", 0.0)
    assert first.headers["RateLimit"] == '"provider";r=4;t=1'


@hsettings(max_examples=200, deadline=None)
@given(rate=st.floats(0.5, 1000), burst=st.integers(1, 500),
       gaps=st.lists(st.floats(0, 2), min_size=1, max_size=300))
def test_never_more_than_burst_plus_rate_times_elapsed(rate: float, burst: int, gaps: list[float]) -> None:
    rl = RateLimiter(RateLimit(rate_per_s=1e9, burst=1e9), RateLimit(rate_per_s=rate, burst=burst))
    now, allowed = 0.0, 0
    for gap in gaps:
        now += gap
        decision = rl.acquire("t", "p", now)
        allowed += decision.allowed
        assert decision.allowed or decision.retry_after_s >= 1
    assert allowed <= burst + rate * now + 1e-6


@hsettings(max_examples=200, deadline=None)
@given(rate=st.floats(0.5, 100), burst=st.integers(1, 100), start=st.floats(0, 1000))
def test_retry_after_is_enough(rate: float, burst: int, start: float) -> None:
    """A client that waits Retry-After seconds after a refusal gets through (when alone)."""
    rl = RateLimiter(RateLimit(rate_per_s=1e9, burst=1e9), RateLimit(rate_per_s=rate, burst=burst))
    while rl.acquire("t", "p", start).allowed:
        pass
    refused = rl.acquire("t", "p", start)
    assert rl.acquire("t", "p", start + refused.retry_after_s).allowed


@given(tokens=st.floats(0, 100), elapsed=st.floats(0, 1e6))
def test_refill_never_exceeds_burst(tokens: float, elapsed: float) -> None:
    b = Bucket(rate_per_s=3, burst=100, tokens=tokens, updated=0)
    b.refill(elapsed)
    assert tokens <= b.tokens <= 100
