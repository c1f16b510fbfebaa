"""Benchmark runner: start what is needed, measure the pipeline and its ceilings, write the results.

    .venv/bin/python -m benchmarks.runner --volume 600GB/day --duration 600
    .venv/bin/python -m benchmarks.runner --rate max --duration 60            # saturation: the capacity
    .venv/bin/python -m benchmarks.runner --short                             # CI: a few minutes, vs baseline.json
    alertstream bench ...                                                     # the same options

One run:
1. a fresh local stack (broker, PostgreSQL, search store) on free loopback ports, in its own
   directory (`--use-env-stack`: the servers the ALERTSTREAM_* variables point at, untouched,
   with topics and consumer groups of the run's own);
2. the ceilings, on the run's own records: raw broker produce -> consume, raw COPY into Postgres;
3. N worker processes (`python -m cli.main worker`), each with its own data dir and web port,
   sharing the consumer groups; a warm-up (its own tenant) until every worker has joined every group;
4. the load (benchmarks.loadgen) with the run's own tenant, while a sampler records counters,
   backlog, Kafka lag, CPU and RSS every second; then the drain until every alert is processed
   and indexed;
5. latency from Postgres (stored_at - received_at over the run's tenant), the results JSON, a
   Markdown summary and PNG plots in `--out` (benchmarks/results), named by the run's timestamp.
Everything started is stopped at the end, on errors and on Ctrl-C too.

`--rate max` is a closed loop: the generator produces as fast as it can while the backlog
(alerts produced - alerts processed) is under `--max-backlog`, and waits otherwise. The pipeline is
then saturated for the whole window and the drain is short, so throughput is its capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil

from benchmarks.loadgen import (SCENARIOS, SOAK_DEFAULT_S, LoadRun, LoadStats, ProducerOptions, Scenario,
                                add_payload_arguments, check_loopback, parse_volume, payload_overrides)
from benchmarks.payload_factory import DEFAULT_MIX, GeneratedRecord, LoadProfile, PayloadFactory, load_profile
from benchmarks.sampling import (STOLEN, CounterReader, KafkaLag, ProcessGroup, Sample, Sampler, WorkerCounters,
                                 histogram_quantile, machine_cpu_seconds, stolen_cpu_seconds)

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
BASELINE = REPO / "benchmarks" / "baseline.json"
TARGET_BYTES_S = parse_volume("600GB/day")  # 6.94 MB/s of raw webhook JSON
TARGET_P99_S = 2.0
TARGET_SEARCHABLE_P99_S = 5.0  # issue 18: p99 from produce to searchable
KEEP_ALERTS_S_PER_CORE = (20.0, 37.0)  # /work/shared/KEEP.md, process_event on a 2-core machine like this one
SESSION_TIMEOUT_S = 10.0  # group joins take about half of it (INFRA.md)
REGRESSION_FACTOR = 0.5  # --short fails when ceiling_ratio < this x the baseline's

SHORT = {"duration_s": 45.0, "ceiling_records": 10_000, "rate_max": True}


class BenchError(RuntimeError):
    """The benchmark could not run or could not measure what it must (not: the pipeline was slow)."""


# ---------------------------------------------------------------------------------------------- options


@dataclass
class BenchOptions:
    scenario: str = "steady"
    rate: float | None = None  # alerts/s
    volume: str | None = None  # raw payload volume, e.g. 600GB/day
    rate_max: bool = False  # closed-loop saturation
    max_backlog: int = 20_000  # alerts in flight allowed by --rate max
    duration_s: float = 60.0
    workers: int = 1
    stateless_workers: int = 0  # of `workers`, these run only the stateless stages (ALERTSTREAM_WORKER_ROLE)
    partitions: int = 4
    # The payloads: the named profile `load` with `load_overrides` (the payload options given) applied.
    # options_from_args fills the fields below from both; they are what profile_obj builds and the results record.
    load: str = "default"
    load_overrides: list[str] = field(default_factory=list)
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    cardinality: int | dict[str, int] = 10_000
    full_dup: float = 0.3
    partial_dup: float = 0.2
    flap: float = 0.05
    alerts_per_webhook: int = 5
    alerts_per_webhook_min: int = 1
    mean_size_bytes: int = 1500
    size_per_alert: bool = False
    lean: bool = False
    size_sigma: float = 0.3
    seed: int = 1
    spike_factor: float = 5.0
    spike_at_s: float | None = None
    spike_s: float = 60.0
    ramp_from: float = 0.1
    ceiling_records: int = 30_000  # 0: no ceilings
    ceiling_repeats: int = 3  # best of
    short: bool = False
    out: Path = RESULTS_DIR
    profile: bool = False
    profile_rate: int = 100
    drain_timeout_s: float | None = None
    warmup_timeout_s: float = 120.0
    warm_load_s: float = 0.0  # the run's load from the warm-up tenant for this long before the window (not measured)
    use_env_stack: bool = False
    keep_data: bool = False
    baseline: Path = BASELINE
    update_baseline: bool = False
    progress: bool = True
    compression: str = "lz4"  # of the load generator's producer, as loadgen's default
    search: bool = True  # False: the workers run with ALERTSTREAM_SEARCH_ENABLED=false
    label: str = ""
    command: str = ""

    def scenario_obj(self) -> Scenario:
        rate_bytes = parse_volume(self.volume) if self.volume else None
        return Scenario(name=self.scenario, rate_alerts=None if self.rate_max else self.rate,  # type: ignore[arg-type]
                        rate_bytes=rate_bytes, duration_s=self.duration_s, spike_factor=self.spike_factor,
                        spike_at_s=self.spike_at_s, spike_s=self.spike_s, ramp_from=self.ramp_from)

    def profile_obj(self, tenant: str, seed: int | None = None) -> LoadProfile:
        return LoadProfile(mix=self.mix, cardinality=self.cardinality, full_dup_ratio=self.full_dup,
                           partial_dup_ratio=self.partial_dup, flap_ratio=self.flap,
                           alerts_per_webhook=self.alerts_per_webhook, mean_size_bytes=self.mean_size_bytes,
                           seed=self.seed if seed is None else seed, tenants=[tenant], size_sigma=self.size_sigma,
                           alerts_per_webhook_min=self.alerts_per_webhook_min, size_per_alert=self.size_per_alert,
                           lean=self.lean)

    def mode(self) -> str:
        if self.rate_max:
            mode = "max"
        elif self.volume:
            mode = f"volume {self.volume}"
        else:
            mode = f"rate {self.rate:g} alerts/s" if self.rate else "unpaced"
        return mode if self.search else mode + ", no search"


@dataclass
class _ClosedLoop(Scenario):
    """The scenario of `--rate max`: unpaced while the backlog is under the cap, paused above it."""

    backlog: Callable[[], float] = lambda: 0.0
    cap: float = 20_000

    @classmethod
    def around(cls, scenario: Scenario, backlog: Callable[[], float], cap: float) -> _ClosedLoop:
        return cls(**{f.name: getattr(scenario, f.name) for f in fields(Scenario)}, backlog=backlog, cap=cap)

    def rate_at(self, t: float) -> float | None:
        # A near-zero rate makes the generator wait in slices (loadgen._SLEEP_SLICE_S), re-checking the backlog each time.
        return None if self.backlog() < self.cap else 1e-6

    def describe(self) -> str:
        return f"{self.name} max (closed loop, backlog <= {self.cap:,.0f} alerts) for {self.duration_s:g}s"


# ---------------------------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Worker:
    index: int
    port: int
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    role: str = "all"

    @property
    def name(self) -> str:
        return f"worker-{self.index}" if self.role == "all" else f"worker-{self.index}-{self.role}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def start_worker(index: int, env: dict[str, str], run_dir: Path, role: str = "all") -> Worker:
    port = free_port()
    data_dir = run_dir / f"worker-{index}"
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = run_dir / "logs" / f"worker-{index}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    wenv = {**env, "ALERTSTREAM_DATA_DIR": str(data_dir), "ALERTSTREAM_WORKER_WEB_PORT": str(port),
            "ALERTSTREAM_WORKER_PROCESSES": "1", "ALERTSTREAM_WORKER_ROLE": role}  # the runner starts (and counts) the processes itself
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cli.main", "worker"], cwd=REPO, env=wenv,
                                stdout=log, stderr=subprocess.STDOUT)
    return Worker(index, port, data_dir, log_path, proc, role)


def stop_processes(procs: list[subprocess.Popen[bytes]], sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> None:
    """Signal each process we started, by its pid, then wait; kill what is still there after the timeout."""
    for p in procs:
        if p.poll() is None:
            try:
                p.send_signal(sig)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout_s
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# ---------------------------------------------------------------------------------------------- display


class Display:
    """Progress on stderr with rich: one live status table, plus a log line per phase."""

    def __init__(self, enabled: bool) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.enabled = enabled
        self.live = None
        self.status: dict[str, str] = {}

    def __enter__(self) -> Display:
        if self.enabled and self.console.is_terminal:
            from rich.live import Live

            self.live = Live(self._table(), console=self.console, refresh_per_second=4, transient=True)
            self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.stop()

    def log(self, text: str) -> None:
        if self.enabled:
            self.console.log(text)

    def update(self, **fields: str) -> None:
        self.status.update(fields)
        if self.live is not None:
            self.live.update(self._table())

    def _table(self):  # noqa: ANN202
        from rich.table import Table

        table = Table(show_header=False, box=None, title="alertstream bench")
        for k, v in self.status.items():
            table.add_row(f"[bold]{k}", v)
        return table


# ---------------------------------------------------------------------------------------------- the run


@dataclass
class Timeline:
    load_start: float = 0.0  # monotonic
    load_start_wall: float = 0.0
    produce_end: float = 0.0
    load_end: float = 0.0  # after the final flush
    drained: float | None = None  # every produced alert processed by the dedup stage
    indexed: float | None = None  # every stored alert indexed


class Bench:
    def __init__(self, opts: BenchOptions) -> None:
        self.opts = opts
        now = datetime.now(timezone.utc)
        self.run_id = now.strftime("%Y%m%dT%H%M%SZ")
        self.started_at = now.isoformat(timespec="seconds")
        self.tenant = f"bench-{self.run_id.lower()}-{uuid.uuid4().hex[:4]}"
        self.warmup_tenant = f"warmup-{uuid.uuid4().hex[:8]}"
        self.run_dir = (REPO / ".alertstream" / "bench" / self.run_id).resolve()
        self.display = Display(opts.progress)
        self.workers: list[Worker] = []
        self.profilers: list[tuple[Worker, subprocess.Popen[bytes], Path]] = []
        self.stack_state: Path | None = None
        self.engines: dict[str, str] = {}  # service → engine (kafka|tansu, opensearch|osmem...); empty: servers from the environment
        self.env: dict[str, str] = {}
        self.problems: list[str] = []
        self.phases: dict[str, float] = {}

    # ------------------------------------------------------------------ orchestration

    def run(self) -> dict[str, Any]:
        with ExitStack() as cleanup, self.display:
            cleanup.callback(self._cleanup)
            self.display.log(f"run {self.run_id}: {self.opts.scenario} {self.opts.mode()} for {self.opts.duration_s:g}s, "
                             f"{self.opts.workers} worker(s), {self.opts.partitions} partitions; tenant {self.tenant}")
            with self._phase("stack"):
                settings = self._start_stack()
            with self._phase("ceilings"):
                ceilings = self._ceilings(settings)
            with self._phase("warmup"):
                self._start_workers(settings)
                counters = CounterReader([w.port for w in self.workers], self.tenant)
                self._warm_up(settings)
            if self.opts.warm_load_s > 0:
                with self._phase("warm_load"):
                    self._warm_load(settings)
            with self._phase("load_and_drain"):
                measured = self._measure(settings, counters)
            with self._phase("latency_query"):
                latency = self._latency(settings, measured["timeline"].load_start_wall)
            with self._phase("profiles"):
                profile = self._finish_profiles()
            return self._result(settings, ceilings, measured, latency, profile)

    @contextlib.contextmanager
    def _phase(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            self.phases[name] = round(time.monotonic() - started, 2)

    def _cleanup(self) -> None:
        self.display.update(phase="stopping")
        stop_processes([p for _, p, _ in self.profilers], signal.SIGINT, 15)
        stop_processes([w.proc for w in self.workers])
        if self.stack_state is not None:
            from streams import localstack

            try:
                localstack.down(self.stack_state)
            except Exception as exc:  # noqa: BLE001 - report, and still remove what can be removed
                self.display.console.print(f"[red]stack down failed: {exc}")
            if not self.opts.keep_data:
                shutil.rmtree(self.stack_state, ignore_errors=True)
        if not self.opts.keep_data:
            for w in self.workers:
                shutil.rmtree(w.data_dir, ignore_errors=True)

    # ------------------------------------------------------------------ stack

    def _start_stack(self):  # noqa: ANN202 - Settings
        from config.settings import Settings
        from sinks.migrate import migrate
        from streams import localstack

        self.display.update(phase="starting the stack")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        passthrough = {k: v for k, v in os.environ.items() if k.startswith("ALERTSTREAM_")}
        if self.opts.use_env_stack:
            base = Settings()
            if not (base.kafka_bootstrap and base.database_url):
                raise BenchError("--use-env-stack needs ALERTSTREAM_KAFKA_BOOTSTRAP and ALERTSTREAM_DATABASE_URL")
            stack_env = {"ALERTSTREAM_KAFKA_BOOTSTRAP": base.require_kafka(),
                         "ALERTSTREAM_DATABASE_URL": base.require_database_url(),
                         "ALERTSTREAM_SEARCH_URL": base.search_url or ""}
            # Servers shared with others: topics and consumer groups of this run's own.
            prefix = f"bench-{self.run_id.lower()}"
            names = {"ALERTSTREAM_APP_ID": prefix, "ALERTSTREAM_TOPIC_ALERTS": f"{prefix}.alerts",
                     "ALERTSTREAM_TOPIC_NORMALIZED": f"{prefix}.alerts.normalized",
                     "ALERTSTREAM_TOPIC_STORED": f"{prefix}.alerts.stored", "ALERTSTREAM_TOPIC_DLQ": f"{prefix}.alerts.dlq"}
        else:
            self.stack_state = self.run_dir / "stack"
            base = Settings(kafka_bootstrap=None, database_url=None, search_url=None, data_dir=self.run_dir)
            stack_env = localstack.up(base, state_dir=self.stack_state)
            self.engines = {st.name: st.engine or st.name for st in localstack.status(self.stack_state)}
            names = {k: passthrough[k] for k in ("ALERTSTREAM_APP_ID", "ALERTSTREAM_TOPIC_ALERTS",
                     "ALERTSTREAM_TOPIC_NORMALIZED", "ALERTSTREAM_TOPIC_STORED", "ALERTSTREAM_TOPIC_DLQ")
                     if k in passthrough}
        check_loopback(stack_env["ALERTSTREAM_KAFKA_BOOTSTRAP"])
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ALERTSTREAM_")}
        self.env.update(passthrough)  # tuning (batch sizes, pool size...) reaches the workers
        self.env.update(stack_env)
        self.env.update(names)
        self.env.update({"ALERTSTREAM_TOPIC_PARTITIONS": str(self.opts.partitions),
                         "ALERTSTREAM_BROKER_SESSION_TIMEOUT_S": str(SESSION_TIMEOUT_S)})
        if not self.opts.search:
            self.env["ALERTSTREAM_SEARCH_ENABLED"] = "false"
        settings = _settings_from(self.env)
        asyncio.run(migrate(settings.require_database_url()))
        self.display.log(f"stack ready: kafka {settings.kafka_bootstrap}, search {settings.search_url or '-'}")
        return settings

    def _server_groups(self) -> list[ProcessGroup]:
        if self.stack_state is None:
            return []
        state = json.loads((self.stack_state / "stack.json").read_text())
        return [ProcessGroup(name, rec["pid"]) for name, rec in state.items()
                if isinstance(rec, dict) and rec.get("pid") and not rec.get("external")]

    # ------------------------------------------------------------------ ceilings

    def _ceilings(self, settings) -> dict[str, Any]:  # noqa: ANN001
        from benchmarks.ceilings import alert_rows_for, best_of, broker_ceiling, copy_ceiling

        n = self.opts.ceiling_records
        if n <= 0:
            return {}
        self.display.update(phase=f"ceilings ({n:,} records)")
        factory = PayloadFactory(self.opts.profile_obj(f"ceiling-{self.run_id.lower()}"))
        records = [factory.next() for _ in range(n)]
        n_rep = self.opts.ceiling_repeats
        broker = best_of(lambda: broker_ceiling(settings.require_kafka(), records, self.opts.partitions), n_rep)
        self.display.log(f"broker ceiling: {broker.items_s:,.0f} records/s = {broker.alerts_s:,.0f} alerts/s "
                         f"({broker.mb_s:,.1f} MB/s)")
        rows = alert_rows_for(records)
        copy = best_of(lambda: copy_ceiling(settings.require_database_url(), records, rows=rows), n_rep)
        self.display.log(f"COPY ceiling: {copy.items_s:,.0f} rows/s = {copy.alerts_s:,.0f} alerts/s")
        return {"broker": broker.as_dict(), "copy": copy.as_dict()}

    # ------------------------------------------------------------------ workers

    def _start_workers(self, settings) -> None:  # noqa: ANN001
        from streams.supervisor import worker_roles
        from streams.topics import ensure_topics

        self.display.update(phase=f"starting {self.opts.workers} worker(s)")
        ensure_topics(settings)
        roles = worker_roles(settings.model_copy(update={"worker_stateless_processes": self.opts.stateless_workers}),
                             self.opts.workers)
        for i, role in enumerate(roles):
            self.workers.append(start_worker(i, self.env, self.run_dir, role))

    def _check_workers(self) -> None:
        for w in self.workers:
            if not w.alive():
                raise BenchError(f"{w.name} exited with {w.proc.returncode}; log {w.log_path}:\n{w.log_tail()}")

    def _warm_up(self, settings) -> None:  # noqa: ANN001
        """Feed a trickle of the warm-up tenant until every worker has joined every consumer group (it
        has received records in each stage) and everything produced is processed, so that the measured
        window starts with a settled group and no join delay."""
        self.display.update(phase="warm-up: waiting for every worker to join every group")
        producer = self._producer(settings)
        factory = PayloadFactory(self.opts.profile_obj(self.warmup_tenant, seed=self.opts.seed + 1000))
        warm = CounterReader([w.port for w in self.workers], self.warmup_tenant)
        stages = ["normalize", "deduplicate"] + (["index"] if settings.search_enabled else [])
        stateless = self.opts.stateless_workers or self.opts.workers
        per_stage = {"normalize": stateless, "index": stateless, "deduplicate": self.opts.workers - self.opts.stateless_workers}
        # workers beyond the partition count stay idle
        need_of = {stage: min(per_stage[stage], self.opts.partitions) for stage in stages}
        produced = 0
        deadline = time.monotonic() + self.opts.warmup_timeout_s
        joined_at = None
        while True:
            self._check_workers()
            per = warm.per_worker()
            joined_per_stage = {s: sum(1 for c in per.values() if c.records.get(s, 0) > 0) for s in stages}
            joined = all(n >= need_of[s] for s, n in joined_per_stage.items())
            total = WorkerCounters()
            for c in per.values():
                total = total.plus(c)
            if joined and joined_at is None:
                joined_at = time.monotonic()
            if joined_at is None:
                for _ in range(20):
                    rec = factory.next()
                    producer.produce(settings.topic_alerts, rec.value, rec.key, headers=_headers(rec))
                    produced += rec.alerts
                producer.flush(10)
            elif (total.processed >= produced and total.sink_rows.get("search", total.stored) >= total.stored
                  and time.monotonic() - joined_at > 1.0):
                break
            if time.monotonic() > deadline:
                tails = "\n".join(f"--- {w.name}\n{w.log_tail(15)}" for w in self.workers)
                raise BenchError(f"warm-up did not settle within {self.opts.warmup_timeout_s:g}s (workers per "
                                 f"stage {joined_per_stage}, processed {total.processed:.0f}/{produced}):\n{tails}")
            self.display.update(warmup=f"{total.processed:,.0f}/{produced:,} alerts; workers in each stage: "
                                       + ", ".join(f"{s} {n}/{need_of[s]}" for s, n in joined_per_stage.items()))
            time.sleep(0.5)
        self.display.log(f"warm-up done: {produced:,} alerts, every worker in every group")

    def _producer(self, settings):  # noqa: ANN001, ANN202 - Settings, a confluent_kafka Producer
        """The load generator's producer, as every phase of the run produces: the run's compression,
        idempotent where the broker allows it."""
        from confluent_kafka import Producer

        options = ProducerOptions(compression=self.opts.compression, idempotence=settings.kafka_idempotent_producers)
        return Producer(options.config(settings.require_kafka()))

    def _warm_load(self, settings) -> None:  # noqa: ANN001
        """`--warm-load S`: the run's own load (the closed loop at `--rate max`, else the target's steady
        rate) from the warm-up tenant for S seconds, then drained, before the measured window.

        The servers are JVMs (and Postgres has its caches): freshly started, they spend the first minutes
        compiling and warming, at several times their settled CPU per document (docs/performance.md),
        which a deployment that has run for a day no longer pays. A run with a warm load measures the
        pipeline on warm servers; without it (the default), a cold start. Its own tenant and identities:
        the run's identities are still all new when the window opens."""
        opts = self.opts
        warm = CounterReader([w.port for w in self.workers], self.warmup_tenant)
        base = warm.read()
        stats = LoadStats()
        target = opts.scenario_obj()
        scenario = Scenario(name="steady", rate_alerts=target.rate_alerts, rate_bytes=target.rate_bytes,
                            duration_s=opts.warm_load_s)
        poller = _Poller(warm, base, 0.5)
        if opts.rate_max:
            scenario = _ClosedLoop.around(scenario, lambda: stats.alerts - poller.processed, opts.max_backlog)
        load = LoadRun(self._producer(settings), settings.topic_alerts,
                       PayloadFactory(opts.profile_obj(self.warmup_tenant, seed=opts.seed + 2000)),
                       scenario, stats)
        self.display.update(phase=f"warm load: {scenario.describe()} (not measured)")
        last = [0.0]

        def report(st: LoadStats, elapsed: float, phase: str) -> None:
            if time.monotonic() - last[0] >= 1.0:
                last[0] = time.monotonic()
                self._check_workers()
                self.display.update(warmup=f"warm load {elapsed:.0f}/{opts.warm_load_s:g}s: {st.alerts:,} alerts produced, "
                                           f"{poller.processed:,.0f} processed")

        poller.start()
        try:
            load.loop(report)
            load.finish(60.0)
        finally:
            poller.stop()
        deadline = time.monotonic() + max(60.0, opts.warm_load_s)
        while True:
            self._check_workers()
            done = warm.read().minus(base)
            if done.processed >= stats.alerts and (not settings.search_enabled
                                                   or done.sink_rows.get("search", done.stored) >= done.stored):
                break
            if time.monotonic() > deadline:
                raise BenchError(f"the warm load did not drain within {max(60.0, opts.warm_load_s):g}s "
                                 f"(processed {done.processed:,.0f}/{stats.alerts:,})")
            self.display.update(warmup=f"warm load draining: {done.processed:,.0f}/{stats.alerts:,} alerts")
            time.sleep(0.25)
        self.display.log(f"warm load done: {stats.alerts:,} alerts in {stats.produce_s:.0f}s from tenant {self.warmup_tenant}")

    # ------------------------------------------------------------------ the measured window

    def _measure(self, settings, counters: CounterReader) -> dict[str, Any]:  # noqa: ANN001
        opts = self.opts
        groups = [ProcessGroup(w.name, w.proc.pid) for w in self.workers] + self._server_groups()
        groups.append(ProcessGroup("loadgen", os.getpid(), include_children=False))
        baseline = counters.read()  # sink counters include the warm-up; alerts are the run tenant's (zero)
        lag = KafkaLag(settings.require_kafka(), {
            f"{settings.app_id}-normalize": settings.topic_alerts,
            settings.app_id: settings.topic_normalized,
            **({f"{settings.app_id}-index": settings.topic_stored} if settings.search_enabled else {}),
        })
        stats = LoadStats()
        tl = Timeline()
        sampler = Sampler(counters, baseline, groups, produced=lambda: (float(stats.alerts), float(stats.bytes)),
                          t0=lambda: tl.load_start or time.monotonic(), lag=lag, search=settings.search_enabled)
        processed_now = _Poller(counters, baseline, 0.5 if opts.rate_max else 1.0)

        scenario = opts.scenario_obj()
        if opts.rate_max:
            scenario = _ClosedLoop.around(scenario, lambda: stats.alerts - processed_now.processed, opts.max_backlog)
        producer = self._producer(settings)
        load = LoadRun(producer, settings.topic_alerts, PayloadFactory(opts.profile_obj(self.tenant)), scenario, stats)
        stats.scenario = scenario.describe()

        cpu0 = {g.name: g.cpu_seconds() for g in groups}
        machine0, stolen0 = machine_cpu_seconds(), stolen_cpu_seconds()
        log_offsets = {w.name: w.log_path.stat().st_size if w.log_path.exists() else 0 for w in self.workers}
        self._start_profiles()
        processed_now.start()
        tl.load_start, tl.load_start_wall = time.monotonic(), time.time()
        sampler.start()
        self.display.update(phase=f"load: {stats.scenario}")
        last_check = [0.0]

        def report(st: LoadStats, elapsed: float, phase: str) -> None:
            if time.monotonic() - last_check[0] >= 1.0:
                last_check[0] = time.monotonic()
                self._check_workers()
                self._show(sampler.latest(), st, elapsed)

        try:
            load.loop(report)
            tl.produce_end = time.monotonic()
            load.finish(60.0)
        finally:
            tl.load_start = load.started  # the generator's own clock start (a few µs later)
        tl.load_end = time.monotonic()
        at_load_end = counters.read().minus(baseline)
        if not stats.ok:
            self.problems.append(f"load generator: {stats.delivery_errors} delivery errors {stats.error_samples[:3]}")

        # drain: every produced alert processed, every stored alert indexed
        self.display.update(phase="drain")
        drain_timeout = opts.drain_timeout_s if opts.drain_timeout_s is not None else max(60.0, opts.duration_s)
        deadline = time.monotonic() + drain_timeout
        final = at_load_end
        while time.monotonic() < deadline:
            self._check_workers()
            final = counters.read().minus(baseline)
            if tl.drained is None and final.processed >= stats.alerts:
                tl.drained = time.monotonic()
            if tl.drained is not None and (not settings.search_enabled
                                           or final.sink_rows.get("search", 0) >= final.stored):
                tl.indexed = time.monotonic()
                break
            self._show(sampler.latest(), stats, time.monotonic() - tl.load_start)
            time.sleep(0.25)
        processed_now.stop()
        cpu1 = {g.name: g.cpu_seconds() for g in groups}
        machine1, stolen1 = machine_cpu_seconds(), stolen_cpu_seconds()
        sampler.stop()
        sampler.samples.append(sampler.take())
        sampler.lag = None  # its admin client must not outlive the broker (librdkafka logs reconnects)
        del lag
        if tl.drained is None:
            self.problems.append(f"not drained within {drain_timeout:g}s: processed {final.processed:,.0f} of "
                                 f"{stats.alerts:,} alerts")
        elif tl.indexed is None:
            self.problems.append(f"not indexed within {drain_timeout:g}s: {final.sink_rows.get('search', 0):,.0f} of "
                                 f"{final.stored:,.0f} stored alerts")
        self.display.log(f"load done: {stats.alerts:,} alerts produced, {final.processed:,.0f} processed")
        return {"stats": stats, "timeline": tl, "faust_stalls": self._faust_stalls(log_offsets), "at_load_end": at_load_end, "final": final, "cpu0": cpu0,
                "cpu1": cpu1, "machine_cpu_s": machine1 - machine0,
                "stolen_cpu_s": stolen1 - stolen0, "sampler": sampler, "groups": groups, "scenario": scenario,
                "per_worker": {w.name: counters.last.get(w.port, WorkerCounters()).processed for w in self.workers}}

    def _faust_stalls(self, offsets: dict[str, int]) -> dict[str, Any]:
        """Faust's table changelog back-pressure during the measured window, from the workers' logs: when
        more than 100 changelog messages are pending, Faust stops feeding the streams ("producer buffer
        full") until they are sent ("producer flush took N")."""
        count, took = 0, []
        for w in self.workers:
            try:
                with open(w.log_path, "rb") as log:
                    log.seek(offsets.get(w.name, 0))
                    text = log.read().decode(errors="replace")
            except OSError:
                continue
            count += text.count("producer buffer full")
            took += [float(m) for m in re.findall(r"producer flush took ([0-9.]+)", text)]
        return {"count": count, "total_s": round(sum(took), 3), "max_s": round(max(took), 3) if took else None}

    def _show(self, s: Sample | None, stats: LoadStats, elapsed: float) -> None:
        produced_rate = stats.alerts / elapsed if elapsed > 0 else 0.0
        fields = {"elapsed": f"{elapsed:,.0f}s / {self.opts.duration_s:g}s",
                  "produced": f"{stats.alerts:,} alerts ({produced_rate:,.0f}/s, {stats.bytes / 1e6 / max(elapsed, 1e-9):,.2f} MB/s)"}
        if s is not None:
            fields["processed"] = f"{s.processed:,.0f} alerts ({s.processed / max(s.t, 1e-9):,.0f}/s)"
            fields["backlog"] = f"{s.produced_alerts - s.processed:,.0f} alerts; index lag {s.stored - s.indexed:,.0f}"
            lag = ", ".join(f"{g}={v:,.0f}" for g, v in s.kafka_lag.items() if v is not None)
            fields["kafka lag"] = lag or "-"
        self.display.update(**fields)

    # ------------------------------------------------------------------ profiles

    def _start_profiles(self) -> None:
        if not self.opts.profile:
            return
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(py_spy).exists():
            raise BenchError("--profile needs py-spy (pip install py-spy)")
        self.opts.out.mkdir(parents=True, exist_ok=True)
        for w in self.workers:
            path = self.opts.out / f"{self.run_id}-{w.name}.collapsed.txt"
            # raw = collapsed stacks (speedscope and flamegraph.pl read them); nonblocking: the worker is not paused
            cmd = [py_spy, "record", "--subprocesses", "--pid", str(w.proc.pid), "--rate", str(self.opts.profile_rate), "--format", "raw",
                   "--nolineno", "--nonblocking", "--duration", str(int(self.opts.duration_s)), "--output", str(path)]
            log = open(self.run_dir / "logs" / f"py-spy-{w.name}.log", "wb")
            self.profilers.append((w, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), path))
            log.close()

    def _finish_profiles(self) -> dict[str, Any]:
        if not self.profilers:
            return {}
        from benchmarks.report import profile_summary, render_flamegraph

        out: dict[str, Any] = {}
        for w, proc, path in self.profilers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                stop_processes([proc], signal.SIGINT, 15)
            if not path.exists():
                self.problems.append(f"py-spy wrote no profile for {w.name}; see {self.run_dir / 'logs'}")
                continue
            svg = path.with_name(path.name.replace(".collapsed.txt", ".flamegraph.svg"))
            render_flamegraph(path, svg, title=f"{w.name}, {self.opts.scenario} {self.opts.mode()}")
            out[w.name] = {"collapsed": path.name, "flamegraph": svg.name,
                           **profile_summary(path, self.opts.profile_rate, self.opts.duration_s)}
        return out

    # ------------------------------------------------------------------ latency

    def _latency(self, settings, t0_wall: float) -> dict[str, Any]:  # noqa: ANN001
        self.display.update(phase="latency query")
        return asyncio.run(_latency_query(settings.require_database_url(), self.tenant, t0_wall))

    # ------------------------------------------------------------------ results

    def _result(self, settings, ceilings, m, latency, profile) -> dict[str, Any]:  # noqa: ANN001
        opts, stats, tl = self.opts, m["stats"], m["timeline"]
        window = tl.load_end - tl.load_start
        end = m["final"]
        processed_in_window = m["at_load_end"].processed
        bytes_per_alert = stats.bytes / stats.alerts if stats.alerts else 0.0
        throughput = processed_in_window / window if window > 0 else 0.0
        done_at = tl.drained or time.monotonic()
        busy = done_at - tl.load_start  # load + drain
        cpu = {}
        pipeline_cpu = 0.0
        for g in m["groups"]:
            used = m["cpu1"][g.name] - m["cpu0"][g.name]
            cpu[g.name] = {"cpu_s": round(used, 2), "cores": round(used / busy, 3) if busy else None,
                           "cpu_s_per_1000_alerts": round(used / end.processed * 1000, 4) if end.processed else None}
            if g.name != "loadgen":
                pipeline_cpu += used
        workers_cpu = sum(cpu[w.name]["cpu_s"] for w in self.workers)
        others = max(0.0, m["machine_cpu_s"] - sum(c["cpu_s"] for c in cpu.values()))
        cpu["other processes (not this run's)"] = {"cpu_s": round(others, 2), "cores": round(others / busy, 3) if busy
                                                   else None, "cpu_s_per_1000_alerts": None}
        stolen = m["stolen_cpu_s"]
        cpu[STOLEN] = {"cpu_s": round(stolen, 2), "cores": round(stolen / busy, 3) if busy else None,
                       "cpu_s_per_1000_alerts": None}
        sampler: Sampler = m["sampler"]
        samples = [s.as_dict() for s in sampler.samples]
        index_latency = _index_latency(end.index_latency, settings)
        result: dict[str, Any] = {
            "scenario": opts.scenario,
            "scenario_detail": stats.scenario,
            "mode": opts.mode(),
            "label": opts.label,
            "command": opts.command,
            "run_id": self.run_id,
            "started_at": self.started_at,
            "short": opts.short,
            "duration_s": round(window, 3),
            "drain_s": round(tl.drained - tl.load_end, 3) if tl.drained else None,
            "index_drain_s": round(tl.indexed - tl.load_end, 3) if tl.indexed else None,
            "throughput_alerts_s": round(throughput, 1),
            "throughput_mb_s": round(throughput * bytes_per_alert / 1e6, 3),
            "completion_alerts_s": round(end.processed / busy, 1) if busy else None,
            "produced": {**{k: v for k, v in stats.to_dict().items() if k not in ("scenario",)},
                         "bytes_per_alert": round(bytes_per_alert, 1)},
            "processed_alerts": end.processed,
            "processed_in_window": processed_in_window,
            "outcomes": {k: v for k, v in end.alerts.items() if v},
            "stored_alerts": end.stored,
            "postgres_rows_written": end.sink_rows.get("postgres", 0.0),
            "indexed_alerts": end.sink_rows.get("search", 0.0) if settings.search_enabled else None,
            "records_received": end.records,
            "dlq_records": end.dlq,
            "per_worker_processed": m["per_worker"],
            "stages": _stage_summary(end, busy, stats),
            "faust_changelog_stalls": {**m["faust_stalls"], "share_of_worker_time": round(
                m["faust_stalls"]["total_s"] / (busy * len(self.workers)), 4) if busy else None},
            **{f"latency_{k}": v for k, v in latency.items() if not isinstance(v, (list, dict))},
            "latency_histogram": latency.get("histogram"),
            "latency_timeseries": latency.get("timeseries"),
            "lag": _lag_summary(samples),
            "cpu": cpu,
            "cpu_pipeline_s_per_1000_alerts": round(pipeline_cpu / end.processed * 1000, 4) if end.processed else None,
            "cpu_workers_s_per_1000_alerts": round(workers_cpu / end.processed * 1000, 4) if end.processed else None,
            "alerts_per_cpu_s": round(end.processed / pipeline_cpu, 1) if pipeline_cpu else None,
            "alerts_per_worker_cpu_s": round(end.processed / workers_cpu, 1) if workers_cpu else None,
            "peak_rss_bytes": dict(sampler.peak_rss),
            "ceilings": ceilings,
            **index_latency,
            "target": _target(throughput, bytes_per_alert, latency.get("p99_s"), index_latency["searchable_p99_bound_s"]),
            "reference": {"keep_alerts_s_per_core": list(KEEP_ALERTS_S_PER_CORE),
                          "source": "/work/shared/KEEP.md: Keep 0.54.2 process_event, one process, 2-core machine"},
            "config": {"workers": opts.workers, "stateless_workers": opts.stateless_workers, "partitions": opts.partitions, "rate_alerts_s": opts.rate,
                       "volume": opts.volume, "rate_max": opts.rate_max,
                       "max_backlog": opts.max_backlog if opts.rate_max else None,
                       "load": opts.load, "load_overrides": opts.load_overrides,
                       "profile": {"mix": opts.mix, "cardinality": opts.cardinality, "full_dup": opts.full_dup,
                                   "partial_dup": opts.partial_dup, "flap": opts.flap,
                                   "alerts_per_webhook": opts.alerts_per_webhook,
                                   "alerts_per_webhook_min": opts.alerts_per_webhook_min,
                                   "mean_size_bytes": opts.mean_size_bytes, "size_per_alert": opts.size_per_alert,
                                   "lean": opts.lean, "size_sigma": opts.size_sigma, "seed": opts.seed},
                       "ceiling_records": opts.ceiling_records, "ceiling_repeats": opts.ceiling_repeats,
                       "warm_load_s": opts.warm_load_s,
                       "tenant": self.tenant,
                       "search_enabled": settings.search_enabled,
                       "worker_settings": {k: v for k, v in self.env.items() if k.startswith("ALERTSTREAM_")
                                           and k not in ("ALERTSTREAM_DATABASE_URL", "ALERTSTREAM_SEARCH_PASSWORD",
                                                         "ALERTSTREAM_SEARCH_API_KEY")}},
            "machine": _machine(),
            "profile": profile,
            "timeseries": samples,
            "phases_s": self.phases,
            "engines": self.engines,
            "pids": {g.name: g.pid for g in m["groups"] if g.name != "loadgen"},
            "logs": str(self.run_dir / "logs"),
            "sampler_errors": sampler.errors,
            "problems": self.problems,
        }
        result.update(_ratios(throughput, ceilings))
        result["ok"] = not self.problems
        return result


