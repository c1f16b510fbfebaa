"""The load generator's payload factory (and loadgen's pure parts): deterministic, realistic, honest kinds."""

from __future__ import annotations

import collections
import hashlib
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks import loadgen, runner
from benchmarks.loadgen import (
    ProducerOptions,
    Scenario,
    check_loopback,
    parse_alerts_per_webhook,
    parse_mean_size,
    parse_mix,
    parse_size,
    parse_volume,
)
from benchmarks.payload_factory import (
    DEFAULT_MIX,
    KINDS,
    LEAN_SPECS,
    LOAD_PROFILES,
    MULTI_ALERT_PROVIDERS,
    PROVIDERS,
    SPECS,
    GeneratedRecord,
    LoadProfile,
    PayloadFactory,
    load_profile,
    spec_for,
)
from schemas.normalizers import InvalidPayload, NormalizeContext, normalize, normalizer_for

CTX = NormalizeContext(tenant="t1", received_at="2025-01-15T10:05:00.000Z")


def profile(**overrides: Any) -> LoadProfile:
    base: dict[str, Any] = dict(
        mix={p: 1 for p in PROVIDERS}, cardinality=200, full_dup_ratio=0.3, partial_dup_ratio=0.2, flap_ratio=0.1,
        alerts_per_webhook=4, mean_size_bytes=2000, seed=42, tenants=["acme", "globex"])
    base.update(overrides)
    return LoadProfile(**base)


# ---------------------------------------------------------------------------------------------- payload paths


def _walk(doc: Any, parts: list[str]) -> list[Any]:
    """Values at a dotted path; `x[]` fans out over a list; a JSON string on the way is parsed (SNS Message)."""
    if not parts:
        return [doc]
    if isinstance(doc, str):
        doc = orjson.loads(doc)
    head, rest = parts[0], parts[1:]
    if head.endswith("[]"):
        return [v for item in doc[head[:-2]] for v in _walk(item, rest)]
    return _walk(doc[head], rest)


def _values(doc: Any, path: str) -> list[str]:
    return [orjson.dumps(v, option=orjson.OPT_SORT_KEYS).decode() for v in _walk(doc, path.split("."))]


def alert_identities(rec: GeneratedRecord) -> list[tuple[str, ...]]:
    """One identity tuple per alert in the payload, from the provider's declared identity fields."""
    doc = orjson.loads(rec.value)
    spec = SPECS[rec.provider]
    if rec.provider in MULTI_ALERT_PROVIDERS:
        per_alert = [p for p in spec.identity_fields if p.startswith("alerts[]")]
        return list(zip(*(_values(doc, p) for p in per_alert)))
    return [tuple(v for p in spec.identity_fields for v in _values(doc, p))]


def statuses(rec: GeneratedRecord, lean: bool = False) -> tuple[str, ...]:
    doc = orjson.loads(rec.value)
    return tuple(v for p in spec_for(rec.provider, lean).status_fields for v in _values(doc, p))


# ---------------------------------------------------------------------------------------------- determinism


def test_same_seed_same_records_and_another_seed_differs() -> None:
    a = PayloadFactory(profile()).take(2000)
    b = PayloadFactory(profile()).take(2000)
    c = PayloadFactory(profile(seed=43)).take(2000)
    assert a == b
    assert [r.value for r in a] != [r.value for r in c]


def test_cache_budget_does_not_change_the_bytes() -> None:
    """Past the cache budget a full duplicate is re-rendered from state: it must be the same bytes."""
    cached = PayloadFactory(profile()).take(3000)
    uncached = PayloadFactory(profile(), cache_bytes=0).take(3000)
    assert cached == uncached


# ---------------------------------------------------------------------------------------------- ratios


def test_kind_ratios_within_tolerance() -> None:
    # no Sentry (it cannot flap), and a pool large enough never to run out of new identities
    mix = {p: 1 for p in PROVIDERS if p != "sentry"}
    recs = PayloadFactory(profile(mix=mix, cardinality=100_000, full_dup_ratio=0.25, partial_dup_ratio=0.15,
                                  flap_ratio=0.1)).take(5000)
    counts = collections.Counter(r.kind for r in recs)
    for kind, expected in (("full_dup", 0.25), ("partial_dup", 0.15), ("flap", 0.1), ("new", 0.5)):
        assert abs(counts[kind] / len(recs) - expected) < 0.025, (kind, counts)


