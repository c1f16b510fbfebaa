"""What a benchmark watches while it runs: CPU and memory of each process, the workers' counters, Kafka lag.

Everything here is read from outside the processes it measures (psutil, the workers' `/metrics`, the
broker's admin API), so measuring does not change what the worker does beyond answering a scrape a second.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil
from prometheus_client.parser import text_string_to_metric_families

OUTCOMES = ("new", "changed", "duplicate")
STORED_OUTCOMES = ("new", "changed")


# ---------------------------------------------------------------------------------------------- processes


def children_by_parent() -> dict[int, list[int]]:
    """Every process' children, from one pass over /proc (psutil's `children()` makes that pass on
    each call: ten per sample for five groups, more CPU than the rest of the sampler)."""
    tree: dict[int, list[int]] = {}
    for p in psutil.process_iter(["ppid"]):
        tree.setdefault(p.info["ppid"] or 0, []).append(p.pid)
    return tree


@dataclass
class ProcessGroup:
    """A server or worker and its child processes (Postgres backends), measured together.

    Children are remembered once seen: a Postgres backend that exits between two samples still had
    its CPU time counted at the previous sample, and its last reading is kept (not lost) in the total.
    """

    name: str
    pid: int
    include_children: bool = True
    _last_cpu: dict[int, float] = field(default_factory=dict, repr=False)
    _handles: dict[int, psutil.Process] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def processes(self, tree: dict[int, list[int]] | None = None) -> list[psutil.Process]:
        """The root and its descendants (`tree`: `children_by_parent()`, read once for all groups)."""
        if not self.include_children:
            pids = [self.pid]
        else:
            tree = children_by_parent() if tree is None else tree
            pids, i = [self.pid], 0
            while i < len(pids):
                pids += tree.get(pids[i], [])
                i += 1
        out = []
        for pid in pids:
            handle = self._handles.get(pid)
            if handle is None or not handle.is_running():  # a pid reused by a new process is a new handle
                try:
                    handle = self._handles[pid] = psutil.Process(pid)
                except psutil.NoSuchProcess:
                    continue
            out.append(handle)
        return out

    def cpu_seconds(self, tree: dict[int, list[int]] | None = None) -> float:
        """User + system CPU seconds of the group so far (exited children keep their last reading)."""
        with self._lock:
            for p in self.processes(tree):
                try:
                    t = p.cpu_times()
                    self._last_cpu[p.pid] = t.user + t.system
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    continue
            return sum(self._last_cpu.values())

    def rss_bytes(self, tree: dict[int, list[int]] | None = None) -> int:
        total = 0
        for p in self.processes(tree):
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return total

    def alive(self) -> bool:
        try:
            return psutil.Process(self.pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False


def machine_cpu_seconds() -> float:
    """Busy CPU seconds of the whole machine since boot (all cores): what the run's processes used plus
    everything else, so a benchmark on a shared machine shows how much CPU others took."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


STOLEN = "stolen by the hypervisor (other VMs)"  # its row in a result's CPU table


def stolen_cpu_seconds() -> float:
    """CPU seconds since boot that the hypervisor gave other guests while this VM had work to run
    (Linux "steal"; 0 on bare metal). A run with much of it is slower in every process alike."""
    return getattr(psutil.cpu_times(), "steal", 0.0)


# ---------------------------------------------------------------------------------------------- worker metrics