class _Poller:
    """Alerts processed so far, re-read every `interval_s` in a thread: the closed loop's feedback."""

    def __init__(self, counters: CounterReader, baseline: WorkerCounters, interval_s: float) -> None:
        self.counters, self.baseline, self.interval_s = counters, baseline, interval_s
        self.processed = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.processed = self.counters.read().minus(self.baseline).processed
            self._stop.wait(self.interval_s)


# ---------------------------------------------------------------------------------------------- helpers


def _headers(rec: GeneratedRecord) -> list[tuple[str, bytes]]:
    return [("provider", rec.provider.encode()), ("tenant", rec.tenant.encode()),
            ("produced_at_ms", str(time.time_ns() // 1_000_000).encode())]


def _settings_from(env: dict[str, str]):  # noqa: ANN202 - Settings
    """The settings the workers will see: read from `env` (their environment) instead of ours."""
    from config.settings import Settings

    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("ALERTSTREAM_")}
    try:
        os.environ.update({k: v for k, v in env.items() if k.startswith("ALERTSTREAM_")})
        return Settings()
    finally:
        for k in [k for k in os.environ if k.startswith("ALERTSTREAM_")]:
            del os.environ[k]
        os.environ.update(saved)


async def _latency_query(dsn: str, tenant: str, t0_wall: float) -> dict[str, Any]:
    """Produce-to-commit latency of every stored alert of the run: stored_at (transaction start of
    the batch that wrote it) - received_at (the input record's Kafka timestamp = produce time)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        lat = "extract(epoch FROM stored_at - received_at)::float8"
        row = await conn.fetchrow(
            f"""SELECT count(*) AS n, avg({lat}) AS mean, max({lat}) AS max, min({lat}) AS min,
                   percentile_cont(ARRAY[0.5, 0.95, 0.99, 0.999]) WITHIN GROUP (ORDER BY {lat}) AS pct
                FROM alert WHERE tenant = $1""", tenant)
        if not row["n"]:
            return {"rows": 0, "p50_s": None, "p95_s": None, "p99_s": None}
        # log-spaced histogram, 1 ms .. 100 s, computed in Postgres (no need to ship every row)
        hist = await conn.fetch(
            f"""SELECT width_bucket(log(greatest({lat}, 0.001)), -3.0, 2.0, 50) AS b, count(*) AS n
                FROM alert WHERE tenant = $1 GROUP BY 1 ORDER BY 1""", tenant)
        series = await conn.fetch(
            f"""SELECT floor(extract(epoch FROM received_at) - $2::float8)::int AS s, count(*) AS n,
                       percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY {lat}) AS pct
                FROM alert WHERE tenant = $1 GROUP BY 1 ORDER BY 1""", tenant, t0_wall)
    finally:
        await conn.close()
    pct = row["pct"]
    return {
        "rows": row["n"], "mean_s": round(row["mean"], 4), "min_s": round(row["min"], 4), "max_s": round(row["max"], 4),
        "p50_s": round(pct[0], 4), "p95_s": round(pct[1], 4), "p99_s": round(pct[2], 4), "p999_s": round(pct[3], 4),
        "histogram": {"log10_from": -3, "log10_to": 2, "buckets": 50, "counts": {int(r["b"]): r["n"] for r in hist}},
        "timeseries": [{"s": r["s"], "n": r["n"], "p50_s": round(r["pct"][0], 4), "p99_s": round(r["pct"][1], 4)}
                       for r in series],
    }


def _stage_summary(c: WorkerCounters, busy_s: float, produced: LoadStats) -> dict[str, Any]:
    """How the work was batched: alerts per record at each stage, and each sink's batches and flush times."""
    def div(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    sinks = {}
    for sink in sorted({k.split(":", 1)[1] for k in c.sinks}):
        n = c.sinks.get(f"flush_count:{sink}", 0.0)
        flush = c.sinks.get(f"flush_s_sum:{sink}", 0.0)
        sinks[sink] = {"batches": n, "mean_batch_stored_alerts": div(c.sinks.get(f"batch_sum:{sink}"), c.sinks.get(f"batch_count:{sink}")),
                       "mean_flush_s": div(flush, n), "flush_s_total": round(flush, 3),
                       "share_of_time_flushing": div(flush, busy_s)}
    packed = sum(v for k, v in c.records.items() if k.startswith("deduplicate"))  # every dedup agent
    return {"records_received": c.records, "alerts_per_input_record": div(produced.alerts, produced.records),
            "alerts_per_packed_record": div(c.processed, packed),
            "stored_alerts_per_indexed_record": div(c.stored, c.records.get("index")), "sinks": sinks,
            "normalize_resend_cache_hit_ratio": div(c.resend.get("hits"), sum(c.resend.values()))}


def _lag_summary(samples: list[dict[str, Any]]) -> dict[str, Any]:
    if not samples:
        return {}
    kafka: dict[str, float] = {}
    for s in samples:
        for g, v in s["kafka_lag"].items():
            if v is not None:
                kafka[g] = max(kafka.get(g, 0.0), v)
    return {"backlog_max_alerts": max(s["backlog"] for s in samples),
            "backlog_mean_alerts": round(sum(s["backlog"] for s in samples) / len(samples), 1),
            "index_lag_max_alerts": max((s["index_lag"] for s in samples if s["index_lag"] is not None), default=None),
            "kafka_lag_max_records": kafka,
            "kafka_lag_note": "exact on Apache Kafka; Tansu under-reports end offsets (first offset of the last "
                              "batch + 1), so there Kafka lag is a lower bound; the backlog is exact on both"}


def _ratios(throughput: float, ceilings: dict[str, Any]) -> dict[str, Any]:
    if not ceilings:
        return {"ceiling_ratio": None, "broker_ratio": None, "copy_ratio": None}
    broker, copy = ceilings["broker"]["alerts_s"], ceilings["copy"]["alerts_s"]
    return {
        "ceiling_ratio": round(throughput / min(broker, copy), 6),
        "broker_ratio": round(throughput / broker, 6),
        "copy_ratio": round(throughput / copy, 6),
        "ceiling_alerts_s": min(broker, copy),
        "ceiling_ratio_definition": (
            "pipeline alerts/s (processed by the dedup stage over the load window) / min(broker ceiling, "
            "COPY ceiling), both ceilings in alerts/s: broker = records/s produced and consumed back x alerts "
            "per record of the same records; COPY = alert rows/s of the same records' canonical rows"),
    }


def _target(throughput: float, bytes_per_alert: float, p99: float | None,
            searchable_p99: float | None = None) -> dict[str, Any]:
    alerts_s = TARGET_BYTES_S / bytes_per_alert if bytes_per_alert else None
    return {"mb_s": round(TARGET_BYTES_S / 1e6, 3), "alerts_s": round(alerts_s, 1) if alerts_s else None,
            "p99_s": TARGET_P99_S, "searchable_p99_s": TARGET_SEARCHABLE_P99_S,
            "throughput_met": bool(alerts_s and throughput >= alerts_s * 0.99),
            "p99_met": p99 is not None and p99 < TARGET_P99_S,
            "searchable_p99_met": searchable_p99 is not None and searchable_p99 < TARGET_SEARCHABLE_P99_S}


def _index_latency(buckets: dict[str, float], settings) -> dict[str, Any]:  # noqa: ANN001
    """Ingest → indexed, from the workers' histogram over the run (its bucket bounds limit the
    precision), and the bound on ingest → searchable: indexed, then visible at the index's next
    refresh, at most `search_refresh_interval` later."""
    if not settings.search_enabled:
        return {"index_latency_p50_s": None, "index_latency_p99_s": None, "searchable_p99_bound_s": None}
    p50, p99 = histogram_quantile(0.5, buckets), histogram_quantile(0.99, buckets)
    refresh_s = refresh_interval_s(settings.search_refresh_interval)
    return {"index_latency_p50_s": _round(p50), "index_latency_p99_s": _round(p99),
            "searchable_p99_bound_s": _round(p99 + refresh_s) if p99 is not None and refresh_s is not None else None}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def refresh_interval_s(interval: str) -> float | None:
    """A search `refresh_interval` in seconds ("500ms", "1s", "2m"); None for "-1" (never refreshed)."""
    if interval == "-1":
        return None
    for unit, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0)):
        if interval.endswith(unit):
            return float(interval[: -len(unit)]) * scale
    raise ValueError(f"not a refresh interval: {interval!r}")


