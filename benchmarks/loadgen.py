"""Load generator: provider payloads from `PayloadFactory` into Kafka at a paced rate.

    .venv/bin/python -m benchmarks.loadgen --bootstrap 127.0.0.1:9092 --rate 2000 --duration 10
    .venv/bin/python -m benchmarks.loadgen --bootstrap 127.0.0.1:9092 --volume 600GB/day --scenario spike
    .venv/bin/python -m benchmarks.loadgen --bootstrap 127.0.0.1:9092 --unpaced --load heavy --full-dup 0.5

Each record: value = the provider's webhook JSON, key = the alert identity
(one identity, one partition), headers `provider`, `tenant` and
`produced_at_ms` (epoch ms at produce time, for end-to-end latency).

Payloads: a named profile (`--load default|heavy`, `payload_factory.LOAD_PROFILES`);
any payload option given (`--mix`, `--full-dup`, ...) replaces that profile's value.

The target is alerts/s (`--rate`) or raw payload bytes/s (`--volume`), shaped
by a scenario (steady, spike, ramp, soak) and paced by a token bucket; a run
stops at its duration or its record count, whichever comes first. Delivery
errors are counted and reported, never dropped silently: `main` exits 1 when
any record was not delivered.

Loopback only, unless `--allow-remote`: a load test must not reach a shared
cluster by a typo.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Sequence

import orjson
from confluent_kafka import KafkaError, Message, Producer

from benchmarks.payload_factory import KINDS, LOAD_PROFILES, PROVIDERS, LoadProfile, PayloadFactory, load_profile

ScenarioName = Literal["steady", "spike", "ramp", "soak"]
SCENARIOS: tuple[str, ...] = ("steady", "spike", "ramp", "soak")
SOAK_DEFAULT_S = 3600.0
# Pacing granularity: a steady rate is produced in bursts of 20 ms of it. Waking for every record
# (every ~0.4 ms at 600 GB/day) cost the generator four times the CPU of producing the same records
# unpaced, taken from the pipeline it measures on the same cores (docs/performance.md).
_SLEEP_SLICE_S = 0.02
_CHUNK = 256  # records produced between clock checks when the bucket is full (or unpaced)
_ERROR_SAMPLES = 10


# ---------------------------------------------------------------------------------------------- parsing

_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "pb": 10**15,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "pib": 2**50}
_PER_UNITS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hr": 3600,
              "hour": 3600, "d": 86_400, "day": 86_400}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*([kmgtp]?i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> float:
    """'1.5KB' -> 1500.0 bytes. Decimal units (KB = 1000); KiB, MiB... are binary. Case-insensitive: all bytes."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"not a size: {text!r} (examples: 1500, 1.5KB, 2MiB)")
    return float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()]


def parse_volume(text: str) -> float:
    """'600GB/day' -> bytes per second (6.94e6). Also '7MB/s', '25GiB/h', '500KB/min'."""
    size, sep, per = text.partition("/")
    unit = per.strip().lower()
    unit = unit if unit in _PER_UNITS else unit.removesuffix("s")  # days, hours, secs
    if not sep or unit not in _PER_UNITS:
        raise ValueError(f"not a volume: {text!r} (examples: 600GB/day, 7MB/s, 25GiB/h)")
    return parse_size(size) / _PER_UNITS[unit]


def parse_mix(text: str) -> dict[str, float]:
    """'prometheus=3,grafana=1' -> {'prometheus': 3.0, 'grafana': 1.0}; a bare name has weight 1."""
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        mix[name.strip()] = float(weight) if weight else 1.0
    return mix


def parse_alerts_per_webhook(text: str) -> tuple[int, int]:
    """'5' -> (1, 5): 1..5 alerts per webhook, uniform (as always); 'M..N' -> (M, N); '10..10': exactly 10."""
    low, sep, high = text.strip().partition("..")
    try:
        lo, hi = (int(low), int(high)) if sep else (1, int(low))
    except ValueError:
        raise ValueError(f"not an alerts-per-webhook range: {text!r} (examples: 5 for 1..5, 10..10)") from None
    if not 1 <= lo <= hi:
        raise ValueError(f"alerts per webhook {text!r}: need 1 <= M <= N")
    return lo, hi