def test_provider_mix_within_tolerance() -> None:
    mix = {"prometheus": 5, "keep": 3, "zabbix": 2}
    recs = PayloadFactory(profile(mix=mix)).take(5000)
    counts = collections.Counter(r.provider for r in recs)
    for provider, weight in mix.items():
        assert abs(counts[provider] / len(recs) - weight / 10) < 0.025, counts


def test_sentry_flaps_become_partial_duplicates() -> None:
    recs = PayloadFactory(profile(mix={"sentry": 1}, flap_ratio=0.5, full_dup_ratio=0, partial_dup_ratio=0)).take(500)
    assert not any(r.kind == "flap" for r in recs)
    assert sum(r.kind == "partial_dup" for r in recs) > 150


def test_exhausted_pool_redraws_new_among_duplicates() -> None:
    recs = PayloadFactory(profile(mix={"keep": 1}, cardinality=10)).take(1000)
    assert sum(r.kind == "new" for r in recs) == 10
    assert len({r.key for r in recs}) == 10


# ---------------------------------------------------------------------------------------------- identities


def test_cardinality_respected_per_provider() -> None:
    recs = PayloadFactory(profile(cardinality=40, alerts_per_webhook=3)).take(5000)
    identities: dict[str, set[tuple[str, ...]]] = collections.defaultdict(set)
    keys: dict[str, set[bytes]] = collections.defaultdict(set)
    for r in recs:
        identities[r.provider].update(alert_identities(r))
        keys[r.provider].add(r.key)
    for provider in PROVIDERS:
        assert len(identities[provider]) == 40, provider  # 5000 records exhaust every pool, never exceed it
        assert len(keys[provider]) <= 40


def test_a_key_always_carries_the_same_identities_provider_and_tenant() -> None:
    recs = PayloadFactory(profile(cardinality=30, alerts_per_webhook=5)).take(3000)
    seen: dict[bytes, tuple[str, str, list[tuple[str, ...]]]] = {}
    for r in recs:
        current = (r.provider, r.tenant, alert_identities(r))
        assert seen.setdefault(r.key, current) == current, r.key
        assert r.alerts == len(current[2])
        assert (1 <= r.alerts <= 5) if r.provider in MULTI_ALERT_PROVIDERS else r.alerts == 1


def test_every_identity_has_one_key() -> None:
    recs = PayloadFactory(profile(cardinality=30, alerts_per_webhook=5)).take(3000)
    key_of: dict[tuple[str, tuple[str, ...]], bytes] = {}
    for r in recs:
        for ident in alert_identities(r):
            assert key_of.setdefault((r.provider, ident), r.key) == r.key


# ---------------------------------------------------------------------------------------------- kinds


def test_kinds_do_what_they_say() -> None:
    recs = PayloadFactory(profile(cardinality=50)).take(5000)
    last: dict[bytes, GeneratedRecord] = {}
    for r in recs:
        prev = last.get(r.key)
        if r.kind == "new":
            assert prev is None
        elif r.kind == "full_dup":
            assert prev is not None and r.value == prev.value  # byte-identical to the key's previous payload
        elif r.kind == "partial_dup":
            assert prev is not None and r.value != prev.value and statuses(r) == statuses(prev)
        else:
            assert prev is not None and r.value != prev.value and statuses(r) != statuses(prev)
            assert alert_identities(r) == alert_identities(prev)
        last[r.key] = r


def test_flap_flips_exactly_one_alert_status() -> None:
    recs = PayloadFactory(profile(mix={"prometheus": 1}, cardinality=60, alerts_per_webhook=5)).take(2000)
    last: dict[bytes, list[str]] = {}
    for r in recs:
        now = [a["status"] for a in orjson.loads(r.value)["alerts"]]
        if r.kind == "flap":
            assert sum(x != y for x, y in zip(now, last[r.key])) == 1
        last[r.key] = now


# ---------------------------------------------------------------------------------------------- sizes


def test_sizes_near_the_mean() -> None:
    # a mean above every provider's bare payload (one alert per webhook), so padding can reach every target
    recs = PayloadFactory(profile(alerts_per_webhook=1, mean_size_bytes=5000, cardinality=100_000,
                                  size_sigma=0.3)).take(5000)
    sizes = [len(r.value) for r in recs if r.kind == "new"]
    mean = sum(sizes) / len(sizes)
    assert abs(mean - 5000) / 5000 < 0.05, mean
    assert min(sizes) < 4000 and max(sizes) > 6000  # a distribution, not a constant