def _machine() -> dict[str, Any]:
    return {"cpus": psutil.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "platform": platform.platform(),
            "load_avg_at_end": [round(x, 2) for x in os.getloadavg()]}


# ---------------------------------------------------------------------------------------------- baseline


def compare_baseline(result: dict[str, Any], baseline_path: Path) -> tuple[bool, str]:
    """(ok, message). Fails only on a large regression: ceiling_ratio < REGRESSION_FACTOR x the baseline's,
    for a run of the same shape (mode, workers, partitions, ceiling sizes: the COPY ceiling depends on the
    table's size). Anything else is reported, never failed."""
    if not baseline_path.exists():
        return True, f"no baseline at {baseline_path}: nothing to compare (write one with --update-baseline)"
    base = json.loads(baseline_path.read_text())
    ratio = result.get("ceiling_ratio")
    if ratio is None:
        return True, "no ceiling_ratio in this run (ceilings skipped): nothing to compare"
    shape = ("mode", "workers", "partitions", "ceiling_records", "ceiling_repeats", "load")
    mine = {"mode": result["mode"], **{k: result["config"].get(k) for k in shape[1:]}}
    mine["load"] = mine["load"] or "default"
    if any(base.get(k, "default" if k == "load" else None) != mine[k] for k in shape):
        return True, f"baseline is for {dict((k, base.get(k)) for k in shape)}, this run is {mine}: not compared"
    floor = base["ceiling_ratio"] * base.get("regression_factor", REGRESSION_FACTOR)
    text = (f"ceiling_ratio {ratio:.3f} vs baseline {base['ceiling_ratio']:.3f} "
            f"({ratio / base['ceiling_ratio']:.0%} of it; fails below {floor:.3f})")
    if ratio < floor:
        return False, ("REGRESSION: " + text + f". Throughput {result['throughput_alerts_s']:,.0f} alerts/s; "
                       f"baseline run {base.get('result', '?')}.")
    return True, "ok: " + text


