"""`make run`: the whole pipeline on the local stack, fed a short demo stream, with a live summary."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import IO

import orjson
from confluent_kafka import KafkaError, Producer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from config.settings import Settings
from streams.supervisor import worker_ports

# example file → provider header
EXAMPLES = {
    "keep_generic_alertdto.json": "keep",
    "prometheus_alertmanager_webhook.json": "prometheus",
    "grafana_alerting_webhook.json": "grafana",
    "datadog_webhook.json": "datadog",
    "pagerduty_webhook_v3.json": "pagerduty",
    "cloudwatch_sns_notification.json": "cloudwatch",
    "sentry_webhook_plugin.json": "sentry",
    "zabbix_webhook.json": "zabbix",
}
MALFORMED = b'{"name": "truncated webhook", "status": '


@dataclass
class DemoRecord:
    provider: str
    tenant: str
    key: bytes
    value: bytes


@dataclass
class DemoStats:
    records: int
    alerts: int
    malformed: int


def example(name: str) -> dict:
    return orjson.loads((resources.files("schemas") / "examples" / name).read_bytes())


def demo_records(identities: int = 20, repeats: int = 3) -> list[DemoRecord]:
    """Generic and Alertmanager alerts with many identities, re-sent (exact and changed), the
    other providers once each plus one exact re-send, and one malformed record."""
    records: list[DemoRecord] = []
    generic, webhook = example("keep_generic_alertdto.json"), example("prometheus_alertmanager_webhook.json")
    for round_ in range(repeats):
        for i in range(identities):
            alert = copy.deepcopy(generic)
            alert["fingerprint"] = f"demo-generic-{i}"
            alert["name"] = f"{generic['name']} #{i}"
            if round_ == repeats - 1 and i % 4 == 0:  # a changed alert: a partial duplicate
                alert["lag"] = alert["lag"] + 1000
            records.append(DemoRecord("keep", "default", f"keep/{i}".encode(), orjson.dumps(alert)))
        for i in range(identities // 4):
            hook = copy.deepcopy(webhook)
            for j, item in enumerate(hook["alerts"]):
                item["fingerprint"] = f"demo-am-{i}-{j}"
                item["labels"]["pod"] = f"demo-pod-{i}"
            records.append(DemoRecord("prometheus", "default", f"prometheus/{i}".encode(), orjson.dumps(hook)))
    for name, provider in EXAMPLES.items():
        if provider in ("keep", "prometheus"):
            continue
        raw = orjson.dumps(example(name))
        records += [DemoRecord(provider, "default", f"{provider}/0".encode(), raw)] * 2
    records.append(DemoRecord("keep", "default", b"keep/malformed", MALFORMED))
    return records


def count_alerts(records: list[DemoRecord]) -> tuple[int, int]:
    """How many alerts and how many invalid records the pipeline should see."""
    from schemas.normalizers import InvalidPayload, NormalizeContext, normalize

    ctx = NormalizeContext("default", "2025-01-01T00:00:00.000Z")
    alerts = invalid = 0
    for r in records:
        try:
            alerts += len(normalize(r.provider, r.value, ctx))
        except (InvalidPayload, ImportError):
            invalid += 1
    return alerts, invalid


def produce(settings: Settings, records: list[DemoRecord], stop: Callable[[], bool] = lambda: False) -> bool:
    """Produce and flush the records; False when `stop()` turned true first (what was still queued
    is purged, nothing is left sending in the background)."""
    producer = Producer({"bootstrap.servers": settings.require_kafka(), "linger.ms": 5, "acks": "all",
                         "enable.idempotence": settings.kafka_idempotent_producers})
    errors: list[str] = []

    def delivered(err, _msg) -> None:  # noqa: ANN001
        if err is not None and err.code() != KafkaError._PURGE_QUEUE and err.code() != KafkaError._PURGE_INFLIGHT:
            errors.append(str(err))

    for r in records:
        if stop():
            break
        producer.produce(settings.topic_alerts, key=r.key, value=r.value,
                         headers=[("provider", r.provider.encode()), ("tenant", r.tenant.encode())],
                         on_delivery=delivered)
        producer.poll(0)
    deadline = time.monotonic() + 30
    while len(producer) and not stop() and time.monotonic() < deadline:
        producer.flush(0.2)  # in slices: a stop signal is seen within 0.2 s
    if stop():
        producer.purge()
        producer.flush(1)
        return False
    if len(producer) or errors:
        raise RuntimeError(f"demo produce failed: {errors[:3] or [f'{len(producer)} records not delivered in 30 s']}")
    return True


def produce_demo(settings: Settings, stop: Callable[[], bool] = lambda: False) -> DemoStats:
    from streams.topics import ensure_topics

    ensure_topics(settings)
    records = demo_records()
    produce(settings, records, stop)
    alerts, invalid = count_alerts(records)
    return DemoStats(len(records), alerts, invalid)


def scrape_worker(ports: list[int]) -> tuple[dict[str, float], int]:
    """The counters of every worker process summed per (metric, outcome/sink/stage) for the
    summary, and how many of the processes answered."""
    totals: dict[str, float] = {}
    answered = 0
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                text = response.read().decode()
        except OSError:
            continue  # a process still starting (or restarting) adds nothing yet
        answered += 1
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue
                label = sample.labels.get("outcome") or sample.labels.get("sink") or sample.labels.get("stage") or ""
                key = f"{sample.name}:{label}" if label else sample.name
                totals[key] = totals.get(key, 0) + sample.value
    return totals, answered


async def table_counts(dsn: str) -> tuple[int, int]:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        return (await conn.fetchval("SELECT count(*) FROM alert"), await conn.fetchval("SELECT count(*) FROM last_alert"))
    finally:
        await conn.close()


@dataclass(frozen=True)
class Counts:
    """What the summary shows: the worker's counters (summed over its processes) and Postgres' rows."""

    received: int = 0
    new: int = 0
    changed: int = 0
    duplicates: int = 0
    written: int = 0  # to Postgres
    indexed: int = 0  # written to the search store
    dlq: int = 0
    rows: tuple[int, int] | None = None  # rows in alert / last_alert; None: Postgres did not answer
    processes: tuple[int, int] = (0, 0)  # worker processes answering /metrics, of how many

    @classmethod
    def of(cls, m: dict[str, float], rows: tuple[int, int] | None, processes: tuple[int, int] = (0, 0)) -> Counts:
        def get(key: str) -> int:
            return int(m.get(key, 0))

        return cls(received=get("alertstream_records_received_total:normalize"), new=get("alertstream_alerts_total:new"),
                   changed=get("alertstream_alerts_total:changed"), duplicates=get("alertstream_alerts_total:duplicate"),
                   written=get("alertstream_sink_rows_written_total:postgres"),
                   indexed=get("alertstream_sink_rows_written_total:search"), dlq=get("alertstream_dlq_records_total"),
                   rows=rows, processes=processes)

    @property
    def seen(self) -> int:
        return self.new + self.changed + self.duplicates

    @property
    def stored(self) -> int:
        return self.new + self.changed

    def processed(self, expected: DemoStats) -> bool:
        """Every demo alert deduplicated, the malformed record dead-lettered, every stored alert in
        Postgres and in the search store."""
        return (self.seen >= expected.alerts and self.dlq >= expected.malformed and self.written >= self.stored
                and self.indexed >= self.stored and self.rows is not None and self.rows[0] >= self.stored)

    def line(self, expected: DemoStats) -> str:
        """The counters as one plain line (the progress lines and the summary without a terminal)."""
        rows = f"{self.rows[0]} alert, {self.rows[1]} last_alert" if self.rows else "Postgres not answering"
        up, of = self.processes
        starting = f"worker starting ({up}/{of} processes up); " if up < of else ""
        return (f"{starting}received {self.received}/{expected.records}, new {self.new}, changed {self.changed}, "
                f"duplicates {self.duplicates}, written {self.written} (search {self.indexed}), "
                f"DLQ {self.dlq}/{expected.malformed}; rows: {rows}")


def summary_table(c: Counts, expected: DemoStats) -> Table:
    table = Table(title="alertstream — live summary (Ctrl-C stops everything)")
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("input records received", f"{c.received} / {expected.records}")
    table.add_row("alerts deduplicated", f"{c.seen} / {expected.alerts}")
    table.add_row("  new", f"{c.new}")
    table.add_row("  changed (partial duplicates, stored)", f"{c.changed}")
    table.add_row("  exact duplicates (not stored)", f"{c.duplicates}")
    table.add_row("written to Postgres", f"{c.written}")
    table.add_row("written to the search store", f"{c.indexed}")
    table.add_row("sent to the DLQ", f"{c.dlq} / {expected.malformed}")
    table.add_row("rows in alert / last_alert", f"{c.rows[0]} / {c.rows[1]}" if c.rows else "-")
    return table


# --------------------------------------------------------------------------- output

PROGRESS_EVERY_S = 3.0  # without a terminal: a progress line this often until the demo is processed ...
IDLE_PROGRESS_EVERY_S = 60.0  # ... then only when the counts move, or this often


class Display:
    """The run's output on stdout: a live rich table in a terminal; elsewhere (a pipe, `| tee`, a CI
    log, where a live table only renders once, at the end) plain progress lines and a summary line.
    Writes that fail (a terminal that went away) are dropped: the stop must go on."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self.stream = stream or sys.stdout
        self.live_mode = self.stream.isatty()
        self.console = Console(file=self.stream)
        self.live: Live | None = None
        self.started = time.monotonic()
        self._last_line: tuple[float, Counts] | None = None

    def note(self, markup: str) -> None:
        """A message (rich markup): above the live table, or a plain line."""
        if self.live_mode:  # printed above the live table while it runs
            self._safe(lambda: self.console.print(markup))
        else:
            self._plain(Text.from_markup(markup).plain)

    def update(self, counts: Counts, expected: DemoStats, *, force: bool = False, idle: bool = False) -> None:
        """The live table; or a progress line every few seconds (`idle`: once the demo is processed,
        only when the counts moved, or every minute)."""
        if self.live_mode:
            live, table = self.live, summary_table(counts, expected)
            if live is None:
                self.live = live = Live(table, console=self.console, refresh_per_second=2)
                self._safe(live.start)
            else:
                self._safe(lambda: live.update(table))
            return
        now = time.monotonic()
        if self._last_line is not None and not force:
            since, last = now - self._last_line[0], self._last_line[1]
            if since < (IDLE_PROGRESS_EVERY_S if idle and counts == last else PROGRESS_EVERY_S):
                return
        self._last_line = (now, counts)
        self._plain(f"progress {now - self.started:4.0f}s: {counts.line(expected)}")

    def final(self, counts: Counts, expected: DemoStats) -> None:
        """The last real counts, scraped while the worker still ran."""
        if self.live_mode:
            self.update(counts, expected)
            self.close()
        else:
            self._plain(f"summary: {counts.line(expected)}")

    def close(self) -> None:
        if self.live is not None:
            live, self.live = self.live, None
            self._safe(live.stop)

    def _plain(self, line: str) -> None:
        def write() -> None:
            self.stream.write(line + "\n")
            self.stream.flush()

        self._safe(write)

    @staticmethod
    def _safe(write: Callable[[], object]) -> None:
        try:
            write()
        except (OSError, ValueError):  # EIO/EPIPE from a terminal or pipe that went away; a closed file
            pass