def test_zero_sigma_hits_the_target_exactly_and_stays_near_it() -> None:
    recs = PayloadFactory(profile(alerts_per_webhook=2, mean_size_bytes=6000, size_sigma=0)).take(2000)
    assert {len(r.value) for r in recs if r.kind == "new"} == {6000}
    assert all(abs(len(r.value) - 6000) < 40 for r in recs)  # counters and status words move a few bytes


def test_payloads_larger_than_their_target_are_not_truncated() -> None:
    recs = PayloadFactory(profile(mean_size_bytes=100, size_sigma=0)).take(500)
    for r in recs:
        orjson.loads(r.value)
        assert len(r.value) > 500


# ---------------------------------------------------------------------------------------------- normalizers


def _normalizer_or_skip(provider: str) -> None:
    try:
        normalizer_for(provider)
    except ImportError as exc:  # provider modules are being written in parallel: no module yet, no check yet
        pytest.skip(f"no normalizer for {provider} yet: {exc}")


@pytest.mark.parametrize("provider", PROVIDERS)
def test_generated_payloads_normalize(provider: str) -> None:
    _normalizer_or_skip(provider)
    factory = PayloadFactory(profile(mix={provider: 1}, cardinality=50))
    for r in factory.take(400):
        try:
            alerts = normalize(r.provider, r.value, CTX)
        except InvalidPayload as exc:  # pragma: no cover - the assertion message is the point
            pytest.fail(f"{provider} {r.kind} payload rejected: {exc}\n{r.value[:400]!r}")
        assert len(alerts) == r.alerts
        assert {a.status for a in alerts} <= ({"firing"} if r.kind == "new" else {"firing", "resolved"})


# ---------------------------------------------------------------------------------------------- properties

_PROFILES = st.builds(
    profile,
    mix=st.dictionaries(st.sampled_from(PROVIDERS), st.floats(0.1, 10), min_size=1, max_size=4),
    cardinality=st.integers(1, 30),
    full_dup_ratio=st.floats(0, 0.4), partial_dup_ratio=st.floats(0, 0.3), flap_ratio=st.floats(0, 0.3),
    alerts_per_webhook=st.integers(1, 6), mean_size_bytes=st.integers(1, 8000), seed=st.integers(0, 2**32),
    size_sigma=st.floats(0, 1), tenants=st.lists(st.text("abcdef", min_size=1, max_size=5), min_size=1, max_size=3),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_PROFILES)
def test_any_profile_yields_valid_consistent_records(p: LoadProfile) -> None:
    last: dict[bytes, bytes] = {}
    for r in PayloadFactory(p).take(150):
        assert r.provider in p.mix and r.tenant in p.tenants and r.kind in KINDS
        assert isinstance(orjson.loads(r.value), dict)
        assert 1 <= r.alerts <= (p.alerts_per_webhook if r.provider in MULTI_ALERT_PROVIDERS else 1)
        if r.kind == "full_dup":
            assert r.value == last[r.key]
        last[r.key] = r.value


def test_profile_validation() -> None:
    with pytest.raises(ValueError, match="unknown providers"):
        profile(mix={"nagios": 1})
    with pytest.raises(ValueError, match="sum to at most 1"):
        profile(full_dup_ratio=0.6, partial_dup_ratio=0.5)
    with pytest.raises(ValueError, match="cardinality"):
        profile(cardinality={"keep": 3})
    profile(full_dup_ratio=0.7, partial_dup_ratio=0.2, flap_ratio=0.1)  # float sums like 1.0000000000000002 pass


# ---------------------------------------------------------------------------------------------- loadgen parsing


def test_volume_parsing() -> None:
    assert parse_volume("600GB/day") == pytest.approx(6.944e6, rel=1e-3)
    assert parse_volume("7MB/s") == 7e6
    assert parse_volume("25GiB/h") == pytest.approx(25 * 2**30 / 3600)
    assert parse_volume("500 KB / min") == pytest.approx(500e3 / 60)
    assert parse_volume("1TB/days") == pytest.approx(1e12 / 86_400)
    for bad in ("600GB", "GB/day", "600GB/fortnight", "6 00GB/s"):
        with pytest.raises(ValueError):
            parse_volume(bad)


