"""`alertstream run`, as `make run` calls it: stack, migrations, worker, demo, summary, clean stop.

Both tests run the real command in its own session, as a terminal or a CI runner would: one with
its output to a pipe (no terminal: progress lines and a summary), one on a pseudo-terminal (the
live table) stopped by Ctrl-C, a SIGINT to its whole process group."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import psutil
import pytest

from config.settings import Settings
from streams.demo import count_alerts, demo_records
from tests.conftest import REPO, free_port, wait_until

pytestmark = pytest.mark.integration

COMMAND = [sys.executable, "-m", "cli.main", "run"]
COUNTS = re.compile(r"received (?P<received>\d+)/\d+, new (?P<new>\d+), changed (?P<changed>\d+), "
                    r"duplicates (?P<duplicates>\d+), written (?P<written>\d+) \(search (?P<indexed>\d+)\), "
                    r"DLQ (?P<dlq>\d+)/\d+; rows: (?P<alert_rows>\d+) alert, (?P<last_rows>\d+) last_alert")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][AB012]|\r")


def run_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment of a user's shell: no ALERTSTREAM_ settings but the stack engines the test
    session uses (tests/conftest.py), its own data dir and web port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALERTSTREAM_")}
    env.update({k: os.environ[k] for k in ("ALERTSTREAM_LOCAL_BROKER", "ALERTSTREAM_LOCAL_SEARCH") if k in os.environ})
    env.update({"ALERTSTREAM_DATA_DIR": str(data_dir), "ALERTSTREAM_WORKER_WEB_PORT": str(free_port()),
                "ALERTSTREAM_BROKER_SESSION_TIMEOUT_S": "10", "COLUMNS": "120"}, **extra)
    return env


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def session_members(sid: int) -> list[psutil.Process]:
    """Live processes of the session `sid` (the command's own session: everything it started there)."""
    members = []
    for p in psutil.process_iter(["pid", "status", "cmdline"]):
        try:
            if os.getsid(p.pid) == sid and p.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(p)
        except (ProcessLookupError, PermissionError):
            continue
    return members


def tree(pid: int) -> set[int]:
    try:
        return {pid} | {c.pid for c in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def postgres_rows(dsn: str) -> tuple[int, int]:
    import asyncpg

    async def count() -> tuple[int, int]:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval("SELECT count(*) FROM alert"), await conn.fetchval("SELECT count(*) FROM last_alert")
        finally:
            await conn.close()

    return asyncio.run(count())


def test_run_without_a_terminal_prints_progress_and_a_summary_that_matches_postgres(tmp_path: Path) -> None:
    """`alertstream run --exit-after-demo | tee run.log`: progress lines while the worker runs, then a
    summary whose counts are the rows in Postgres. The stack is the test's (the command uses the
    services it is pointed at and leaves them running), so Postgres can be read after the command."""
    from streams import localstack

    stack_dir = tmp_path / "stack"
    stack_env = localstack.up(Settings(kafka_bootstrap=None, database_url=None, search_url=None, data_dir=stack_dir),
                              state_dir=stack_dir)
    try:
        proc = subprocess.Popen([*COMMAND, "--exit-after-demo"], cwd=REPO, env={**run_env(tmp_path / "run"), **stack_env},
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        stderr: list[str] = []
        drain = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)
        drain.start()
        lines: list[tuple[str, bool]] = []  # (line, the worker was running when it arrived)
        started: set[int] = set()  # every process the command started in its session
        assert proc.stdout is not None
        for line in proc.stdout:
            started |= tree(proc.pid) - {proc.pid}
            worker = re.search(r"worker started \(pid (\d+)\)", line)
            lines.append((line.rstrip("\n"), bool(started) and any(alive(p) for p in started)))
            if worker:
                started.add(int(worker.group(1)))
        assert proc.wait(timeout=300) == 0, "\n".join(line for line, _ in lines[-30:]) + "".join(stderr[-30:])
        drain.join(10)
        output = "\n".join(line for line, _ in lines)

        alerts, invalid = count_alerts(demo_records())
        assert "demo processed" in output
        summary = [line for line, _ in lines if line.startswith("summary: ")]
        assert len(summary) == 1, output
        progress = [(line, running) for line, running in lines[:[l for l, _ in lines].index(summary[0])]
                    if line.startswith("progress ")]
        written = [(line, running) for line, running in progress if int(COUNTS.search(line)["written"]) > 0]
        assert written, f"no progress line with rows written before the summary:\n{output}"
        assert all(running for _, running in written), "progress lines arrived only after the worker had stopped"

        final = {k: int(v) for k, v in COUNTS.search(summary[0]).groupdict().items()}
        alert_rows, last_rows = postgres_rows(stack_env["ALERTSTREAM_DATABASE_URL"])
        assert final["new"] + final["changed"] + final["duplicates"] == alerts
        assert final["dlq"] == invalid
        assert final["written"] == final["alert_rows"] == alert_rows == final["new"] + final["changed"]
        assert final["last_rows"] == last_rows == final["new"]
        assert final["indexed"] == final["written"]

        # the worker (and its processes) stopped; the stack it was pointed at was not its to stop
        assert output.splitlines()[-1] == "stopped the worker", output
        assert all(s.alive for s in localstack.status(stack_dir)), "the command stopped a stack it did not start"
        leftovers = session_members(proc.pid) + [psutil.Process(p) for p in started if alive(p)]
        assert not leftovers, leftovers
    finally:
        localstack.down(stack_dir)


def test_ctrl_c_stops_everything_in_order_and_exits_0(tmp_path: Path) -> None:
    """`make run` in a terminal, then Ctrl-C: the terminal sends SIGINT to the whole foreground
    process group. The command stops the worker, then the stack it started; one line says so, no
    error, exit 0, and no process it started is left."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(COMMAND, cwd=REPO, env=run_env(tmp_path), stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave, start_new_session=True)
    os.close(slave)
    raw = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer closed the terminal
                return
            if not chunk:
                return
            raw.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()

    def text() -> str:
        return ANSI.sub("", raw.decode(errors="replace"))

    try:
        wait_until(lambda: "demo processed" in text() or proc.poll() is not None, 300, what="demo processed")
        assert proc.poll() is None, text()[-3000:]
        alerts, _ = count_alerts(demo_records())
        # the live table redraws a few times a second: its next frame shows the final counts
        try:
            wait_until(lambda: "live summary" in text() and f"{alerts} / {alerts}" in text(), 15, what="the live table")
        except TimeoutError:
            raise AssertionError(f"no live table on the terminal:\n{text()[-3000:]}") from None

        stack = json.loads((tmp_path / "demo" / "stack" / "stack.json").read_text())
        stack_pids = {rec["pid"] for rec in stack.values() if isinstance(rec, dict) and rec.get("pid")}
        ports = {rec["port"] for rec in stack.values() if isinstance(rec, dict) and rec.get("port")}
        worker_pid = int(re.search(r"worker started \(pid (\d+)\)", text()).group(1))
        worker_pids = tree(worker_pid)
        assert len(worker_pids) > 1, "the worker runs no Faust process"
        assert stack_pids and all(alive(p) for p in stack_pids | worker_pids)
        before = len(text())

        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        gone_at: dict[int, float] = {}
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            now = time.monotonic()
            gone_at.update({p: now for p in stack_pids | worker_pids if p not in gone_at and not alive(p)})
            time.sleep(0.05)
        assert proc.poll() is not None, "Ctrl-C did not stop the command within 120 s"
        reader.join(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)

    after = text()[before:]
    assert proc.returncode == 0, after
    assert "Ctrl-C: stopped the worker and the local stack" in after
    assert not re.search(r"exited with|error|Traceback", after, re.I), after
    # in order: every worker process gone before the first stack server stopped
    assert set(gone_at) == stack_pids | worker_pids
    assert max(gone_at[p] for p in worker_pids) <= min(gone_at[p] for p in stack_pids), gone_at
    # the worker was stopped by the command (SIGTERM), not by the terminal's SIGINT behind its back
    supervisor = [line for line in (tmp_path / "demo" / "worker.log").read_text().splitlines() if "signal " in line]
    assert any("signal 15: stopping" in line for line in supervisor), supervisor
    assert not any("signal 2:" in line for line in supervisor), supervisor

    # nothing left: not in the command's session, not the worker's process group, not a stack server
    leftovers = session_members(proc.pid) + [psutil.Process(p) for p in stack_pids | worker_pids if alive(p)]

    def listening(p: psutil.Process) -> bool:
        try:
            return any(c.laddr and c.laddr.port in ports for c in p.net_connections(kind="inet"))
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            return False

    leftovers += [p for p in psutil.process_iter(["pid", "status", "cmdline"])
                  if p.info["status"] != psutil.STATUS_ZOMBIE and (str(tmp_path) in " ".join(p.info["cmdline"] or []) or listening(p))]
    assert not leftovers, leftovers
