"""Critical alerts travel on their own topic and agent: a backlog of low-severity alerts
does not delay them. Measures both latencies (produce → Postgres commit)."""

from __future__ import annotations

import copy
import threading

import orjson
import pytest

from streams.demo import example
from streams.topics import ensure_topics
from tests.conftest import WorkerProcess, wait_until
from tests.integration.streams.test_pipeline_e2e import produce, sql
from tests.integration.streams.test_worker_crash import crash_settings

pytestmark = pytest.mark.integration
BACKLOG = 20_000


def alert(i: int, severity: str) -> bytes:
    body = copy.deepcopy(example("keep_generic_alertdto.json"))
    body.update(name=f"{severity} {i}", fingerprint=f"{severity}-{i}", severity=severity)
    return orjson.dumps(body)


def latencies(dsn: str, severity: str) -> list[float]:
    rows = sql(dsn, """SELECT extract(epoch FROM stored_at - received_at) AS s FROM alert
                       WHERE tenant = 'prio' AND severity = $1 ORDER BY 1""", severity)
    return [float(r["s"]) for r in rows]


def test_critical_alerts_overtake_a_backlog(stack_env, tmp_path, record_property) -> None:  # noqa: ANN001
    settings = crash_settings(stack_env, tmp_path / "w", "prio")
    ensure_topics(settings)
    dsn = settings.require_database_url()
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        produce(settings.require_kafka(), settings.topic_alerts, [("keep", b"w", alert(-1, "warning"))], tenant="prio")
        wait_until(lambda: len(latencies(dsn, "warning")) == 1, timeout=120, what="worker up")
        backlog = [("keep", f"w{i}".encode(), alert(i, "warning")) for i in range(BACKLOG)]
        produce(settings.require_kafka(), settings.topic_alerts, backlog, tenant="prio")
        # critical alerts arrive while the backlog is being worked off, one every 100 ms
        def criticals() -> None:
            for i in range(20):
                produce(settings.require_kafka(), settings.topic_critical, [("keep", b"c", alert(i, "critical"))], tenant="prio")
                threading.Event().wait(0.1)
        sender = threading.Thread(target=criticals)
        sender.start()
        sender.join()
        wait_until(lambda: len(latencies(dsn, "critical")) == 20, timeout=120, what="critical alerts stored")
        critical = latencies(dsn, "critical")
        wait_until(lambda: len(latencies(dsn, "warning")) == BACKLOG + 1, timeout=300, what="backlog drained")
    finally:
        worker.stop()
    warning = latencies(dsn, "warning")
    critical_p50, backlog_p50 = critical[len(critical) // 2], warning[len(warning) // 2]
    record_property("critical_p50_s", critical_p50)
    record_property("backlog_p50_s", backlog_p50)
    print(f"\ncritical p50 {critical_p50:.2f}s max {critical[-1]:.2f}s; backlog p50 {backlog_p50:.2f}s max {warning[-1]:.2f}s")
    assert critical_p50 < backlog_p50 / 2, (critical, backlog_p50)
