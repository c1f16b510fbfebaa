"""The normalize stage's re-send cache (pipeline/resend_cache.py) and the received-time slot it rests
on (pipeline/normalizer.py): what a record's bytes built, kept and given another record's position
and time, is exactly what normalizing that record gives."""

from __future__ import annotations

import copy
import gc
import tracemalloc
from pathlib import Path

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from benchmarks.payload_factory import PayloadFactory, load_profile
from core.records import RawRecord
from pipeline.normalizer import iso_utc, process_records, row_uid, source_position
from pipeline.resend_cache import ResendCache
from schemas.alert import AlertHead, PackedAlert
from schemas.normalizers import NormalizeContext, normalize
from schemas.normalizers.base import RECEIVED_SLOT
from schemas.rules import DEFAULT_RULES

EXAMPLES = Path(schemas.__file__).parent / "examples"
EXAMPLE_PROVIDERS = {
    "prometheus_alertmanager_webhook.json": "prometheus",
    "grafana_alerting_webhook.json": "grafana",
    "datadog_webhook.json": "datadog",
    "pagerduty_events_v2.json": "pagerduty",
    "pagerduty_webhook_v3.json": "pagerduty",
    "cloudwatch_sns_notification.json": "cloudwatch",
    "sentry_webhook_integration.json": "sentry",
    "sentry_webhook_plugin.json": "sentry",
    "zabbix_webhook.json": "zabbix",
    "keep_generic_alertdto.json": "keep",
}
GENERIC = orjson.loads((EXAMPLES / "keep_generic_alertdto.json").read_bytes())
CLOUDWATCH = orjson.loads((EXAMPLES / "cloudwatch_sns_notification.json").read_bytes())
PARTITIONS = 8
TIMES = (1_736_935_560_000, 1_736_935_561_234, 1_800_000_000_999)


def record(value: bytes, provider: str = "keep", *, offset: int = 0, timestamp_ms: int = TIMES[0], tenant: str = "acme",
           topic: str = "alerts") -> RawRecord:
    headers = {"tenant": tenant.encode()}
    if provider != "keep":
        headers["provider"] = provider.encode()
    return RawRecord(topic, 3, offset, timestamp_ms, b"k", value, headers)


def reference(rec: RawRecord, provider: str) -> list[PackedAlert]:
    """The record normalized with its own time, written out step by step (the stage as it was before
    the slot): the provider's normalizer, the default rule's fingerprint, content hash and JSON."""
    ctx = NormalizeContext(tenant=rec.headers["tenant"].decode(), received_at=iso_utc(rec.timestamp_ms))
    out = []
    for index, alert in enumerate(normalize(provider, rec.value, ctx)):
        rule = DEFAULT_RULES.for_(alert.tenant, alert.provider_type)
        alert.fingerprint = rule.fingerprint(alert)
        chash, document = rule.content_hash_and_document(alert)
        out.append(PackedAlert(row_uid(rec.topic, rec.partition, rec.offset, index), rec.timestamp_ms, chash,
                               AlertHead.of(alert), document, rec.topic, rec.partition, source_position(rec.offset, index)))
    return out


def stage(records: list[RawRecord], cache: ResendCache | None) -> list[PackedAlert]:
    result = process_records(records, partitions=PARTITIONS, default_tenant="default", max_payload_bytes=1 << 20,
                             cache=cache)
    assert not result.dead_letters, result.dead_letters
    alerts = [a for part in (result.by_partition, result.critical_by_partition) for alerts in part.values() for a in alerts]
    return sorted(alerts, key=lambda a: (a.source_topic, a.source_position))


def assert_same_as_reference(value: bytes, provider: str) -> ResendCache:
    """The record at three positions and times: uncached, built and kept, and taken from the cache."""
    cache = ResendCache(64 << 20)
    for offset, timestamp_ms in enumerate(TIMES):
        rec = record(value, provider, offset=offset, timestamp_ms=timestamp_ms)
        expected = reference(rec, provider)
        assert stage([rec], None) == expected
        assert stage([rec], cache) == expected
    return cache