@dataclass
class WorkerCounters:
    """The counters of one worker that a benchmark needs, for one tenant."""

    alerts: dict[str, float] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0.0))  # by outcome
    records: dict[str, float] = field(default_factory=dict)  # records received, by stage
    sink_rows: dict[str, float] = field(default_factory=dict)  # rows written, by sink (all tenants)
    dlq: float = 0.0
    # sums and counts of the sink histograms, e.g. "flush_s_sum:postgres", "batch_count:search"
    sinks: dict[str, float] = field(default_factory=dict)
    resend: dict[str, float] = field(default_factory=dict)  # the normalize stage's re-send cache: hits, misses
    # ingest → indexed (all tenants): cumulative count by upper bound ("+Inf" too), "sum", "count"
    index_latency: dict[str, float] = field(default_factory=dict)

    @property
    def processed(self) -> float:
        return sum(self.alerts.values())

    @property
    def stored(self) -> float:
        return sum(self.alerts.get(o, 0.0) for o in STORED_OUTCOMES)

    def plus(self, other: WorkerCounters) -> WorkerCounters:
        def add(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
            return {k: a.get(k, 0.0) + b.get(k, 0.0) for k in a.keys() | b.keys()}

        return WorkerCounters(add(self.alerts, other.alerts), add(self.records, other.records),
                              add(self.sink_rows, other.sink_rows), self.dlq + other.dlq, add(self.sinks, other.sinks),
                              add(self.resend, other.resend), add(self.index_latency, other.index_latency))

    def minus(self, other: WorkerCounters) -> WorkerCounters:
        def sub(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
            return {k: a.get(k, 0.0) - b.get(k, 0.0) for k in a.keys() | b.keys()}

        return WorkerCounters(sub(self.alerts, other.alerts), sub(self.records, other.records),
                              sub(self.sink_rows, other.sink_rows), self.dlq - other.dlq, sub(self.sinks, other.sinks),
                              sub(self.resend, other.resend), sub(self.index_latency, other.index_latency))


def parse_counters(text: str, tenant: str | None) -> WorkerCounters:
    """The benchmark's counters from one `/metrics` text; alerts of `tenant` only (None: every tenant).

    Only the lines of the families read here go through the parser: a worker exports hundreds of
    series, and parsing them all, three times a second, was most of the sampler's CPU."""
    out = WorkerCounters()
    wanted = "\n".join(line for line in text.splitlines() if line.startswith(_READ_PREFIXES))
    for family in text_string_to_metric_families(wanted):
        for s in family.samples:
            if s.name == "alertstream_alerts_total":
                if tenant is None or s.labels.get("tenant") == tenant:
                    outcome = s.labels.get("outcome", "")
                    out.alerts[outcome] = out.alerts.get(outcome, 0.0) + s.value
            elif s.name == "alertstream_records_received_total":
                stage = s.labels.get("stage", "")
                out.records[stage] = out.records.get(stage, 0.0) + s.value
            elif s.name == "alertstream_sink_rows_written_total":
                sink = s.labels.get("sink", "")
                out.sink_rows[sink] = out.sink_rows.get(sink, 0.0) + s.value
            elif s.name == "alertstream_dlq_records_total":
                out.dlq += s.value
            elif s.name in _RESEND_COUNTERS:
                key = _RESEND_COUNTERS[s.name]
                out.resend[key] = out.resend.get(key, 0.0) + s.value
            elif s.name.startswith(_INDEX_LATENCY):
                key = s.labels["le"] if s.name.endswith("_bucket") else s.name.rsplit("_", 1)[1]
                out.index_latency[key] = out.index_latency.get(key, 0.0) + s.value
            elif s.name in _SINK_HISTOGRAMS:
                key = f"{_SINK_HISTOGRAMS[s.name]}:{s.labels.get('sink', '')}"
                out.sinks[key] = out.sinks.get(key, 0.0) + s.value
    return out


_SINK_HISTOGRAMS = {
    "alertstream_sink_flush_seconds_sum": "flush_s_sum", "alertstream_sink_flush_seconds_count": "flush_count",
    "alertstream_sink_batch_size_sum": "batch_sum", "alertstream_sink_batch_size_count": "batch_count",
}
_RESEND_COUNTERS = {"alertstream_normalize_resend_cache_hits_total": "hits",
                    "alertstream_normalize_resend_cache_misses_total": "misses"}
_INDEX_LATENCY = "alertstream_e2e_index_latency_seconds"
_READ_PREFIXES = tuple(f"{name}{{" for name in (
    "alertstream_alerts_total", "alertstream_records_received_total", "alertstream_sink_rows_written_total",
    "alertstream_dlq_records_total", f"{_INDEX_LATENCY}_bucket", *_SINK_HISTOGRAMS)) + tuple(
    f"{name} " for name in ("alertstream_dlq_records_total", f"{_INDEX_LATENCY}_sum", f"{_INDEX_LATENCY}_count",
                            *_RESEND_COUNTERS))


def histogram_quantile(q: float, buckets: dict[str, float]) -> float | None:
    """The q-quantile of a Prometheus histogram from its cumulative bucket counts (keys: upper bounds
    as exported, "+Inf" included; other keys ignored), interpolated linearly inside the bucket it
    falls in, as PromQL's `histogram_quantile` does; None without observations. A quantile in the
    last finite bucket's overflow is reported as that bound (a lower bound, as in PromQL)."""
    bounds = sorted((float(k), v) for k, v in buckets.items() if k not in ("sum", "count"))
    if not bounds or bounds[-1][1] <= 0:
        return None
    rank = q * bounds[-1][1]
    lower, below = 0.0, 0.0
    for bound, count in bounds:
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = bound, count
    return lower


def scrape_text(port: int, timeout_s: float = 2.0) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as response:
        return response.read().decode()


def scrape_counters(port: int, tenant: str | None = None) -> WorkerCounters:
    return parse_counters(scrape_text(port), tenant)


class CounterReader:
    """Sums the counters of several workers; a worker that does not answer keeps its last reading,
    so a slow scrape shows as a flat line, not as a dip in a cumulative counter."""

    def __init__(self, ports: list[int], tenant: str | None) -> None:
        self.ports, self.tenant = ports, tenant
        self.last: dict[int, WorkerCounters] = {}
        self.lock = threading.Lock()

    def read(self) -> WorkerCounters:
        with self.lock:
            for port in self.ports:
                try:
                    self.last[port] = scrape_counters(port, self.tenant)
                except OSError:
                    continue
            total = WorkerCounters()
            for counters in self.last.values():
                total = total.plus(counters)
            return total

    def per_worker(self) -> dict[int, WorkerCounters]:
        self.read()
        return dict(self.last)


# ---------------------------------------------------------------------------------------------- Kafka lag


class KafkaLag:
    """Consumer-group lag from the broker: end offset - committed offset, summed over partitions.

    Tansu reports a partition's end offset as the first offset of its last record batch + 1
    (docs: /work/shared/INFRA.md), so this lag is a lower bound: it misses up to one producer
    batch per partition. The broker-independent backlog (alerts produced - alerts processed)
    is the number to trust; this one is shown for comparison with what Kafka tooling would say.
    """

    def __init__(self, bootstrap: str, groups: dict[str, str]) -> None:
        from confluent_kafka.admin import AdminClient

        self.admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
        self.groups = groups  # group id -> topic

    def read(self, timeout_s: float = 5.0) -> dict[str, float | None]:
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
        from confluent_kafka.admin import OffsetSpec

        out: dict[str, float | None] = {}
        try:
            topics = self.admin.list_topics(timeout=timeout_s).topics
        except Exception:  # noqa: BLE001 - a missed sample, not a failed benchmark
            return dict.fromkeys(self.groups, None)
        for group, topic in self.groups.items():
            try:
                meta = topics.get(topic)
                if meta is None:
                    out[group] = None
                    continue
                tps = [TopicPartition(topic, p) for p in meta.partitions]
                ends = self.admin.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=timeout_s)
                end = {tp.partition: f.result().offset for tp, f in ends.items()}
                fut = self.admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)],
                                                             request_timeout=timeout_s)
                committed = {tp.partition: tp.offset for tp in fut[group].result().topic_partitions}
                out[group] = float(sum(max(0, end[p] - max(0, committed.get(p, 0))) for p in end))
            except Exception:  # noqa: BLE001
                out[group] = None
        return out


