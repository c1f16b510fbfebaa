"""Token buckets of the gateway: exact behaviour with an explicit clock, and properties."""

from __future__ import annotations

import re

from hypothesis import given, settings as hsettings
from hypothesis import strategies as st

from config.settings import RateLimit
from core.token_bucket import Bucket
from gateway.ratelimit import RateLimiter


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


# ---------------------------------------------------------------- bytes and deferral (issue 14, findings 1 and 7)

MIB = 1024 * 1024


def byte_limiter(rate_bytes: float = MIB, burst_bytes: float = 2 * MIB, **kw) -> RateLimiter:  # noqa: ANN003
    roomy = RateLimit(rate_per_s=1000, burst=1000)
    return RateLimiter(roomy, roomy, byte_default=RateLimit(rate_per_s=rate_bytes, burst=burst_bytes), **kw)


def test_a_megabyte_body_costs_more_than_a_tiny_one() -> None:
    """Finding 1: requests were the only unit, so 1 MB of tiny alerts cost what 12 bytes cost."""
    rl = byte_limiter()
    assert rl.acquire("acme", "keep", 0.0, size=MIB).allowed
    assert rl.acquire("acme", "keep", 0.0, size=MIB).allowed
    refused = rl.acquire("acme", "keep", 0.0, size=MIB)
    assert not refused.allowed and refused.limited_by == "bytes"
    assert refused.retry_after_s == 1  # 1 MiB at 1 MiB/s
    assert 'qu="content-bytes"' in refused.headers["RateLimit-Policy"]
    assert refused.headers["RateLimit"].startswith('"bytes";r=0;')
    # the same tenant's 12-byte alerts: 500 of them are 6 KB, they pass as soon as 6 KB refilled
    assert sum(rl.acquire("acme", "keep", 0.01, size=12).allowed for _ in range(500)) == 500
    assert rl.acquire("other", "keep", 0.0, size=MIB).allowed  # another tenant's bytes are its own


def test_a_body_over_the_byte_burst_passes_once_the_bucket_is_full() -> None:
    rl = byte_limiter(burst_bytes=MIB)
    assert rl.acquire("acme", "keep", 0.0, size=3 * MIB).allowed  # costs all of the bucket, never waits forever
    assert not rl.acquire("acme", "keep", 0.0, size=1).allowed


def test_a_refusal_by_bytes_takes_no_request_token() -> None:
    rl = RateLimiter(RateLimit(rate_per_s=1, burst=2), RateLimit(rate_per_s=1000, burst=1000),
                     byte_default=RateLimit(rate_per_s=10, burst=100))
    assert rl.acquire("acme", "keep", 0.0, size=100).allowed  # the bytes bucket is empty now
    refused = rl.acquire("acme", "keep", 0.0, size=50)
    assert not refused.allowed and refused.limited_by == "bytes"
    assert rl.acquire("acme", "keep", 0.0, size=0).allowed  # the request bucket still had its second token...
    refused = rl.acquire("acme", "keep", 0.0, size=0)
    assert not refused.allowed and refused.limited_by == "tenant"  # ...and only that one


def test_tenant_byte_overrides() -> None:
    rl = byte_limiter(byte_overrides={"big": RateLimit(rate_per_s=MIB, burst=10 * MIB)})
    assert sum(rl.acquire("big", "keep", 0.0, size=MIB).allowed for _ in range(20)) == 10
    assert sum(rl.acquire("small", "keep", 0.0, size=MIB).allowed for _ in range(20)) == 2


