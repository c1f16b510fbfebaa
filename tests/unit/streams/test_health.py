"""Liveness and readiness decisions, lag arithmetic, latency observation and the status snapshot,
as plain functions (the integration tests run them in a real worker)."""

from __future__ import annotations

import time

from prometheus_client import REGISTRY

from config.metrics import CIRCUIT_STATE, observe_end_to_end
from config.settings import Settings
from core.records import Sighting, WriteBatch
from schemas.alert import Alert, NormalizedAlert
from streams.health import Check, circuit_checks, lag_check, loop_check, report
from streams.lag import PartitionLag, watched_groups
from streams.loop_monitor import LoopHealth
from streams.status_page import RateWindow, snapshot


def test_lag_counts_from_the_commit_or_from_the_log_start() -> None:
    assert PartitionLag("g", "t", 0, committed=40, start=0, end=47).lag == 7
    assert PartitionLag("g", "t", 0, committed=None, start=10, end=47).lag == 37  # never committed
    assert PartitionLag("g", "t", 0, committed=3, start=10, end=47).lag == 37  # commit older than retention
    assert PartitionLag("g", "t", 0, committed=50, start=0, end=47).lag == 0  # end under-reported (Tansu)


def test_watched_groups_are_the_workers_own_plus_extra() -> None:
    settings = Settings(app_id="as", search_enabled=True, lag_extra_groups={"downstream": ["alerts.stored"]})
    groups = watched_groups(settings)
    assert groups["as"] == ["alerts.normalized", "alerts.normalized.critical"]
    assert groups["as-normalize"] == ["alerts"] and groups["as-index"] == ["alerts.stored"]
    assert groups["as-retry-3"] == ["alerts.retry.3"] and groups["downstream"] == ["alerts.stored"]
    assert "as-index" not in watched_groups(settings.model_copy(update={"search_enabled": False}))


def test_liveness_fails_for_a_window_after_a_block() -> None:
    health = LoopHealth(last_probe=100.0, last_blocked=None)
    assert loop_check(30, 0.1, health, now=100.1).ok
    health.last_blocked, health.last_blocked_s = 95.0, 1.5
    blocked = loop_check(30, 0.1, health, now=100.1)
    assert not blocked.ok and "blocked 1.50s" in blocked.detail
    health.last_probe = 126.0
    assert loop_check(30, 0.1, health, now=126.0).ok  # 31 s after the block: healthy again


def test_liveness_fails_when_the_monitor_stops_probing() -> None:
    assert not loop_check(30, 0.1, LoopHealth(), now=1.0).ok
    stale = loop_check(30, 0.1, LoopHealth(last_probe=100.0), now=110.0)
    assert not stale.ok and "no loop probe" in stale.detail


def test_lag_readiness() -> None:
    now = time.time()
    assert lag_check(10, 100, now, 60).ok
    assert not lag_check(101, 100, now, 60).ok
    assert lag_check(10**9, 0, None, 60).ok  # threshold 0: off
    assert not lag_check(0, 100, None, 60).ok  # never measured
    assert not lag_check(0, 100, now - 120, 60).ok  # measurement too old


def test_circuit_checks_read_the_exported_state() -> None:
    CIRCUIT_STATE.labels("unit-sink-a").set(0)
    CIRCUIT_STATE.labels("unit-sink-b").set(1)
    checks = {c.name: c for c in circuit_checks()}
    assert checks["sink:unit-sink-a"].ok and checks["sink:unit-sink-a"].detail == "circuit closed"
    assert not checks["sink:unit-sink-b"].ok and checks["sink:unit-sink-b"].detail == "circuit open"
    CIRCUIT_STATE.remove("unit-sink-a")
    CIRCUIT_STATE.remove("unit-sink-b")


def test_report_names_the_failed_checks() -> None:
    status, body = report([Check("broker", True, "ok"), Check("lag", False, "max partition lag 7 (threshold 5)")])
    assert status == 503 and body["status"] == "fail" and body["failed"] == ["lag"]
    assert report([Check("broker", True, "ok")])[0] == 200


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_end_to_end_latency_from_ingest_and_from_event_time() -> None:
    now = 1_700_000_100.0
    stored = NormalizedAlert("uid", 1_700_000_090_000, "hash", Alert(name="a", last_received="2023-11-14T22:13:20.000Z",
                                                                     provider_type="unit-provider"))
    batch = WriteBatch(stored=[stored], sightings=[Sighting("t", "f", 1_700_000_090_000, 0, 1, stored, "alerts:0"),
                                                   Sighting("t", "f", 1_700_000_099_000, 0, 2, None, "alerts:0")])
    ingest_before = sample("alertstream_e2e_ingest_latency_seconds_count")
    observe_end_to_end(batch, now_s=now)
    assert sample("alertstream_e2e_ingest_latency_seconds_count") == ingest_before + 2  # duplicates too
    assert sample("alertstream_e2e_event_latency_seconds_count", provider="unit-provider") == 1
    assert sample("alertstream_e2e_event_latency_seconds_sum", provider="unit-provider") == 100.0  # 22:13:20 (1_700_000_000) → now
    bad = NormalizedAlert("u2", 0, "h", Alert(name="b", last_received="yesterday", provider_type="unit-provider"))
    observe_end_to_end(WriteBatch(stored=[bad]), now_s=now)  # skipped, not fatal
    assert sample("alertstream_e2e_event_latency_seconds_count", provider="unit-provider") == 1