# ---------------------------------------------------------------------------------------------- the sampler


@dataclass
class Sample:
    t: float  # seconds since the load started (negative: before)
    produced_alerts: float
    produced_bytes: float
    processed: float  # alerts the dedup stage has seen (all outcomes), this run's tenant
    stored: float  # new + changed
    pg_rows: float  # rows written by the Postgres sink since the start of the window
    indexed: float  # documents written by the search sink since the start of the window
    kafka_lag: dict[str, float | None]
    cpu_s: dict[str, float]
    rss: dict[str, int]
    search: bool = True
    machine_cpu_s: float = 0.0  # busy CPU seconds of the whole machine (every process, ours or not)
    stolen_cpu_s: float = 0.0  # CPU seconds the hypervisor gave to other guests (stolen_cpu_seconds)

    def as_dict(self) -> dict[str, Any]:
        return {"t": round(self.t, 3), "produced_alerts": self.produced_alerts, "produced_bytes": self.produced_bytes,
                "processed": self.processed, "stored": self.stored, "pg_rows": self.pg_rows,
                "indexed": self.indexed, "backlog": self.produced_alerts - self.processed,
                "index_lag": self.stored - self.indexed if self.search else None, "kafka_lag": self.kafka_lag,
                "cpu_s": {k: round(v, 3) for k, v in self.cpu_s.items()}, "rss": self.rss,
                "machine_cpu_s": round(self.machine_cpu_s, 3), "stolen_cpu_s": round(self.stolen_cpu_s, 3)}