# --------------------------------------------------------------------------- stop signals

STOP_SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP"}


class StopSignals:
    """Ctrl-C (SIGINT, which a terminal sends to the whole foreground process group), SIGTERM and
    SIGHUP ask the run to stop: the normal way out, exit 0. Outside `interruptible()` a signal only
    sets `reason`; the loops check it, so the stop always goes the same way (producer, worker,
    stack). A second signal hurries the stop along: the worker is killed instead of waited for."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self.count = 0
        self._raise = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]

    def requested(self) -> bool:
        return self.reason is not None

    def _handle(self, signum: int, _frame: object) -> None:
        self.count += 1
        self.reason = self.reason or STOP_SIGNALS.get(signal.Signals(signum), signal.Signals(signum).name)
        if self._raise:
            self._raise = False
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """A step that is safe to abort with KeyboardInterrupt (it cleans up after itself):
        a stop signal interrupts it at once instead of waiting for its end."""
        if self.reason:
            raise KeyboardInterrupt
        self._raise = True
        try:
            yield
        finally:
            self._raise = False

    def hurry(self) -> bool:
        """A second signal arrived: stop without waiting."""
        return self.count > 1


# --------------------------------------------------------------------------- the worker

# The worker runs in its own process group: a terminal's Ctrl-C reaches `run` only, which stops
# the worker itself, after the producer and before the stack. If `run` dies without stopping it
# (kill -9), the worker gets SIGTERM from the kernel (PR_SET_PDEATHSIG, Linux) and its processes
# die with it (streams/supervisor.py): nothing is left consuming in the background.
_WORKER_LAUNCHER = """\
import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
except (OSError, AttributeError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)  # `run` died before the line above
os.execv(sys.executable, [sys.executable, "-m", "cli.main", "worker"])
"""


def start_worker(log_file: IO[bytes]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _WORKER_LAUNCHER, str(os.getpid())], stdin=subprocess.DEVNULL,
                            stdout=log_file, stderr=log_file, env=os.environ.copy(), process_group=0)


def worker_exit_code(worker: subprocess.Popen) -> int | None:
    """The worker's exit code (negative: the signal that killed it), None while it runs. The process
    is not reaped: its process group stays addressable until `stop_worker` has killed what is left."""
    if worker.returncode is not None:
        return worker.returncode
    try:
        info = os.waitid(os.P_PID, worker.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped elsewhere
        return worker.poll()
    if info is None:
        return None
    return -info.si_status if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED) else info.si_status


def worker_exited(worker: subprocess.Popen) -> bool:
    return worker_exit_code(worker) is not None


def stop_worker(worker: subprocess.Popen, timeout: float, hurry: Callable[[], bool] = lambda: False) -> int:
    """SIGTERM (its processes flush and commit), wait up to `timeout` or until `hurry()`, then kill
    the whole process group: nothing the worker started outlives it. Returns its exit code."""
    if not worker_exited(worker):
        with contextlib.suppress(ProcessLookupError):
            worker.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while not worker_exited(worker) and time.monotonic() < deadline and not hurry():
            time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(worker.pid, signal.SIGKILL)  # the leader is not reaped yet: the group id is still ours
    return worker.wait()


# --------------------------------------------------------------------------- `alertstream run`


def run_local(settings: Settings, *, stay: bool) -> int:
    from sinks.migrate import migrate
    from streams import engines, localstack

    display = Display()
    # The demo gets its own stack and worker state, fresh each time: the local broker keeps
    # its data in memory only, so state left from an earlier run would no longer match it.
    demo_dir = Path(settings.data_dir).resolve() / "demo"
    stack_dir = demo_dir / "stack"
    worker: subprocess.Popen | None = None
    producing = starting = False
    code = 1
    with StopSignals() as stop:
        localstack.down(stack_dir)
        shutil.rmtree(demo_dir, ignore_errors=True)
        engines.collect_orphans()  # and the servers' data kept outside it (as root: streams/engines)
        try:
            with stop.interruptible():  # Ctrl-C while starting: `up` stops what it had started
                env = localstack.up(settings, state_dir=stack_dir)
                os.environ.update(env)
                os.environ["ALERTSTREAM_DATA_DIR"] = str(demo_dir)
                settings = Settings()
                asyncio.run(migrate(settings.require_database_url()))
            log_path = Path(settings.data_dir) / "worker.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as log_file:
                worker = start_worker(log_file)
            display.note(f"worker started (pid {worker.pid}), log: {log_path}")
            display.note(f"status page: http://127.0.0.1:{settings.worker_web_port}/status (lag, throughput, dedup, DLQ, sinks)")
            producing = True
            expected = produce_demo(settings, stop.requested)
            producing = stop.requested()  # stopped part-way: the producer is the first thing stopped
            code = 0 if stop.requested() else _watch(display, settings, worker, expected, stay, stop)
        except KeyboardInterrupt:  # a stop signal during `up` (which stops what it started) or the migrations
            code = 0
            starting = True
        finally:
            display.close()
            # In order, producer (above), worker, stack; from here on a signal only hurries the stop along.
            stopped = ["the producer"] if producing else []
            if worker is not None:
                stop_worker(worker, settings.worker_stop_timeout_s + 10, stop.hurry)
                stopped.append("the worker")
            if localstack.down(stack_dir) or starting:  # only what this run started: an external service is left alone
                stopped.append("the local stack")
            reason = f"{stop.reason}: " if stop.reason else ""
            display.note(f"{reason}stopped {_and(stopped)}" if stopped else f"{reason}nothing was left running")
    return code


def _and(items: list[str]) -> str:
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else "".join(items)


def _watch(display: Display, settings: Settings, worker: subprocess.Popen, expected: DemoStats, stay: bool,
           stop: StopSignals) -> int:
    """Until the demo is processed (or, with `stay`, until a stop signal): the counters, scraped
    from the running worker every second. The summary always shows the last real counts."""
    dsn = settings.require_database_url()
    ports = worker_ports(settings)
    done = False
    deadline = time.monotonic() + 180
    counts = Counts()
    while True:
        exit_code = worker_exit_code(worker)
        if exit_code is not None and not stop.requested():
            display.final(counts, expected)
            display.note(f"[red]the worker exited with {exit_code}; see {settings.data_dir}/worker.log")
            return 1
        counts = _counts(ports, dsn, counts)
        if stop.requested():  # scraped above while the worker still runs: the summary's counts are real
            display.final(counts, expected)
            return 0
        if not done and counts.processed(expected):
            done = True
            display.update(counts, expected, force=True)
            display.note(_where_next(settings))
            if not stay:
                display.final(counts, expected)
                return 0
        else:
            display.update(counts, expected, idle=done)
        if not done and time.monotonic() > deadline:
            display.final(counts, expected)
            display.note("[red]the demo was not fully processed within 180 s")
            return 1
        pause_until = time.monotonic() + 1
        while time.monotonic() < pause_until and not stop.requested():
            time.sleep(0.1)


def _counts(ports: list[int], dsn: str, previous: Counts) -> Counts:
    rows: tuple[int, int] | None
    try:
        rows = asyncio.run(table_counts(dsn))
    except Exception:  # noqa: BLE001 - Postgres busy or unreachable for a moment: the last rows stand
        rows = previous.rows
    metrics, answered = scrape_worker(ports)
    return Counts.of(metrics, rows, (answered, len(ports)))


def _where_next(settings: Settings) -> str:
    return (
        "[green]demo processed.[/green] Where to look next:\n"
        f"  status:    http://127.0.0.1:{settings.worker_web_port}/status (refreshes by itself; docs/metrics.md)\n"
        f"  metrics:   curl http://127.0.0.1:{settings.worker_web_port}/metrics | grep alertstream_\n"
        f"  postgres:  psql '{_masked(settings)}' -c 'select tenant, fingerprint, status, received_count from last_alert'\n"
        f"             (password in {settings.data_dir}/stack/postgres/password)\n"
        f"  search:    curl '{settings.search_url}/{settings.search_index}/_search?size=3'\n"
        f"  DLQ:       topic {settings.topic_dlq} (header dlq_reason)\n"
        f"  worker log: {settings.data_dir}/worker.log"
    )


def _masked(settings: Settings) -> str:
    url = settings.require_database_url()
    user_info, _, host = url.partition("@")
    return f"{user_info.rsplit(':', 1)[0]}:***@{host}" if host else url
