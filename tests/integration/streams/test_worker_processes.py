"""`alertstream worker` with two processes: both take partitions, a killed process is restarted by
the supervisor, and SIGTERM stops them all cleanly. Every alert is stored exactly once."""

from __future__ import annotations

import json
import re
import signal
import socket
import urllib.request

import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from streams.supervisor import worker_ports
from streams.topics import ensure_topics
from tests.conftest import WorkerProcess, free_port, isolated, wait_until
from tests.integration.streams.test_pipeline_e2e import generic_alert, produce, sql

pytestmark = pytest.mark.integration
TENANT = "procs"
COUNT = 2000


def metric_sum(port: int, name: str, **labels: str) -> float:
    """The sum of a metric's samples (with these labels) at the process on `port`; 0 while it is not serving."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return 0.0
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def processed(port: int) -> float:
    """Alerts the process on `port` has deduplicated."""
    return metric_sum(port, "alertstream_alerts_total")


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


ASSIGNED = re.compile(r"\[(\d+)\] \[INFO\] Setting newly assigned partitions")
TABLE_ROW = re.compile(r"^\| (\S+)\s*\| \{(.*)\}\s*\|")
TABLE_END = re.compile(r"for group (\S+)\s*$")


def partitions(spec: str) -> set[int]:
    """aiokafka's partition set as logged: `{0-3}`, `{1, 3}`, `{0, 2-3}`."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in spec.split(","))):
        low, _, high = part.partition("-")
        out.update(range(int(low), int(high or low) + 1))
    return out


def owners(log_text: str, group: str, topic: str) -> dict[int, set[int]]:
    """Partitions of `topic` each process (by pid) was last assigned in `group`, from the worker log
    (the consumers' own record of it, the same on every broker engine)."""
    latest: dict[int, set[int]] = {}
    pid, rows = None, set()
    for line in log_text.splitlines():
        if (m := ASSIGNED.search(line)) is not None:
            pid, rows = int(m.group(1)), set()
        elif pid is not None:
            if (row := TABLE_ROW.match(line)) is not None and row.group(1) == topic:
                rows = partitions(row.group(2))
            if (end := TABLE_END.search(line)) is not None:
                if end.group(1) == group:
                    latest[pid] = rows
                pid = None
    return latest


def partitions_shared(supervisor: WorkerProcess, settings) -> bool:  # noqa: ANN001
    """Every running process owns partitions of the normalized topic, and together they own each
    partition once: the group has settled with all of them (not a first member alone with all)."""
    pids = [c.pid for c in psutil.Process(supervisor.proc.pid).children()]
    latest = owners(supervisor.log_path.read_text(errors="replace"), settings.app_id, settings.topic_normalized)
    owned = [latest.get(pid, set()) for pid in pids]
    everything = set(range(settings.topic_partitions))
    return len(pids) == settings.worker_processes and all(owned) and \
        sum(len(o) for o in owned) == len(everything) and set().union(*owned) == everything