class Sampler:
    """Samples every `interval_s` in a thread: counters, CPU and RSS of every process group, and (every
    `lag_every` samples) Kafka consumer-group lag. `produced()` returns (alerts, bytes) produced so far."""

    def __init__(self, counters: CounterReader, baseline: WorkerCounters, groups: list[ProcessGroup],
                 produced: Callable[[], tuple[float, float]], t0: Callable[[], float],
                 lag: KafkaLag | None = None, interval_s: float = 1.0, lag_every: int = 2, search: bool = True) -> None:
        self.counters, self.baseline, self.groups = counters, baseline, groups
        self.produced, self.t0, self.lag = produced, t0, lag
        self.interval_s, self.lag_every, self.search = interval_s, lag_every, search
        self.samples: list[Sample] = []
        self.peak_rss: dict[str, int] = {g.name: 0 for g in groups}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_lag: dict[str, float | None] = {}
        self.errors: list[str] = []

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=30)

    def latest(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def take(self) -> Sample:
        # The clock and the two counters first, back to back: the slow reads (Kafka lag can take a second on
        # a loaded broker) come after, so they cannot skew the rates computed from t.
        t = time.monotonic() - self.t0()
        produced_alerts, produced_bytes = self.produced()
        c = self.counters.read().minus(self.baseline)
        if self.lag is not None and len(self.samples) % self.lag_every == 0:
            self._last_lag = self.lag.read()
        tree = children_by_parent()
        rss = {}
        for g in self.groups:
            rss[g.name] = g.rss_bytes(tree)
            self.peak_rss[g.name] = max(self.peak_rss[g.name], rss[g.name])
        return Sample(t, produced_alerts, produced_bytes, c.processed, c.stored,
                      c.sink_rows.get("postgres", 0.0), c.sink_rows.get("search", 0.0), dict(self._last_lag),
                      {g.name: g.cpu_seconds(tree) for g in self.groups}, rss, self.search, machine_cpu_seconds(),
                      stolen_cpu_seconds())

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.samples.append(self.take())
            except Exception as exc:  # noqa: BLE001 - keep sampling; the report lists what failed
                if len(self.errors) < 20:
                    self.errors.append(f"{type(exc).__name__}: {exc}")
            next_at += self.interval_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))