def parse_mean_size(text: str) -> tuple[int, bool]:
    """'1.5KB' or '1.5KB/record' -> (1500, False); '500B/alert' -> (500, True): the target is per alert."""
    size, sep, per = text.partition("/")
    per = per.strip().lower()
    if sep and per not in ("alert", "record"):
        raise ValueError(f"not a mean size: {text!r} (examples: 1.5KB, 1.5KB/record, 500B/alert)")
    return int(parse_size(size)), per == "alert"


# ---------------------------------------------------------------------------------------------- loopback guard


def bootstrap_hosts(bootstrap: str) -> list[str]:
    """Hosts of 'host:port,[::1]:port,PLAINTEXT://host:port'."""
    hosts = []
    for server in filter(None, (s.strip() for s in bootstrap.split(","))):
        server = server.split("://", 1)[-1]
        if server.startswith("["):
            hosts.append(server[1:server.index("]")])
        elif server.count(":") > 1:
            hosts.append(server)  # a bare IPv6 address without port
        else:
            hosts.append(server.rsplit(":", 1)[0] if ":" in server else server)
    return hosts


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback  # 127.0.0.0/8 and ::1
    except ValueError:
        return False  # any other name may resolve anywhere


def check_loopback(bootstrap: str, allow_remote: bool = False) -> None:
    hosts = bootstrap_hosts(bootstrap)
    if not hosts:
        raise ValueError("empty bootstrap")
    remote = [h for h in hosts if not is_loopback(h)]
    if remote and not allow_remote:
        raise ValueError(f"refusing non-loopback bootstrap host(s) {remote}: load tests target 127.0.0.1 "
                         "(pass --allow-remote / allow_remote=True to override)")


# ---------------------------------------------------------------------------------------------- scenario


@dataclass
class Scenario:
    """The target rate over time, and the run's bounds.

    Exactly one of `rate_alerts` (alerts/s) and `rate_bytes` (raw payload
    bytes/s) sets the base rate; neither means unpaced (as fast as possible).
    - steady/soak: the base rate throughout (soak is just long);
    - spike: `spike_factor` x the base rate for `spike_s`, starting at
      `spike_at_s` (default: a third into the run);
    - ramp: linear from `ramp_from` x the base rate to the base rate at the end.
    """

    name: ScenarioName = "steady"
    rate_alerts: float | None = None
    rate_bytes: float | None = None
    duration_s: float = 10.0
    max_records: int | None = None
    spike_factor: float = 5.0
    spike_at_s: float | None = None
    spike_s: float = 60.0
    ramp_from: float = 0.1

    def __post_init__(self) -> None:
        if self.name not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.name!r}; known: {', '.join(SCENARIOS)}")
        if self.rate_alerts is not None and self.rate_bytes is not None:
            raise ValueError("give a rate in alerts/s or in bytes/s, not both")
        if any(r is not None and r <= 0 for r in (self.rate_alerts, self.rate_bytes)):
            raise ValueError("rates must be > 0")
        if self.duration_s <= 0 or (self.max_records is not None and self.max_records < 1):
            raise ValueError("duration must be > 0 and max_records >= 1")

    @property
    def unit(self) -> Literal["alerts", "bytes", "unpaced"]:
        return "alerts" if self.rate_alerts is not None else "bytes" if self.rate_bytes is not None else "unpaced"

    def multiplier(self, t: float) -> float:
        if self.name == "spike":
            start = self.spike_at_s if self.spike_at_s is not None else self.duration_s / 3
            return self.spike_factor if start <= t < start + self.spike_s else 1.0
        if self.name == "ramp":
            return self.ramp_from + (1 - self.ramp_from) * min(1.0, t / self.duration_s)
        return 1.0

    def rate_at(self, t: float) -> float | None:
        base = self.rate_alerts if self.rate_alerts is not None else self.rate_bytes
        return None if base is None else base * self.multiplier(t)

    def describe(self) -> str:
        if self.unit == "unpaced":
            rate = "unpaced"
        elif self.unit == "alerts":
            rate = f"{self.rate_alerts:,.0f} alerts/s"
        else:
            rate = f"{self.rate_bytes / 1e6:,.2f} MB/s"  # type: ignore[operator]
        bound = f"{self.duration_s:g}s" + (f" / {self.max_records:,} records" if self.max_records else "")
        return f"{self.name} {rate} for {bound}"


# ---------------------------------------------------------------------------------------------- producer