@given(st.floats(0.001, 1e6), st.sampled_from(["KB", "MB", "GB", "KiB", "MiB"]),
       st.sampled_from(["s", "min", "h", "day"]))
def test_volume_round_trip(amount: float, unit: str, per: str) -> None:
    text = f"{amount:.6f}{unit}/{per}"
    expected = float(f"{amount:.6f}") * {"KB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 1024, "MiB": 2**20}[unit]
    assert parse_volume(text) == pytest.approx(expected / {"s": 1, "min": 60, "h": 3600, "day": 86_400}[per])


def test_size_and_mix_parsing() -> None:
    assert parse_size("1.5KB") == 1500
    assert parse_size("2048") == 2048
    assert parse_mix("prometheus=3, grafana=1,keep") == {"prometheus": 3, "grafana": 1, "keep": 1}


def test_loopback_guard() -> None:
    for ok in ("127.0.0.1:9092", "localhost:1", "[::1]:9092", "127.3.4.5:9092,127.0.0.1:9093",
               "PLAINTEXT://127.0.0.1:1"):
        check_loopback(ok)
    for remote in ("10.0.0.5:9092", "kafka.prod:9092", "127.0.0.1:9092,192.168.1.2:9092", "[2001:db8::1]:9092"):
        with pytest.raises(ValueError, match="non-loopback"):
            check_loopback(remote)
        check_loopback(remote, allow_remote=True)


def test_one_record_batches_are_refused() -> None:
    with pytest.raises(ValueError, match="one-record batches"):
        ProducerOptions(batch_num_messages=1).config("127.0.0.1:1")
    with pytest.raises(ValueError, match="one-record batches"):
        ProducerOptions(extra={"batch.num.messages": "1"}).config("127.0.0.1:1")
    assert ProducerOptions(compression="none").config("127.0.0.1:1")["compression.type"] == "none"


def test_scenario_shapes() -> None:
    spike = Scenario("spike", rate_alerts=100, duration_s=300, spike_at_s=60, spike_s=60, spike_factor=5)
    assert [spike.rate_at(t) for t in (0, 59.9, 60, 119.9, 120)] == [100, 100, 500, 500, 100]
    ramp = Scenario("ramp", rate_bytes=1000, duration_s=10, ramp_from=0.2)
    assert ramp.rate_at(0) == pytest.approx(200) and ramp.rate_at(5) == pytest.approx(600)
    assert ramp.rate_at(10) == pytest.approx(1000) and ramp.rate_at(99) == pytest.approx(1000)
    assert Scenario("soak", duration_s=5).rate_at(1) is None  # unpaced
    with pytest.raises(ValueError):
        Scenario(rate_alerts=1, rate_bytes=1)


# ---------------------------------------------------------------------------------------------- named load profiles


def _digest(p: LoadProfile, n: int) -> str:
    h = hashlib.sha256()
    for r in PayloadFactory(p).take(n):
        h.update(r.key + b"\0" + r.value + b"\1")
    return h.hexdigest()


# Computed before named profiles, group-size ranges, per-alert sizes and lean templates existed: the default
# load must stay byte for byte what earlier benchmark runs sent.
_DEFAULT_200 = "446dc809f14483dfa3b40195f59e62f0ff7dc6da743d7e21dc26ee6a5f5ef6f7"
_DEFAULT_5000 = "f361b9f7c93edfe0efd85d547096a1219c5485ae9d5c0ce830c61b55c136367f"
_TEST_PROFILE_3000 = "7be2c771321af2f358309e72c6a64f56138997b22235e7ef48743b097f0d258e"


def test_default_profile_is_byte_for_byte_unchanged() -> None:
    explicit = LoadProfile(mix=dict(DEFAULT_MIX), cardinality=10_000, full_dup_ratio=0.3, partial_dup_ratio=0.2,
                           flap_ratio=0.05, alerts_per_webhook=5, mean_size_bytes=1500, seed=1, tenants=["default"])
    assert load_profile("default") == explicit
    assert _digest(load_profile("default"), 200) == _DEFAULT_200
    assert _digest(load_profile("default"), 5000) == _DEFAULT_5000
    assert _digest(profile(), 3000) == _TEST_PROFILE_3000


def _shape(recs: list[GeneratedRecord]) -> tuple[float, float]:
    """(value bytes per alert, share of exact re-sends)."""
    alerts = sum(r.alerts for r in recs)
    return sum(len(r.value) for r in recs) / alerts, sum(r.kind == "full_dup" for r in recs) / len(recs)


def test_heavy_profile_is_the_heavy_mix() -> None:
    recs = PayloadFactory(load_profile("heavy", seed=7, tenants=["t"])).take(20_000)
    by_provider = collections.Counter(r.provider for r in recs)
    assert set(by_provider) == {"prometheus", "keep"}
    assert abs(by_provider["prometheus"] / len(recs) - 0.5) < 0.02, by_provider
    assert {r.alerts for r in recs if r.provider == "prometheus"} == {10}  # exactly 10, never 1..10
    assert all(len(orjson.loads(r.value)["alerts"]) == 10 for r in recs[:500] if r.provider == "prometheus")
    assert {r.alerts for r in recs if r.provider == "keep"} == {1}
    per_alert, full_dup = _shape(recs)
    assert abs(per_alert - 500) / 500 < 0.2, per_alert  # ~0.5 KB per alert (measured: ~525 B)
    assert abs(full_dup - 0.7) < 0.05, full_dup  # 70% exact re-sends
    for provider in ("prometheus", "keep"):  # each half is ~0.5 KB per alert on its own, not just on average
        mine = [r for r in recs if r.provider == provider]
        assert abs(_shape(mine)[0] - 500) / 500 < 0.2, provider


def test_default_profile_shape() -> None:
    """What the heavy profile is compared with: ~1.3 KB per alert, 1..5 alerts per webhook, 30% exact re-sends."""
    recs = PayloadFactory(load_profile("default")).take(20_000)
    per_alert, full_dup = _shape(recs)
    assert 1100 < per_alert < 1500, per_alert
    assert abs(full_dup - 0.3) < 0.03, full_dup
    assert {r.alerts for r in recs if r.provider in MULTI_ALERT_PROVIDERS} == {1, 2, 3, 4, 5}


def test_load_profile_overrides_and_unknown_names() -> None:
    p = load_profile("heavy", seed=3, tenants=["a", "b"], full_dup_ratio=0.5, mix={"keep": 1})
    assert (p.full_dup_ratio, dict(p.mix), p.seed, p.tenants, p.lean) == (0.5, {"keep": 1}, 3, ["a", "b"], True)
    assert load_profile("heavy").mix == {"prometheus": 1, "keep": 1}  # the registry is not changed by overrides
    with pytest.raises(ValueError, match="unknown load profile"):
        load_profile("medium")
    assert set(LOAD_PROFILES) >= {"default", "heavy"}


def test_alerts_per_webhook_range() -> None:
    recs = PayloadFactory(profile(mix={"prometheus": 1, "grafana": 1}, cardinality=100_000, alerts_per_webhook=6,
                                  alerts_per_webhook_min=4)).take(2000)
    assert {r.alerts for r in recs} == {4, 5, 6}
    with pytest.raises(ValueError, match="alerts_per_webhook_min"):
        profile(alerts_per_webhook=3, alerts_per_webhook_min=4)
    with pytest.raises(ValueError, match="alerts_per_webhook_min"):
        profile(alerts_per_webhook_min=0)


def test_last_group_of_a_pool_gets_what_is_left() -> None:
    recs = PayloadFactory(profile(mix={"prometheus": 1}, cardinality=25, alerts_per_webhook=10,
                                  alerts_per_webhook_min=10)).take(200)
    assert sorted(r.alerts for r in {r.key: r for r in recs}.values()) == [5, 10, 10]  # 25 alerts: 10 + 10 + 5


def test_size_per_alert_scales_the_target_with_the_group() -> None:
    recs = PayloadFactory(profile(mix={"prometheus": 1}, cardinality=100_000, alerts_per_webhook=8,
                                  mean_size_bytes=2500, size_per_alert=True, size_sigma=0)).take(300)
    assert {len(r.value) - 2500 * r.alerts for r in recs if r.kind == "new"} == {0}


@pytest.mark.parametrize("provider", sorted(LEAN_SPECS))
def test_lean_payloads_are_smaller_normalize_and_keep_their_identities(provider: str) -> None:
    _normalizer_or_skip(provider)
    base = dict(mix={provider: 1}, cardinality=40, alerts_per_webhook=3, mean_size_bytes=1, size_sigma=0)
    full, lean = PayloadFactory(profile(**base)).take(600), PayloadFactory(profile(**base, lean=True)).take(600)
    assert [(r.key, r.kind, r.alerts) for r in full] == [(r.key, r.kind, r.alerts) for r in lean]
    assert sum(len(r.value) for r in lean) < 0.6 * sum(len(r.value) for r in full)
    last: dict[bytes, GeneratedRecord] = {}
    for f, r in zip(full, lean):
        assert alert_identities(r) == alert_identities(f)  # the same fields name the same alerts in both forms
        alerts = normalize(r.provider, r.value, CTX)
        assert len(alerts) == r.alerts
        prev = last.get(r.key)
        if r.kind == "full_dup":
            assert prev is not None and r.value == prev.value
        elif r.kind == "partial_dup":
            assert prev is not None and r.value != prev.value and statuses(r, True) == statuses(prev, True)
        elif r.kind == "flap":
            assert prev is not None and statuses(r, True) != statuses(prev, True)
        last[r.key] = r


def test_lean_falls_back_to_the_full_payload_without_a_lean_form() -> None:
    assert spec_for("datadog", lean=True) is SPECS["datadog"]
    assert spec_for("keep", lean=True) is LEAN_SPECS["keep"] and spec_for("keep") is SPECS["keep"]
    a = PayloadFactory(profile(mix={"datadog": 1})).take(200)
    assert a == PayloadFactory(profile(mix={"datadog": 1}, lean=True)).take(200)


def test_payload_option_parsing() -> None:
    assert parse_alerts_per_webhook("5") == (1, 5)
    assert parse_alerts_per_webhook("10..10") == (10, 10)
    assert parse_alerts_per_webhook(" 2..6 ") == (2, 6)
    for bad in ("0", "6..2", "x", "1..", "0..3"):
        with pytest.raises(ValueError):
            parse_alerts_per_webhook(bad)
    assert parse_mean_size("1.5KB") == (1500, False)
    assert parse_mean_size("1.5KB/record") == (1500, False)
    assert parse_mean_size("500B/alert") == (500, True)
    with pytest.raises(ValueError):
        parse_mean_size("500B/webhook")


def _loadgen_profile(*argv: str) -> LoadProfile:
    args = loadgen.build_parser().parse_args(["--bootstrap", "127.0.0.1:9092", "--unpaced", *argv])
    return loadgen._from_args(args)[0]


def test_loadgen_load_option() -> None:
    assert _loadgen_profile() == load_profile("default")  # no option: the generator's defaults, as before
    assert _loadgen_profile("--load", "heavy", "--seed", "4") == load_profile("heavy", seed=4)
    p = _loadgen_profile("--load", "heavy", "--full-dup", "0.6", "--alerts-per-webhook", "8", "--mean-size", "1KB",
                         "--no-lean", "--tenants", "a,b")
    assert p == load_profile("heavy", full_dup_ratio=0.6, alerts_per_webhook=8, alerts_per_webhook_min=1,
                             mean_size_bytes=1000, size_per_alert=False, lean=False, tenants=["a", "b"])
    assert _loadgen_profile("--mix", "keep", "--alerts-per-webhook", "3..3").alerts_per_webhook_min == 3
    with pytest.raises(SystemExit):
        _loadgen_profile("--load", "medium")


def _bench_options(*argv: str) -> runner.BenchOptions:
    return runner.options_from_args(runner.build_parser().parse_args(list(argv)), "test")


def test_bench_load_option_and_recorded_profile() -> None:
    default = _bench_options()
    assert (default.load, default.load_overrides) == ("default", [])
    assert default.profile_obj("t") == runner.BenchOptions().profile_obj("t") == load_profile("default", tenants=["t"])
    heavy = _bench_options("--load", "heavy", "--seed", "9")
    assert heavy.profile_obj("t") == load_profile("heavy", seed=9, tenants=["t"])
    assert heavy.profile_obj("t", seed=1009).seed == 1009  # the warm-up's own seed
    mixed = _bench_options("--load", "heavy", "--flap", "0.1", "--mean-size", "600B/alert")
    assert mixed.load_overrides == ["flap_ratio", "mean_size_bytes", "size_per_alert"]
    assert mixed.profile_obj("t") == load_profile("heavy", tenants=["t"], flap_ratio=0.1, mean_size_bytes=600)
    with pytest.raises(ValueError, match="sum to at most 1"):
        _bench_options("--load", "heavy", "--partial-dup", "0.5")