def test_snapshot_and_rates() -> None:
    from config.metrics import ALERTS, RECORDS_RECEIVED

    window = RateWindow()
    window.sample(now=1000.0)
    ALERTS.labels("unit", "unit-rate", "duplicate").inc(30)
    RECORDS_RECEIVED.labels("unit-stage").inc(50)
    window.sample(now=1005.0)
    snap = snapshot(window)
    assert snap["rates"]["provider"]["unit-rate"] == 6.0
    assert snap["rates"]["stage"]["unit-stage"] == 10.0
    assert snap["alerts_by_provider"]["unit-rate"] >= 30 and snap["rss_bytes"] > 0
    assert 0 < snap["dedup_ratio"] <= 1


def test_bulk_observe_equals_one_observe_per_value() -> None:
    from prometheus_client import CollectorRegistry, Histogram

    from config.metrics import LATENCY_BUCKETS, observe_many

    registry = CollectorRegistry()
    one_by_one = Histogram("one", "", ["p"], buckets=LATENCY_BUCKETS, registry=registry)
    bulk = Histogram("bulk", "", ["p"], buckets=LATENCY_BUCKETS, registry=registry)
    values = [0.0, 0.01, 0.0100001, 0.3, 1, 2.5, 59.9, 3600, 3600.5, 1e9]  # on, between and beyond bounds
    for v in values:
        one_by_one.labels("x").observe(v)
    observe_many(bulk.labels("x"), values)
    samples = {name: {(s.name.replace(name, ""), s.labels.get("le")): s.value for s in fam.samples
                      if not s.name.endswith("_created")}
               for fam in registry.collect() for name in [fam.name]}
    assert samples["one"] == samples["bulk"]


def test_status_of_several_processes_adds_up() -> None:
    from streams.status_page import merge_snapshots

    own = {"records_received": {"deduplicate": 10}, "alerts_by_outcome": {"new": 6, "duplicate": 4},
           "alerts_by_provider": {"keep": 10}, "alerts_by_tenant": {"a": 10}, "dlq_by_reason": {},
           "retries_by_topic": {}, "rates": {"stage": {"deduplicate": 1.0}},
           "sinks": {"postgres": {"circuit": 0, "written": 6, "errors": 0}},
           "rss_bytes": 100, "event_loop_lag_s": 0.01, "event_loop_blocked": 0, "lag": [{"group": "g", "lag": 3}]}
    other = {"records_received": {"deduplicate": 5, "normalize": 2}, "alerts_by_outcome": {"duplicate": 6},
             "alerts_by_provider": {"keep": 6}, "alerts_by_tenant": {"a": 6}, "dlq_by_reason": {"malformed_json": 1},
             "retries_by_topic": {}, "rates": {"stage": {"deduplicate": 2.0}, "provider": {"keep": 1.0}},
             "sinks": {"postgres": {"circuit": 1, "written": 0, "errors": 2}},
             "rss_bytes": 50, "event_loop_lag_s": 0.2, "event_loop_blocked": 1, "lag": [{"group": "g", "lag": 3}]}
    merged = merge_snapshots(own, [other])
    assert merged["processes"] == 2
    assert merged["records_received"] == {"deduplicate": 15, "normalize": 2}
    assert merged["alerts_by_outcome"] == {"new": 6, "duplicate": 10} and merged["dedup_ratio"] == 10 / 16
    assert merged["dlq_by_reason"] == {"malformed_json": 1}
    assert merged["rates"] == {"stage": {"deduplicate": 3.0}, "provider": {"keep": 1.0}}
    assert merged["sinks"]["postgres"] == {"circuit": 1, "written": 6, "errors": 2}, "the worst circuit shows"
    assert (merged["rss_bytes"], merged["event_loop_lag_s"], merged["event_loop_blocked"]) == (150, 0.2, 1)
    assert merged["lag"] == own["lag"], "lag is polled whole by every process"
    assert merge_snapshots(own, []) == {**own, "processes": 1, "dedup_ratio": 0.4}