def diagnose(settings, supervisor: WorkerProcess, ports: list[int]) -> str:  # noqa: ANN001
    """What a stalled start looks like from outside: each process's counters, the groups' committed
    offsets against the topics' ends, and every task's stack (SIGUSR1: mode's worker dumps them)."""
    import time

    from tests.integration.streams.test_worker_crash import group_report, worker_counters

    parts = [f"process {i} (port {p}):\n{worker_counters(p)}" for i, p in enumerate(ports)]
    try:
        parts.append(group_report(settings))
    except Exception as exc:  # noqa: BLE001 - a report, not the test
        parts.append(f"group report failed: {exc!r}")
    for child in psutil.Process(supervisor.proc.pid).children():
        child.send_signal(signal.SIGUSR1)
    time.sleep(3)
    return "\n".join(parts) + f"\nlog:\n{supervisor.log_tail(400)}"


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
        # The input only once both processes own partitions: a process that joins the group first
        # owns every partition until the next rebalance, and the normalize stage packs the first half
        # into one record per partition, which that process alone can deduplicate and commit before
        # its sibling joins (seen on Apache Kafka, whose group runs at once with its first member);
        # the sibling then has nothing to take.
        wait_until(lambda: partitions_shared(supervisor, settings), timeout=180,
                   what=f"both processes own partitions of the normalized topic; log:\n{supervisor.log_path}")
        half = [("keep", f"p{i}".encode(), generic_alert(300_000 + i)) for i in range(COUNT // 2)]
        produce(settings.require_kafka(), settings.topic_alerts, half, tenant=TENANT)
        try:
            wait_until(lambda: all(processed(p) > 0 for p in ports), timeout=180, what="both processes took partitions")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{diagnose(settings, supervisor, ports)}") from None
        wait_until(lambda: status_total(ports[0]) == sum(processed(p) for p in ports) >= COUNT // 2, timeout=60,
                   what="process 0's status page counts both processes' alerts")

        victim = child_on_port(supervisor.proc.pid, ports[1])
        victim.send_signal(signal.SIGKILL)
        wait_until(lambda: (c := child_on_port(supervisor.proc.pid, ports[1])) is not None and c.pid != victim.pid,
                   timeout=30, what="the supervisor restarted the killed process")

        rest = [("keep", f"p{i}".encode(), generic_alert(300_000 + i)) for i in range(COUNT // 2, COUNT)]
        produce(settings.require_kafka(), settings.topic_alerts, rest, tenant=TENANT)
        try:
            wait_until(lambda: stored(dsn)[1] >= COUNT, timeout=240, what="every alert stored")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}: {stored(dsn)}\n{diagnose(settings, supervisor, ports)}") from None
        assert stored(dsn) == (COUNT, COUNT), "each alert exactly once"

        children = psutil.Process(supervisor.proc.pid).children()
        supervisor.proc.send_signal(signal.SIGTERM)
        assert supervisor.proc.wait(timeout=90) == 0, supervisor.log_tail()
        assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in children), "no orphan process"
    finally:
        supervisor.stop()


def stage_records(port: int, stage: str) -> float:
    """Kafka records the process on `port` has taken in `stage`."""
    return metric_sum(port, "alertstream_records_received_total", stage=stage)


def indexed(settings, tenant: str) -> int:  # noqa: ANN001
    import asyncio

    from sinks.search import make_client

    async def count() -> int:
        client = make_client(settings.search_url)
        try:
            await client.indices.refresh(index=settings.search_index)
            return (await client.count(index=settings.search_index, query={"term": {"tenant": tenant}}))["count"]
        finally:
            await client.close()
    return asyncio.run(count())


def test_split_roles_one_stateless_and_one_dedup_process(pipeline_settings, tmp_path) -> None:  # noqa: ANN001
    """ALERTSTREAM_WORKER_STATELESS_PROCESSES=1 of 2: process 0 normalizes and indexes, process 1
    deduplicates; neither does the other's work, a killed stateless process is restarted, and every
    alert is stored and indexed exactly once."""
    tenant = "roles"
    settings = isolated(pipeline_settings, "roles").model_copy(update={
        "worker_processes": 2, "worker_stateless_processes": 1, "worker_web_port": two_free_ports(),
        "data_dir": tmp_path / "w", "table_recovery_consistency_check": False})
    ensure_topics(settings)
    dsn = settings.require_database_url()
    count = COUNT

    def rows() -> tuple[int, int]:
        row = sql(dsn, "SELECT count(*) AS n, count(DISTINCT id) AS ids FROM alert WHERE tenant = $1", tenant)[0]
        return row["n"], row["ids"]

    supervisor = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        stateless_port, stateful_port = worker_ports(settings)
        half = [("keep", f"r{i}".encode(), generic_alert(400_000 + i)) for i in range(count // 2)]
        produce(settings.require_kafka(), settings.topic_alerts, half, tenant=tenant)
        wait_until(lambda: rows()[1] >= count // 2, timeout=180, what=f"the first half stored; log {supervisor.log_path}")

        assert stage_records(stateless_port, "normalize") > 0 and stage_records(stateless_port, "index") > 0
        assert processed(stateless_port) == 0 and stage_records(stateless_port, "deduplicate") == 0
        assert processed(stateful_port) >= count // 2
        assert stage_records(stateful_port, "normalize") == 0 and stage_records(stateful_port, "index") == 0
        stateless_dir = settings.data_dir / f"worker-{stateless_port}"
        assert not any(p.name.endswith(".db") or "dedup" in p.name for p in stateless_dir.rglob("*")), \
            "a stateless process keeps no dedup table"

        victim = child_on_port(supervisor.proc.pid, stateless_port)
        victim.send_signal(signal.SIGKILL)
        wait_until(lambda: (c := child_on_port(supervisor.proc.pid, stateless_port)) is not None and c.pid != victim.pid,
                   timeout=30, what="the supervisor restarted the killed stateless process")
        assert child_on_port(supervisor.proc.pid, stateless_port).environ()["ALERTSTREAM_WORKER_ROLE"] == "stateless"

        rest = [("keep", f"r{i}".encode(), generic_alert(400_000 + i)) for i in range(count // 2, count)]
        produce(settings.require_kafka(), settings.topic_alerts, rest, tenant=tenant)
        wait_until(lambda: rows()[1] >= count, timeout=240, what=f"every alert stored; log {supervisor.log_path}")
        assert rows() == (count, count), "each alert exactly once"
        wait_until(lambda: indexed(settings, tenant) >= count, timeout=120, interval=2, what="every alert indexed")
        assert indexed(settings, tenant) == count

        supervisor.proc.send_signal(signal.SIGTERM)
        assert supervisor.proc.wait(timeout=90) == 0, supervisor.log_tail()
    finally:
        supervisor.stop()