def baseline_from(result: dict[str, Any], json_path: Path) -> dict[str, Any]:
    return {"ceiling_ratio": result["ceiling_ratio"], "regression_factor": REGRESSION_FACTOR,
            "mode": result["mode"], "workers": result["config"]["workers"],
            "partitions": result["config"]["partitions"], "ceiling_records": result["config"]["ceiling_records"],
            "ceiling_repeats": result["config"]["ceiling_repeats"], "load": result["config"].get("load") or "default",
            "throughput_alerts_s": result["throughput_alerts_s"],
            "broker_ratio": result["broker_ratio"], "copy_ratio": result["copy_ratio"],
            "command": result["command"], "result": str(json_path.relative_to(REPO)) if json_path.is_relative_to(REPO)
            else str(json_path), "run_id": result["run_id"]}


# ---------------------------------------------------------------------------------------------- entry points


def run_bench(opts: BenchOptions) -> tuple[dict[str, Any], dict[str, Path]]:
    """One benchmark run; returns the result and the files written."""
    from benchmarks.report import write_outputs

    bench = Bench(opts)
    result = bench.run()
    files = write_outputs(result, opts.out)
    return result, files


def add_arguments(p: argparse.ArgumentParser) -> None:
    target = p.add_argument_group("load target (one of; default: --short's --rate max, else --volume 600GB/day)")
    target.add_argument("--rate", help="alerts/s, or 'max': saturate the pipeline (closed loop, bounded backlog)")
    target.add_argument("--volume", help="raw payload volume, e.g. 600GB/day, 7MB/s")
    target.add_argument("--max-backlog", type=int, default=20_000, help="--rate max: alerts in flight at most")
    s = p.add_argument_group("scenario")
    s.add_argument("--scenario", choices=SCENARIOS, default="steady")
    s.add_argument("--duration", type=float, help=f"load seconds (default 60; --short {SHORT['duration_s']:g}; "
                                                  f"soak {SOAK_DEFAULT_S:g})")
    s.add_argument("--spike-factor", type=float, default=5.0)
    s.add_argument("--spike-at", type=float, help="spike start, s (default: a third into the run)")
    s.add_argument("--spike-duration", type=float, default=60.0)
    s.add_argument("--ramp-from", type=float, default=0.1)
    t = p.add_argument_group("topology")
    t.add_argument("--workers", type=int, default=1, help="worker processes (they share the consumer groups)")
    t.add_argument("--stateless-workers", type=int, default=0,
                   help="of --workers, this many run only the stateless stages (normalize, index) and the others "
                        "only the dedup stage (ALERTSTREAM_WORKER_ROLE); 0: every worker runs every stage")
    t.add_argument("--partitions", type=int, default=4, help="partitions of every topic")
    t.add_argument("--no-search", action="store_true", help="workers without the search indexer "
                                                            "(ALERTSTREAM_SEARCH_ENABLED=false)")
    g = p.add_argument_group("payloads (benchmarks.loadgen)", "a named profile (--load); each payload option given "
                                                               "replaces its value")
    add_payload_arguments(g)
    r = p.add_argument_group("run")
    r.add_argument("--short", action="store_true",
                   help=f"CI mode: --rate max for {SHORT['duration_s']:g}s, {SHORT['ceiling_records']:,}-record "
                        "ceilings; exit 3 if ceiling_ratio < 50%% of benchmarks/baseline.json")
    r.add_argument("--ceiling-records", type=int, help="records for each ceiling (default 30000; 0: skip)")
    r.add_argument("--ceiling-repeats", type=int, default=3, help="each ceiling is the best of this many attempts")
    r.add_argument("--out", type=Path, default=RESULTS_DIR, help="where results, summary and plots go")
    r.add_argument("--profile", action="store_true", help="py-spy each worker during the load (flamegraph SVG + "
                                                          "collapsed stacks next to the results)")
    r.add_argument("--profile-rate", type=int, default=100, help="py-spy samples/s")
    r.add_argument("--drain-timeout", type=float, help="seconds to wait for the backlog after the load (default "
                                                       "max(60, duration))")
    r.add_argument("--warmup-timeout", type=float, default=120.0)
    r.add_argument("--warm-load", type=float, default=0.0, metavar="SECONDS",
                   help="before the measured window, run the same load from the warm-up tenant for this long and "
                        "drain it (not measured): the servers' JITs and caches warm, as a long-running deployment's are")
    r.add_argument("--use-env-stack", action="store_true", help="use the servers ALERTSTREAM_* point at (not stopped)")
    r.add_argument("--keep-data", action="store_true", help="keep the stack's and workers' data dirs")
    r.add_argument("--baseline", type=Path, default=BASELINE)
    r.add_argument("--update-baseline", action="store_true", help="write this run's ratio as the new baseline")
    r.add_argument("--compression", choices=("lz4", "none", "zstd", "gzip", "snappy"), default="lz4",
                   help="the load generator's producer compression")
    r.add_argument("--label", default="", help="a note stored with the result (e.g. the commit under test)")
    r.add_argument("--no-progress", action="store_true")