@pytest.mark.parametrize("name", sorted(EXAMPLE_PROVIDERS))
def test_every_example_is_the_same_built_once_or_every_time(name: str) -> None:
    cache = assert_same_as_reference((EXAMPLES / name).read_bytes(), EXAMPLE_PROVIDERS[name])
    assert (cache.misses, cache.hits, len(cache)) == (1, 2, 1)


def test_a_time_beyond_last_received_is_built_with_the_records_own_time_and_not_kept() -> None:
    # CloudWatch puts the record's time in firingStartTime too when the alarm has no StateChangeTime
    alarm = orjson.loads(CLOUDWATCH["Message"])
    del alarm["StateChangeTime"]
    value = orjson.dumps({**CLOUDWATCH, "Message": orjson.dumps(alarm).decode()})
    cache = assert_same_as_reference(value, "cloudwatch")
    assert len(cache) == 0 and cache.misses == 3
    (alert,) = stage([record(value, "cloudwatch")], None)
    assert alert.alert.last_received == iso_utc(TIMES[0]) and RECEIVED_SLOT.encode() not in alert.body


def test_a_normalizer_putting_the_records_time_elsewhere_is_still_right(monkeypatch: pytest.MonkeyPatch) -> None:
    """No normalizer does this today with a time of the payload's own in lastReceived; one that did would
    get the record's time wherever it put it (a wrapped normalizer stands in for it)."""
    import schemas.normalizers as registry
    from schemas.normalizers import generic

    def stamping(payload: object, ctx: NormalizeContext) -> list:
        alerts = generic.normalize(payload, ctx)
        for alert in alerts:
            alert.firing_start_time = ctx.received_at
        return alerts

    monkeypatch.setitem(registry._loaded, "keep", (stamping, None))
    value = orjson.dumps({**GENERIC, "lastReceived": "2025-01-15T10:05:00.000Z"})
    cache = assert_same_as_reference(value, "keep")
    assert len(cache) == 0
    (alert,) = stage([record(value)], None)
    assert alert.alert.last_received == "2025-01-15T10:05:00.000Z"
    assert orjson.loads(alert.body)["firingStartTime"] == iso_utc(TIMES[0])


def test_a_payload_holding_the_slots_text_gets_what_it_said() -> None:
    # the slot's text in a payload is text: kept where it was, never taken for the record's time
    value = orjson.dumps({**GENERIC, "lastReceived": RECEIVED_SLOT, "description": RECEIVED_SLOT})
    cache = assert_same_as_reference(value, "keep")
    assert len(cache) == 0
    (alert,) = stage([record(value)], None)
    assert orjson.loads(alert.body)["extra"]["lastReceived"] == RECEIVED_SLOT  # unreadable: kept, as any
    assert alert.alert.last_received == iso_utc(TIMES[0])


def test_the_slots_text_is_no_time_for_the_canonical_provider() -> None:
    item = reference(record(orjson.dumps(GENERIC)), "keep")[0].normalized()  # as alertstream dead-letters it
    item.alert.last_received = RECEIVED_SLOT
    result = process_records([record(msgspec.json.encode(item), "alertstream")], partitions=PARTITIONS,
                             default_tenant="default", max_payload_bytes=1 << 20, cache=ResendCache(1 << 20))
    assert [d.reason for d in result.dead_letters] == ["invalid_time"]


_TIME_VALUES = st.one_of(
    st.none(), st.just(""), st.just(RECEIVED_SLOT), st.just("2025-01-15T10:05:00.000Z"),
    st.just("2025-01-15T11:05:00+01:00"), st.just("not a time"), st.integers(0, 2_000_000_000_000),
    st.text(max_size=30))


@settings(max_examples=150, deadline=None)
@given(last=_TIME_VALUES, firing=_TIME_VALUES, timestamp_ms=st.integers(0, 4_000_000_000_000),
       note=st.text(max_size=40))
