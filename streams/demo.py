"""`make run`: the whole pipeline on the local stack, fed a short demo stream, with a live summary."""

from __future__ import annotations

import asyncio
import copy
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import orjson
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.live import Live
from rich.table import Table

from streams.settings import Settings
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


def produce(settings: Settings, records: list[DemoRecord]) -> None:
    producer = Producer({"bootstrap.servers": settings.require_kafka(), "linger.ms": 5, "acks": "all"})
    errors: list[str] = []

    def delivered(err, _msg) -> None:  # noqa: ANN001
        if err is not None:
            errors.append(str(err))

    for r in records:
        producer.produce(settings.topic_alerts, key=r.key, value=r.value,
                         headers=[("provider", r.provider.encode()), ("tenant", r.tenant.encode())],
                         on_delivery=delivered)
        producer.poll(0)
    if producer.flush(30) or errors:
        raise RuntimeError(f"demo produce failed: {errors[:3]}")


def produce_demo(settings: Settings) -> DemoStats:
    from streams.topics import ensure_topics

    ensure_topics(settings)
    records = demo_records()
    produce(settings, records)
    alerts, invalid = count_alerts(records)
    return DemoStats(len(records), alerts, invalid)


def scrape(ports: list[int]) -> dict[str, float]:
    """The counters of every worker process summed per (metric, outcome/sink) for the summary."""
    totals: dict[str, float] = {}
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                text = response.read().decode()
        except OSError:
            continue  # a process still starting (or restarting) adds nothing yet
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if not sample.name.endswith("_total"):
                    continue
                label = sample.labels.get("outcome") or sample.labels.get("sink") or sample.labels.get("stage") or ""
                key = f"{sample.name}:{label}" if label else sample.name
                totals[key] = totals.get(key, 0) + sample.value
    return totals


async def table_counts(dsn: str) -> tuple[int, int]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return (await conn.fetchval("SELECT count(*) FROM alert"), await conn.fetchval("SELECT count(*) FROM last_alert"))
    finally:
        await conn.close()


def summary_table(m: dict[str, float], rows: tuple[int, int], expected: DemoStats) -> Table:
    table = Table(title="alertstream — live summary (Ctrl-C stops everything)")
    table.add_column("what")
    table.add_column("count", justify="right")
    seen = sum(m.get(f"alertstream_alerts_total:{o}", 0) for o in ("new", "changed", "duplicate"))
    table.add_row("input records received", f"{m.get('alertstream_records_received_total:normalize', 0):.0f} / {expected.records}")
    table.add_row("alerts deduplicated", f"{seen:.0f} / {expected.alerts}")
    table.add_row("  new", f"{m.get('alertstream_alerts_total:new', 0):.0f}")
    table.add_row("  changed (partial duplicates, stored)", f"{m.get('alertstream_alerts_total:changed', 0):.0f}")
    table.add_row("  exact duplicates (not stored)", f"{m.get('alertstream_alerts_total:duplicate', 0):.0f}")
    table.add_row("written to Postgres", f"{m.get('alertstream_sink_rows_written_total:postgres', 0):.0f}")
    table.add_row("written to the search store", f"{m.get('alertstream_sink_rows_written_total:search', 0):.0f}")
    table.add_row("sent to the DLQ", f"{m.get('alertstream_dlq_records_total', 0):.0f} / {expected.malformed}")
    table.add_row("rows in alert / last_alert", f"{rows[0]} / {rows[1]}")
    return table


def run_local(settings: Settings, *, stay: bool) -> int:
    from sinks.migrate import migrate
    from streams import localstack

    console = Console(stderr=True)
    # The demo gets its own stack and worker state, fresh each time: the local broker keeps
    # its data in memory only, so state left from an earlier run would no longer match it.
    demo_dir = Path(settings.data_dir).resolve() / "demo"
    localstack.down(demo_dir / "stack")
    shutil.rmtree(demo_dir, ignore_errors=True)
    env = localstack.up(settings, state_dir=demo_dir / "stack")
    os.environ.update(env)
    os.environ["ALERTSTREAM_DATA_DIR"] = str(demo_dir)
    settings = Settings()
    asyncio.run(migrate(settings.require_database_url()))
    log_path = Path(settings.data_dir) / "worker.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        worker = subprocess.Popen([sys.executable, "-m", "streams.cli", "worker"], stdout=log_file, stderr=log_file, env=os.environ.copy())
    console.print(f"worker started (pid {worker.pid}), log: {log_path}")
    console.print(f"status page: http://127.0.0.1:{settings.worker_web_port}/status (lag, throughput, dedup, DLQ, sinks)")
    try:
        expected = produce_demo(settings)
        return _watch(console, settings, worker, expected, stay)
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(worker)
        localstack.down(demo_dir / "stack")
        console.print("stopped the worker and the local stack")


def _watch(console: Console, settings: Settings, worker: subprocess.Popen, expected: DemoStats, stay: bool) -> int:
    dsn = settings.require_database_url()
    done_at = None
    deadline = time.monotonic() + 180
    with Live(console=console, refresh_per_second=2) as live:
        while True:
            if worker.poll() is not None:
                console.print(f"[red]the worker exited with {worker.returncode}; see {settings.data_dir}/worker.log")
                return 1
            try:
                metrics = scrape(worker_ports(settings))
            except OSError:
                metrics = {}
            rows = asyncio.run(table_counts(dsn))
            live.update(summary_table(metrics, rows, expected))
            seen = sum(metrics.get(f"alertstream_alerts_total:{o}", 0) for o in ("new", "changed", "duplicate"))
            if done_at is None and seen >= expected.alerts and metrics.get("alertstream_dlq_records_total", 0) >= expected.malformed:
                done_at = time.monotonic()
                live.console.print(_where_next(settings))
                if not stay:
                    return 0
            if done_at is None and time.monotonic() > deadline:
                console.print("[red]the demo was not fully processed within 180 s")
                return 1
            time.sleep(1)


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


def _stop(worker: subprocess.Popen) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