def options_from_args(args: argparse.Namespace, command: str) -> BenchOptions:
    rate_max = False
    rate = None
    if args.rate is not None and args.volume is not None:
        raise ValueError("give --rate or --volume, not both")
    if args.rate is not None:
        if args.rate.strip().lower() == "max":
            rate_max = True
        else:
            rate = float(args.rate)
    volume = args.volume
    if args.rate is None and args.volume is None:
        if args.short:
            rate_max = True
        else:
            volume = "600GB/day"
    if volume:
        parse_volume(volume)  # validate
    duration = args.duration
    if duration is None:
        duration = SHORT["duration_s"] if args.short else SOAK_DEFAULT_S if args.scenario == "soak" else 60.0
    ceiling_records = args.ceiling_records
    if ceiling_records is None:
        ceiling_records = SHORT["ceiling_records"] if args.short else 30_000
    if args.workers < 1 or args.partitions < 1:
        raise ValueError("--workers and --partitions must be >= 1")
    if not 0 <= args.stateless_workers < args.workers:
        raise ValueError("--stateless-workers must leave at least one of --workers for the dedup stage")
    overrides = payload_overrides(args)
    load = load_profile(args.load, seed=args.seed, **overrides)  # the named profile, with the options given
    opts = BenchOptions(
        scenario=args.scenario, rate=rate, volume=volume, rate_max=rate_max, max_backlog=args.max_backlog,
        duration_s=duration, workers=args.workers, stateless_workers=args.stateless_workers, partitions=args.partitions,
        load=args.load, load_overrides=sorted(overrides), mix=dict(load.mix),
        cardinality=load.cardinality if isinstance(load.cardinality, int) else dict(load.cardinality),
        full_dup=load.full_dup_ratio, partial_dup=load.partial_dup_ratio, flap=load.flap_ratio,
        alerts_per_webhook=load.alerts_per_webhook, alerts_per_webhook_min=load.alerts_per_webhook_min,
        mean_size_bytes=load.mean_size_bytes, size_per_alert=load.size_per_alert, lean=load.lean,
        size_sigma=load.size_sigma, seed=args.seed, spike_factor=args.spike_factor, spike_at_s=args.spike_at,
        spike_s=args.spike_duration, ramp_from=args.ramp_from, ceiling_records=ceiling_records,
        ceiling_repeats=args.ceiling_repeats, short=args.short,
        out=args.out.resolve(), profile=args.profile, profile_rate=args.profile_rate,
        drain_timeout_s=args.drain_timeout, warmup_timeout_s=args.warmup_timeout, warm_load_s=args.warm_load, use_env_stack=args.use_env_stack,
        keep_data=args.keep_data, baseline=args.baseline, update_baseline=args.update_baseline,
        progress=not args.no_progress, compression=args.compression, search=not args.no_search, label=args.label, command=command)
    check_codec(opts.compression)
    opts.scenario_obj()  # validate the scenario and the profile before starting anything
    opts.profile_obj("validate")
    return opts