def test_deferral_is_charged_and_capped() -> None:
    """Finding 7: over its limit Grafana was deferred without end and without charge (1,000 of 1,000
    got 202). Now a deferral takes its tokens as debt, at most `max_debt` bursts deep; then refused."""
    rl = limiter(tenant=(1000, 1000), provider=(1, 10), max_debt=1.0)
    answers = [rl.acquire("acme", "grafana", 0.0, defer=True) for _ in range(1000)]
    assert sum(a.allowed for a in answers) == 10
    assert sum(a.deferred for a in answers) == 10  # one burst of debt
    refused = [a for a in answers if not a.allowed and not a.deferred]
    assert len(refused) == 980 and all(a.retry_after_s >= 1 and a.limited_by == "provider" for a in refused)
    assert rl._tenants["acme"].tokens == 1000 - 20  # the deferred ones were charged to the tenant too
    # the debt is paid back at the bucket's rate: nothing passes until the 10 tokens owed refilled
    assert not rl.acquire("acme", "grafana", 10.5, defer=False).allowed
    assert rl.acquire("acme", "grafana", 11.0, defer=False).allowed


def test_no_deferral_when_max_debt_is_zero() -> None:
    rl = limiter(tenant=(1000, 1000), provider=(1, 2), max_debt=0.0)
    answers = [rl.acquire("acme", "grafana", 0.0, defer=True) for _ in range(5)]
    assert [a.allowed for a in answers] == [True, True, False, False, False]
    assert not any(a.deferred for a in answers)


@hsettings(max_examples=200, deadline=None)
@given(rate=st.floats(0.5, 100), burst=st.integers(1, 100), debt=st.floats(0, 3),
       gaps=st.lists(st.floats(0, 2), min_size=1, max_size=300))
def test_accepted_plus_deferred_never_exceed_burst_plus_debt_plus_rate_times_elapsed(rate, burst, debt, gaps) -> None:  # noqa: ANN001
    rl = RateLimiter(RateLimit(rate_per_s=1e9, burst=1e9), RateLimit(rate_per_s=rate, burst=burst), max_debt=debt)
    now, taken = 0.0, 0
    for gap in gaps:
        now += gap
        decision = rl.acquire("t", "grafana", now, defer=True)
        taken += decision.allowed or decision.deferred
    assert taken <= burst + debt * burst + rate * now + 1e-6


# ---------------------------------------------------------------- before authentication (finding 5)

def test_unknown_keys_per_address_are_limited_and_ipv6_counts_per_64() -> None:
    from gateway.ratelimit import AuthGuard, client_bucket_key

    guard = AuthGuard(RateLimit(rate_per_s=1, burst=3), RateLimit(rate_per_s=1000, burst=1000))
    a = client_bucket_key("203.0.113.7")
    for _ in range(3):
        assert guard.address_wait_s(a, 0.0) == 0
        guard.failed(a, 0.0)
    assert guard.address_wait_s(a, 0.0) == 1
    assert guard.address_wait_s(a, 1.0) == 0  # one token back after a second
    assert guard.address_wait_s(client_bucket_key("203.0.113.8"), 0.0) == 0  # another address
    # every address of one /64 is one bucket; the next /64 is another
    v6 = [client_bucket_key(f"2001:db8:0:1::{i:x}") for i in range(1, 5)]
    assert len(set(v6)) == 1
    assert client_bucket_key("2001:db8:0:2::1") != v6[0]
    assert client_bucket_key("::ffff:203.0.113.7") == a  # an IPv4 client on a dual-stack socket
    assert client_bucket_key(None) == "unknown"


def test_key_lookups_per_process_are_bounded() -> None:
    from gateway.ratelimit import AuthGuard

    guard = AuthGuard(RateLimit(rate_per_s=1, burst=3), RateLimit(rate_per_s=10, burst=20))
    assert sum(guard.take_lookup(100.0) for _ in range(100)) == 20
    assert guard.lookup_wait_s() == 1
    assert sum(guard.take_lookup(101.0) for _ in range(100)) == 10


def test_the_address_map_is_bounded() -> None:
    from gateway.ratelimit import AuthGuard

    guard = AuthGuard(RateLimit(rate_per_s=1, burst=1), RateLimit(rate_per_s=1, burst=1), max_addresses=100)
    for i in range(1000):
        guard.failed(f"10.0.{i // 256}.{i % 256}", 0.0)
    assert len(guard._failures) == 100