@dataclass
class ProducerOptions:
    """librdkafka settings that matter for throughput; `extra` passes anything else through."""

    linger_ms: float = 5.0
    batch_num_messages: int = 10_000
    batch_bytes: int = 1_000_000
    compression: str = "lz4"  # lz4 | none | zstd | gzip | snappy
    acks: str = "all"
    queue_max_kbytes: int = 512 * 1024
    idempotence: bool = True  # Settings.kafka_idempotent_producers: off only on a broker that refuses it (Tansu)
    extra: dict[str, str] = field(default_factory=dict)

    def config(self, bootstrap: str) -> dict[str, Any]:
        # Tansu reports a partition's end offset as the first offset of its last batch + 1; one-record batches
        # would fix that at ~30x less throughput, which is for offset-exact tests only, never for load.
        if self.batch_num_messages < 2 or str(self.extra.get("batch.num.messages", "2")) == "1":
            raise ValueError("one-record batches (batch.num.messages=1) are for offset-exact tests, not load")
        return {
            "bootstrap.servers": bootstrap,
            "linger.ms": self.linger_ms,
            "batch.num.messages": self.batch_num_messages,
            "batch.size": self.batch_bytes,
            "compression.type": self.compression,
            "acks": self.acks,
            "queue.buffering.max.kbytes": self.queue_max_kbytes,
            "queue.buffering.max.messages": 1_000_000,
            # a retry after a lost ack writes no record twice: the pipeline's counts stay exact
            "enable.idempotence": self.idempotence,
            **self.extra,
        }


def _idempotent_by_default() -> bool:
    """What the environment's settings say (`stack up` turns idempotence off for Tansu)."""
    from config.settings import Settings

    return Settings().kafka_idempotent_producers


# ---------------------------------------------------------------------------------------------- stats


@dataclass
class LoadStats:
    scenario: str = ""
    records: int = 0  # handed to the producer
    alerts: int = 0
    bytes: int = 0  # raw payload bytes (values), before compression
    delivered: int = 0
    delivery_errors: int = 0  # failed delivery reports, plus records still queued when the final flush gave up
    error_samples: list[str] = field(default_factory=list)
    duration_s: float = 0.0  # first produce to the end of the final flush
    produce_s: float = 0.0  # first produce to the last produce
    per_kind: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    per_provider: dict[str, int] = field(default_factory=dict)

    @property
    def records_per_s(self) -> float:
        return self.records / self.duration_s if self.duration_s else 0.0

    @property
    def alerts_per_s(self) -> float:
        return self.alerts / self.duration_s if self.duration_s else 0.0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.duration_s if self.duration_s else 0.0

    @property
    def ok(self) -> bool:
        return self.delivery_errors == 0 and self.delivered == self.records

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "records_per_s": round(self.records_per_s, 1),
                "alerts_per_s": round(self.alerts_per_s, 1), "mb_per_s": round(self.mb_per_s, 3), "ok": self.ok}


class _Deliveries:
    """The delivery callback: counts successes, failures and keeps a few error messages."""

    __slots__ = ("stats",)

    def __init__(self, stats: LoadStats) -> None:
        self.stats = stats

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.stats.delivered += 1
            return
        self.stats.delivery_errors += 1
        if len(self.stats.error_samples) < _ERROR_SAMPLES:
            self.stats.error_samples.append(f"{msg.topic()}[{msg.partition()}]: {err}")


# ---------------------------------------------------------------------------------------------- the run


def run_load(bootstrap: str, topic: str, profile: LoadProfile, scenario: Scenario, *, progress: bool = True,
             producer_options: ProducerOptions | None = None, allow_remote: bool = False,
             flush_timeout_s: float = 60.0) -> LoadStats:
    """Produce `profile`'s records to `topic` as `scenario` says; return what was produced and delivered."""
    check_loopback(bootstrap, allow_remote)
    producer = Producer((producer_options or ProducerOptions()).config(bootstrap))
    stats = LoadStats(scenario=scenario.describe())
    run = LoadRun(producer, topic, PayloadFactory(profile), scenario, stats)
    if progress:
        with _ProgressView(scenario) as view:
            run.loop(view.update)
            view.update(stats, time.monotonic() - run.started, "flushing")
            run.finish(flush_timeout_s)
            view.update(stats, stats.duration_s, "done")
    else:
        run.loop(None)
        run.finish(flush_timeout_s)
    return stats