def check_codec(compression: str) -> None:
    """The worker consumes with aiokafka, which decompresses lz4, snappy and zstd only with cramjam
    installed (aiokafka[lz4]); without it the worker crashes on the first compressed batch. Fail fast."""
    from aiokafka import codec

    has = {"none": True, "gzip": codec.has_gzip(), "lz4": codec.has_lz4(), "zstd": codec.has_zstd(),
           "snappy": codec.has_snappy()}
    if not has[compression]:
        raise ValueError(f"the worker (aiokafka) cannot decompress {compression} records here: install "
                         f"aiokafka[{compression}] (cramjam), or pass --compression none|gzip")


def run_from_args(args: argparse.Namespace, command: str) -> int:
    """Run, print the summary, compare with the baseline; the exit code of `alertstream bench`.
    0 ok; 1 the run had problems (not drained, delivery errors); 2 bad options or the bench could not
    run; 3 a large regression against the baseline (--short)."""
    from rich.console import Console

    console = Console(stderr=True)
    try:
        opts = options_from_args(args, command)
    except ValueError as exc:
        console.print(f"[red]{exc}")
        return 2

    def _term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _term)
    try:
        result, files = run_bench(opts)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted: everything started was stopped")
        return 130
    except BenchError as exc:
        console.print(f"[red]bench failed: {exc}")
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    from benchmarks.report import console_summary

    console_summary(result, files, console)
    code = 0 if result["ok"] else 1
    for problem in result["problems"]:
        console.print(f"[red]problem: {problem}")
    if opts.short or opts.update_baseline:
        ok, message = compare_baseline(result, opts.baseline)
        console.print(("[green]" if ok else "[red]") + "baseline: " + message)
        if not ok:
            code = 3
    if opts.update_baseline:
        opts.baseline.write_text(json.dumps(baseline_from(result, files["json"]), indent=2) + "\n")
        console.print(f"baseline written: {opts.baseline}")
    return code


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.runner", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    return run_from_args(args, "python -m benchmarks.runner " + shlex.join(argv))


if __name__ == "__main__":
    sys.exit(main())