def test_any_generic_alert_is_the_same_built_once_or_every_time(last: object, firing: object, timestamp_ms: int,
                                                                note: str) -> None:
    alert = copy.deepcopy(GENERIC)
    for key, value in (("lastReceived", last), ("firingStartTime", firing)):
        if value is None:
            alert.pop(key, None)
        else:
            alert[key] = value
    alert["note"] = note
    value = orjson.dumps(alert)
    cache = ResendCache(1 << 20)
    for offset, ts in enumerate((timestamp_ms, timestamp_ms + 1, TIMES[0])):
        rec = record(value, offset=offset, timestamp_ms=ts)
        try:
            expected = reference(rec, "keep")
        except Exception as exc:  # refused: refused with the same reason either way
            result = process_records([rec], partitions=PARTITIONS, default_tenant="default", max_payload_bytes=1 << 20,
                                     cache=cache)
            assert [d.reason for d in result.dead_letters] == [getattr(exc, "reason", None)]
            continue
        assert stage([rec], cache) == expected


@pytest.mark.parametrize("profile", ["default", "heavy"])
def test_the_load_generators_mixes_are_the_same_with_the_cache(profile: str) -> None:
    raw = [RawRecord("alerts", i % 3, i, TIMES[0] + 7 * i, r.key, r.value,
                     {"tenant": r.tenant.encode(), **({"provider": r.provider.encode()} if r.provider != "keep" else {})})
           for i, r in enumerate(PayloadFactory(load_profile(profile, seed=3)).take(1500))]
    cache = ResendCache(64 << 20)
    assert stage(raw, cache) == stage(raw, None)
    assert cache.hits > 300  # re-sends are most of both mixes: the cached path was taken


def test_the_key_holds_topic_tenant_and_provider() -> None:
    value = orjson.dumps(GENERIC)
    cache = ResendCache(1 << 20)
    alerts = stage([record(value, tenant="a"), record(value, tenant="b", offset=1),
                    record(value, tenant="a", topic="alerts-critical", offset=2)], cache)
    assert [a.alert.tenant for a in alerts] == ["a", "b", "a"]
    assert [a.source_topic for a in alerts] == ["alerts", "alerts", "alerts-critical"]
    assert (cache.hits, cache.misses) == (0, 3)
    stage([record(value, tenant="b", offset=3)], cache)
    assert cache.hits == 1


def test_least_recently_used_goes_first_within_the_bound() -> None:
    cache: ResendCache[str] = ResendCache(64 * 1000)
    entry = 1000 - 640  # counted as 1,000 bytes with the entry's overhead
    for key in "abcdefgh":
        cache.put(key, key, entry)
    assert cache.get("a") == "a"  # now the most recent
    for key in range(57):
        cache.put(key, "x", entry)
    assert cache.bytes <= cache.max_bytes and len(cache) == 64
    assert cache.get("a") == "a" and cache.get("b") is None  # b was the least recently used
    assert (cache.hits, cache.misses) == (2, 1)


def test_an_entry_over_a_64th_of_the_bound_is_not_kept() -> None:
    cache: ResendCache[str] = ResendCache(64 * 1000)
    cache.put("small", "s", 1000 - 640)
    cache.put("big", "b", 1001 - 640)
    assert cache.get("big") is None and cache.get("small") == "s"
    assert ResendCache(0).max_entry_bytes == 0
    with pytest.raises(ValueError):
        ResendCache(-1)


@pytest.mark.parametrize("profile", ["default", "heavy"])
def test_what_the_cache_holds_is_what_it_counts(profile: str) -> None:
    """The bound is honest: Python's allocations held by a filled cache (tracemalloc) are within a few
    percent of the bytes it counts, so `normalizer_resend_cache_bytes` bounds the memory it names."""
    raw = [RawRecord("alerts", 0, i, TIMES[0] + i, r.key, r.value,
                     {"tenant": r.tenant.encode(), **({"provider": r.provider.encode()} if r.provider != "keep" else {})})
           for i, r in enumerate(PayloadFactory(load_profile(profile, seed=7)).take(1500))]
    stage(raw, None)  # the process's own caches (times, compiled decoders) filled first
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        cache = ResendCache(1 << 30)
        stage(raw, cache)
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(cache) > 300
    assert 0.85 * cache.bytes <= held <= 1.05 * cache.bytes, (held, cache.bytes)