class LoadRun:
    """One paced run: the token bucket, the produce loop and the final flush."""

    def __init__(self, producer: Producer, topic: str, factory: PayloadFactory, scenario: Scenario,
                 stats: LoadStats) -> None:
        self.producer, self.topic, self.factory, self.scenario, self.stats = producer, topic, factory, scenario, stats
        self.on_delivery = _Deliveries(stats)
        self.started = time.monotonic()
        self._headers: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        self._ms, self._ms_bytes = 0, b"0"

    def loop(self, report: Any) -> None:
        sc, stats = self.scenario, self.stats
        limit = sc.max_records if sc.max_records is not None else float("inf")
        by_bytes = sc.unit == "bytes"
        self.started = last = next_report = time.monotonic()
        tokens = 0.0
        while stats.records < limit:
            now = time.monotonic()
            elapsed = now - self.started
            if elapsed >= sc.duration_s:
                break
            if report is not None and now >= next_report:
                report(stats, elapsed, "producing")
                next_report = now + 0.25
            rate = sc.rate_at(elapsed)
            if rate is None:
                self._produce_n(min(_CHUNK, limit - stats.records))
                self.producer.poll(0)
                continue
            # Token bucket: credit accrues with time, capped at 100 ms of rate so a stall is not followed by a
            # burst; a record may overdraw it, and that debt is paid by waiting, so the average rate is exact.
            tokens = min(tokens + rate * (now - last), max(rate * 0.1, 1.0))
            last = now
            if tokens <= 0:
                self.producer.poll(0)  # serve delivery callbacks while waiting
                time.sleep(_SLEEP_SLICE_S)
                continue
            n = 0
            while tokens > 0 and n < _CHUNK and stats.records < limit:
                tokens -= self._produce_one(by_bytes)
                n += 1
            self.producer.poll(0)
        stats.produce_s = time.monotonic() - self.started

    def _produce_n(self, n: float) -> None:
        for _ in range(int(n)):
            self._produce_one(False)

    def _produce_one(self, by_bytes: bool) -> int:
        """Produce the next record; return its cost in the scenario's unit (alerts or bytes)."""
        rec = self.factory.next()
        hdr = self._headers.get((rec.provider, rec.tenant))
        if hdr is None:
            hdr = self._headers[(rec.provider, rec.tenant)] = (rec.provider.encode(), rec.tenant.encode())
        ms = time.time_ns() // 1_000_000
        if ms != self._ms:
            self._ms, self._ms_bytes = ms, str(ms).encode()
        headers = [("provider", hdr[0]), ("tenant", hdr[1]), ("produced_at_ms", self._ms_bytes)]
        while True:
            try:
                self.producer.produce(self.topic, rec.value, rec.key, headers=headers, on_delivery=self.on_delivery)
                break
            except BufferError:
                self.producer.poll(0.05)  # the local queue is full: wait for deliveries, never drop
        stats = self.stats
        stats.records += 1
        stats.alerts += rec.alerts
        stats.bytes += len(rec.value)
        stats.per_provider[rec.provider] = stats.per_provider.get(rec.provider, 0) + 1
        return len(rec.value) if by_bytes else rec.alerts

    def finish(self, flush_timeout_s: float) -> None:
        remaining = self.producer.flush(flush_timeout_s)
        stats = self.stats
        stats.duration_s = time.monotonic() - self.started
        stats.per_kind = dict(self.factory.counts)
        if remaining:
            stats.delivery_errors += remaining
            stats.error_samples.append(f"{remaining} record(s) still queued after a {flush_timeout_s:g}s flush")


# ---------------------------------------------------------------------------------------------- display


class _ProgressView:
    """A rich progress bar on stderr: elapsed share of the run, records, alerts, MB and rates."""

    def __init__(self, scenario: Scenario) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.scenario = scenario
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(bar_width=16), TimeElapsedColumn(),
            TextColumn("{task.fields[line]}"),
            console=Console(stderr=True), refresh_per_second=4, transient=False)
        self.task = self.progress.add_task(scenario.name, total=1.0, line="")

    def __enter__(self) -> _ProgressView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, stats: LoadStats, elapsed: float, phase: str) -> None:
        sc = self.scenario
        done = elapsed / sc.duration_s
        if sc.max_records:
            done = max(done, stats.records / sc.max_records)
        rate = stats.alerts / elapsed if elapsed > 0 else 0.0
        mb_rate = stats.bytes / 1e6 / elapsed if elapsed > 0 else 0.0
        line = (f"{phase} {stats.records:,} rec {stats.alerts:,} alerts {stats.bytes / 1e6:,.1f} MB | "
                f"{rate:,.0f} alerts/s {mb_rate:,.2f} MB/s"
                + (f" [red]errors {stats.delivery_errors:,}" if stats.delivery_errors else ""))
        self.progress.update(self.task, completed=min(1.0, done), line=line)


