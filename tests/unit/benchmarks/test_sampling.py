"""The benchmark sampler reads only what it needs, and reads it right: the counters from a worker's
`/metrics` text (only the families it uses go through the parser), and a process group's tree from
one pass over /proc."""

from __future__ import annotations

import subprocess
import sys
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hypothesis import given
from hypothesis import strategies as st

from benchmarks.sampling import ProcessGroup, children_by_parent, histogram_quantile, parse_counters


def _metrics_text() -> str:
    registry = CollectorRegistry()
    alerts = Counter("alertstream_alerts", "", ["tenant", "provider", "outcome"], registry=registry)
    records = Counter("alertstream_records_received", "", ["stage"], registry=registry)
    rows = Counter("alertstream_sink_rows_written", "", ["sink"], registry=registry)
    dlq = Counter("alertstream_dlq_records", "", ["reason"], registry=registry)
    flush = Histogram("alertstream_sink_flush_seconds", "", ["sink"], registry=registry)
    size = Histogram("alertstream_sink_batch_size", "", ["sink"], buckets=(10, 100, 1000), registry=registry)
    noise = Gauge("alertstream_dedup_ratio", "", ["tenant", "provider"], registry=registry)
    Counter("alertstream_normalize_resend_cache_hits", "", registry=registry).inc(5)
    Counter("alertstream_normalize_resend_cache_misses", "", registry=registry).inc(2)
    Gauge("alertstream_normalize_resend_cache_bytes", "", registry=registry).set(1e6)
    indexed = Histogram("alertstream_e2e_index_latency_seconds", "", buckets=(1, 5), registry=registry)
    for seconds in (0.5, 2, 3, 7):
        indexed.observe(seconds)
    for i, tenant in enumerate(("bench-a", "warmup-b", 'odd "tenant"')):
        for provider in ("prometheus", "keep", "grafana"):
            for j, outcome in enumerate(("new", "changed", "duplicate")):
                alerts.labels(tenant, provider, outcome).inc(100 * i + 10 * j + 1)
            noise.labels(tenant, provider).set(0.5)
    for stage, n in (("normalize", 7), ("deduplicate", 3), ("index", 2)):
        records.labels(stage).inc(n)
    rows.labels("postgres").inc(40)
    rows.labels("search").inc(30)
    dlq.labels("invalid_json").inc(2)
    for sink in ("postgres", "search"):
        flush.labels(sink).observe(0.25)
        size.labels(sink).observe(300)
    return generate_latest(registry).decode()


def _reference(text: str, tenant: str | None) -> dict[str, object]:
    """What the full parser reads from the whole text."""
    alerts: dict[str, float] = {}
    other: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "alertstream_alerts_total" and (tenant is None or s.labels["tenant"] == tenant):
                alerts[s.labels["outcome"]] = alerts.get(s.labels["outcome"], 0.0) + s.value
            elif s.name.startswith(("alertstream_records_received_total", "alertstream_sink_rows_written_total",
                                    "alertstream_dlq_records_total", "alertstream_sink_flush_seconds_",
                                    "alertstream_sink_batch_size_")) and not s.name.endswith("_bucket"):
                other[f"{s.name}{sorted(s.labels.items())}"] = s.value
    return {"alerts": alerts, "other": other}


def test_the_filtered_parse_reads_what_the_full_parse_reads() -> None:
    text = _metrics_text()
    for tenant in ("bench-a", 'odd "tenant"', None):
        got = parse_counters(text, tenant)
        want = _reference(text, tenant)
        assert {k: v for k, v in got.alerts.items() if v} == want["alerts"]
    got = parse_counters(text, "bench-a")
    assert got.records == {"normalize": 7, "deduplicate": 3, "index": 2}
    assert got.sink_rows == {"postgres": 40, "search": 30}
    assert got.dlq == 2
    assert got.resend == {"hits": 5, "misses": 2}
    assert got.plus(got).minus(got).resend == {"hits": 5, "misses": 2}
    assert got.index_latency == {"1.0": 1, "5.0": 3, "+Inf": 4, "count": 4, "sum": 12.5}
    assert got.plus(got).minus(got).index_latency == got.index_latency
    assert got.sinks == {"flush_s_sum:postgres": 0.25, "flush_count:postgres": 1, "batch_sum:postgres": 300,
                         "batch_count:postgres": 1, "flush_s_sum:search": 0.25, "flush_count:search": 1,
                         "batch_sum:search": 300, "batch_count:search": 1}


