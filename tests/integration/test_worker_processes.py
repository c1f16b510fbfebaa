"""`alertstream worker` with two processes: both take partitions, a killed process is restarted by
the supervisor, and SIGTERM stops them all cleanly. Every alert is stored exactly once."""

from __future__ import annotations

import json
import signal
import socket
import urllib.request

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.supervisor import worker_ports
from streams.topics import ensure_topics
from tests.conftest import WorkerProcess, free_port, isolated, wait_until
from tests.integration.test_pipeline_e2e import generic_alert, produce, sql

pytestmark = pytest.mark.integration
TENANT = "procs"
COUNT = 2000


def processed(port: int) -> float:
    """Alerts the process on `port` has deduplicated (0 while it is not serving)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "alertstream_alerts_total")


def status_total(port: int) -> float:
    """Alerts deduplicated, as the status page of the process on `port` reports them."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=5) as response:
            return sum(json.loads(response.read())["alerts_by_outcome"].values())
    except OSError:
        return -1.0


def two_free_ports() -> int:
    """A free port whose successor is free too (process i listens on base + i)."""
    while True:
        base = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", base + 1))
                return base
            except OSError:
                continue


def child_on_port(supervisor_pid: int, port: int) -> psutil.Process | None:
    for child in psutil.Process(supervisor_pid).children():
        try:
            if child.environ().get("ALERTSTREAM_WORKER_WEB_PORT") == str(port):
                return child
        except psutil.NoSuchProcess:
            continue
    return None


def stored(dsn: str) -> tuple[int, int]:
    row = sql(dsn, "SELECT count(*) AS n, count(DISTINCT id) AS ids FROM alert WHERE tenant = $1", TENANT)[0]
    return row["n"], row["ids"]


def test_two_processes_share_partitions_restart_and_stop(pipeline_settings, tmp_path) -> None:  # noqa: ANN001
    settings = isolated(pipeline_settings, "procs").model_copy(update={
        "worker_processes": 2, "worker_web_port": two_free_ports(), "data_dir": tmp_path / "w", "search_enabled": False,
        "table_recovery_consistency_check": False})
    ensure_topics(settings)
    dsn = settings.require_database_url()
    supervisor = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        ports = worker_ports(settings)
        assert len(ports) == 2
        half = [("keep", f"p{i}".encode(), generic_alert(300_000 + i)) for i in range(COUNT // 2)]
        produce(settings.require_kafka(), settings.topic_alerts, half, tenant=TENANT)
        wait_until(lambda: all(processed(p) > 0 for p in ports), timeout=180,
                   what=f"both processes took partitions; log:\n{supervisor.log_tail()}")
        wait_until(lambda: status_total(ports[0]) == sum(processed(p) for p in ports) >= COUNT // 2, timeout=60,
                   what="process 0's status page counts both processes' alerts")

        victim = child_on_port(supervisor.proc.pid, ports[1])
        victim.send_signal(signal.SIGKILL)
        wait_until(lambda: (c := child_on_port(supervisor.proc.pid, ports[1])) is not None and c.pid != victim.pid,
                   timeout=30, what="the supervisor restarted the killed process")

        rest = [("keep", f"p{i}".encode(), generic_alert(300_000 + i)) for i in range(COUNT // 2, COUNT)]
        produce(settings.require_kafka(), settings.topic_alerts, rest, tenant=TENANT)
        wait_until(lambda: stored(dsn)[1] >= COUNT, timeout=240, what=f"every alert stored; log:\n{supervisor.log_tail()}")
        assert stored(dsn) == (COUNT, COUNT), "each alert exactly once"

        children = psutil.Process(supervisor.proc.pid).children()
        supervisor.proc.send_signal(signal.SIGTERM)
        assert supervisor.proc.wait(timeout=90) == 0, supervisor.log_tail()
        assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children), "no orphan process"
    finally:
        supervisor.stop()