def _print_summary(stats: LoadStats) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"loadgen: {stats.scenario}", show_header=False)
    rows = [
        ("records", f"{stats.records:,}"), ("alerts", f"{stats.alerts:,}"),
        ("bytes", f"{stats.bytes:,} ({stats.bytes / 1e6:,.1f} MB)"),
        ("duration", f"{stats.duration_s:.2f} s (producing {stats.produce_s:.2f} s)"),
        ("rate", f"{stats.records_per_s:,.0f} records/s, {stats.alerts_per_s:,.0f} alerts/s, "
                 f"{stats.mb_per_s:,.2f} MB/s"),
        ("delivered", f"{stats.delivered:,}"),
        ("delivery errors", f"{stats.delivery_errors:,}"),
        ("kinds", ", ".join(f"{k} {v:,}" for k, v in stats.per_kind.items())),
        ("providers", ", ".join(f"{k} {v:,}" for k, v in sorted(stats.per_provider.items()))),
    ]
    rows += [("error", sample) for sample in stats.error_samples]
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


# ---------------------------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--bootstrap", required=True, help="loopback broker(s), host:port[,host:port]")
    p.add_argument("--topic", default="alerts")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback bootstrap")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--rate", type=float, help="target alerts/s (a webhook of N alerts counts N)")
    target.add_argument("--volume", help="target raw payload volume, e.g. 600GB/day, 7MB/s")
    target.add_argument("--unpaced", action="store_true", help="no target: as fast as possible")

    s = p.add_argument_group("scenario")
    s.add_argument("--scenario", choices=SCENARIOS, default="steady")
    s.add_argument("--duration", type=float, help=f"seconds (default 10; soak {SOAK_DEFAULT_S:g})")
    s.add_argument("--max-records", type=int, help="stop after this many records")
    s.add_argument("--spike-factor", type=float, default=5.0)
    s.add_argument("--spike-at", type=float, help="spike start, s (default: a third into the run)")
    s.add_argument("--spike-duration", type=float, default=60.0)
    s.add_argument("--ramp-from", type=float, default=0.1, help="ramp start, as a fraction of the rate")

    g = p.add_argument_group("payloads", "a named profile (--load); each option given replaces its value")
    add_payload_arguments(g)
    g.add_argument("--tenants", default="default", help="comma-separated tenant ids")

    k = p.add_argument_group("producer")
    k.add_argument("--linger-ms", type=float, default=5.0)
    k.add_argument("--batch-messages", type=int, default=10_000, help="batch.num.messages (>= 2: see INFRA.md)")
    k.add_argument("--batch-bytes", default="1MB", help="batch.size")
    k.add_argument("--compression", choices=("lz4", "none", "zstd", "gzip", "snappy"), default="lz4")
    k.add_argument("--acks", choices=("all", "1", "0"), default="all")
    k.add_argument("-X", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                   help="any other librdkafka producer setting")

    o = p.add_argument_group("output")
    o.add_argument("--no-progress", action="store_true")
    o.add_argument("--json", action="store_true", help="print the stats as JSON on stdout")
    return p


def _describe_profile(name: str) -> str:
    v = LOAD_PROFILES[name]
    lo, hi = v.get("alerts_per_webhook_min", 1), v["alerts_per_webhook"]
    size = f"{v['mean_size_bytes']:,} B/{'alert' if v.get('size_per_alert') else 'record'}"
    return (f"{name}: {', '.join(f'{k}={w:g}' for k, w in v['mix'].items())}; {hi if lo == hi else f'{lo}..{hi}'} "
            f"alerts per multi-alert webhook; {size}{', lean' if v.get('lean') else ''}; "
            f"{v['full_dup_ratio'] * 100:.0f}%% exact re-sends")  # %%: argparse formats help with %