def test_a_group_is_its_root_and_every_descendant_from_one_pass() -> None:
    # a child that starts a busy grandchild, as a server's postmaster starts backends
    code = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
            "'import time\\nend = time.time() + 30\\nwhile time.time() < end: pass']); time.sleep(30)")
    root = subprocess.Popen([sys.executable, "-c", code])
    try:
        group = ProcessGroup("server", root.pid)
        deadline = time.monotonic() + 10
        while len(group.processes()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        tree = children_by_parent()
        assert len(group.processes(tree)) == 2
        assert ProcessGroup("root only", root.pid, include_children=False).processes(tree)[0].pid == root.pid
        first = group.cpu_seconds(tree)
        time.sleep(0.5)
        assert group.cpu_seconds(children_by_parent()) > first  # the grandchild's busy loop counts
        assert group.rss_bytes(tree) > 0
    finally:
        for p in ProcessGroup("server", root.pid).processes():
            p.kill()
        root.wait()


def test_steal_is_read_apart_from_the_machine_s_busy_time() -> None:
    """The hypervisor's steal is its own figure (a VM on a busy host), not part of "other processes"."""
    import os

    import pytest

    from benchmarks.sampling import machine_cpu_seconds, stolen_cpu_seconds

    with open("/proc/stat") as f:
        fields = f.readline().split()  # cpu user nice system idle iowait irq softirq steal ...
    ticks = os.sysconf("SC_CLK_TCK")
    steal = int(fields[8]) / ticks
    busy = sum(int(fields[i]) for i in (1, 2, 3, 6, 7)) / ticks
    assert stolen_cpu_seconds() == pytest.approx(steal, abs=1.0)
    assert machine_cpu_seconds() == pytest.approx(busy, abs=1.0)
    assert stolen_cpu_seconds() >= steal


def test_a_histogram_quantile_interpolates_inside_its_bucket_as_promql_does() -> None:
    buckets = {"1.0": 10, "2.0": 60, "4.0": 100, "+Inf": 100, "count": 100, "sum": 170}
    assert histogram_quantile(0.05, buckets) == 0.5
    assert histogram_quantile(0.5, buckets) == 1.8  # rank 50: 40 of the 50 in (1, 2]
    assert histogram_quantile(0.99, buckets) == 3.95
    assert histogram_quantile(0.99, {"1.0": 0, "+Inf": 0}) is None
    assert histogram_quantile(0.99, {"1.0": 5, "+Inf": 10}) == 1.0  # beyond the last bound: that bound, a floor


BOUNDS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0)


@given(st.lists(st.floats(min_value=0, max_value=20, allow_nan=False), min_size=1, max_size=300),
       st.sampled_from((0.5, 0.9, 0.99)))
def test_a_histogram_quantile_falls_in_the_bucket_of_the_exact_one(values: list[float], q: float) -> None:
    import math

    registry = CollectorRegistry()
    histogram = Histogram("h", "", buckets=BOUNDS, registry=registry)
    for value in values:
        histogram.observe(value)
    buckets = {s.labels["le"]: s.value for s in next(iter(text_string_to_metric_families(
        generate_latest(registry).decode()))).samples if s.name == "h_bucket"}
    got = histogram_quantile(q, buckets)
    exact = sorted(values)[max(0, math.ceil(q * len(values)) - 1)]  # the nearest-rank quantile
    assert got is not None
    upper = next((b for b in BOUNDS if exact <= b), math.inf)
    lower = max((b for b in BOUNDS if b < upper), default=0.0)
    assert lower <= got <= min(upper, BOUNDS[-1]) + 1e-9