def add_payload_arguments(g: Any) -> None:
    """--load and the payload options (shared with benchmarks.runner). A payload option not given is absent from
    the namespace (argparse.SUPPRESS): the named profile's value stands; `payload_overrides` reads what was given."""
    g.add_argument("--load", choices=tuple(LOAD_PROFILES), default="default",
                   help="named payload profile; " + " | ".join(_describe_profile(n) for n in LOAD_PROFILES))
    unset = argparse.SUPPRESS
    g.add_argument("--mix", default=unset, help=f"provider=weight,...; providers: {', '.join(PROVIDERS)}")
    g.add_argument("--cardinality", type=int, default=unset, help="distinct alert identities per provider")
    g.add_argument("--full-dup", type=float, default=unset, help="ratio of exact re-sends")
    g.add_argument("--partial-dup", type=float, default=unset, help="ratio of re-sends with changed content")
    g.add_argument("--flap", type=float, default=unset, help="ratio of firing<->resolved flips")
    g.add_argument("--alerts-per-webhook", default=unset, metavar="N|M..N",
                   help="Alertmanager/Grafana alerts per webhook: N for 1..N (uniform), M..N, N..N for exactly N")
    g.add_argument("--mean-size", default=unset, metavar="SIZE[/alert]",
                   help="mean payload size target per record, e.g. 1.5KB; SIZE/alert: per alert, e.g. 500B/alert")
    g.add_argument("--lean", action=argparse.BooleanOptionalAction, default=unset,
                   help="lean Alertmanager and Keep payloads (the other providers have no lean form)")
    g.add_argument("--size-sigma", type=float, default=unset, help="log-normal shape of the size distribution")
    g.add_argument("--seed", type=int, default=1, help="the generator's seed: same seed, same records")


def payload_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """LoadProfile fields from the payload options given on the command line (none: the named profile as is)."""
    given = vars(args)
    out: dict[str, Any] = {}
    if "mix" in given:
        out["mix"] = parse_mix(args.mix)
    for option, name in (("cardinality", "cardinality"), ("full_dup", "full_dup_ratio"),
                         ("partial_dup", "partial_dup_ratio"), ("flap", "flap_ratio"), ("lean", "lean"),
                         ("size_sigma", "size_sigma")):
        if option in given:
            out[name] = given[option]
    if "alerts_per_webhook" in given:
        out["alerts_per_webhook_min"], out["alerts_per_webhook"] = parse_alerts_per_webhook(args.alerts_per_webhook)
    if "mean_size" in given:
        out["mean_size_bytes"], out["size_per_alert"] = parse_mean_size(args.mean_size)
    return out


def _from_args(args: argparse.Namespace) -> tuple[LoadProfile, Scenario, ProducerOptions]:
    profile = load_profile(args.load, seed=args.seed, tenants=[t.strip() for t in args.tenants.split(",") if t.strip()],
                           **payload_overrides(args))
    duration = args.duration if args.duration is not None else SOAK_DEFAULT_S if args.scenario == "soak" else 10.0
    scenario = Scenario(
        name=args.scenario, rate_alerts=args.rate, rate_bytes=parse_volume(args.volume) if args.volume else None,
        duration_s=duration, max_records=args.max_records, spike_factor=args.spike_factor,
        spike_at_s=args.spike_at, spike_s=args.spike_duration, ramp_from=args.ramp_from)
    if any("=" not in item for item in args.extra):
        raise ValueError(f"-X takes KEY=VALUE, got {[i for i in args.extra if '=' not in i]}")
    extra = dict(item.split("=", 1) for item in args.extra)
    options = ProducerOptions(linger_ms=args.linger_ms, batch_num_messages=args.batch_messages,
                              batch_bytes=int(parse_size(args.batch_bytes)), compression=args.compression,
                              acks=args.acks, idempotence=_idempotent_by_default(), extra=extra)
    return profile, scenario, options


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        profile, scenario, options = _from_args(args)
        check_loopback(args.bootstrap, args.allow_remote)
        options.config(args.bootstrap)  # validate before connecting
    except ValueError as exc:
        parser.error(str(exc))
    stats = run_load(args.bootstrap, args.topic, profile, scenario, progress=not args.no_progress,
                     producer_options=options, allow_remote=args.allow_remote)
    if args.json:
        sys.stdout.write(orjson.dumps(stats.to_dict(), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        _print_summary(stats)
    return 0 if stats.ok else 1


if __name__ == "__main__":
    sys.exit(main())
