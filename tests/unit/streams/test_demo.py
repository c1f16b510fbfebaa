"""The parts of `alertstream run` (streams/demo.py) that need no stack: its output without a
terminal, its stop signals, and stopping the worker's whole process group."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from streams import demo
from streams.demo import Counts, DemoStats, Display, StopSignals, stop_worker

EXPECTED = DemoStats(records=88, alerts=102, malformed=1)
METRICS = {"alertstream_records_received_total:normalize": 88.0, "alertstream_alerts_total:new": 36.0,
           "alertstream_alerts_total:changed": 5.0, "alertstream_alerts_total:duplicate": 61.0,
           "alertstream_sink_rows_written_total:postgres": 41.0, "alertstream_sink_rows_written_total:search": 41.0,
           "alertstream_dlq_records_total": 1.0}


def test_counts_line_and_processed() -> None:
    done = Counts.of(METRICS, (41, 36), (2, 2))
    assert done.line(EXPECTED) == ("received 88/88, new 36, changed 5, duplicates 61, written 41 (search 41), "
                                   "DLQ 1/1; rows: 41 alert, 36 last_alert")
    assert done.processed(EXPECTED)
    # deduplicated but not all in Postgres yet: not processed, the summary would not match the table
    assert not Counts.of({**METRICS, "alertstream_sink_rows_written_total:postgres": 40.0}, (40, 36), (2, 2)).processed(EXPECTED)
    assert not Counts.of(METRICS, None, (2, 2)).processed(EXPECTED)
    starting = Counts.of({}, (0, 0), (1, 2)).line(EXPECTED)
    assert starting.startswith("worker starting (1/2 processes up); received 0/88")


def test_without_a_terminal_progress_lines_every_few_seconds_and_a_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()  # not a terminal
    display = Display(out)
    assert not display.live_mode
    clock = [1000.0]
    monkeypatch.setattr(demo.time, "monotonic", lambda: clock[0])
    display.started = clock[0]
    zero, done = Counts.of({}, (0, 0), (2, 2)), Counts.of(METRICS, (41, 36), (2, 2))
    display.note("[green]demo processed.[/green] Where to look next:")
    display.update(zero, EXPECTED)  # the first line at once
    clock[0] += 1
    display.update(zero, EXPECTED)  # too soon
    clock[0] += demo.PROGRESS_EVERY_S
    display.update(zero, EXPECTED)  # still starting, unchanged: a line every few seconds all the same
    display.update(done, EXPECTED, force=True)
    clock[0] += demo.PROGRESS_EVERY_S
    display.update(done, EXPECTED, idle=True)  # processed and unchanged: quiet ...
    clock[0] += demo.IDLE_PROGRESS_EVERY_S
    display.update(done, EXPECTED, idle=True)  # ... but for a line a minute
    display.final(done, EXPECTED)
    lines = out.getvalue().splitlines()
    assert lines[0] == "demo processed. Where to look next:"  # markup stripped
    assert [line.split(":")[0] for line in lines[1:]] == ["progress    0s", "progress    4s", "progress    4s",
                                                          "progress   67s", "summary"]
    assert lines[-1] == f"summary: {done.line(EXPECTED)}"
    assert "\x1b" not in out.getvalue()


def test_a_stop_signal_is_a_request_and_a_second_one_hurries() -> None:
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the suite was started in the background
    with StopSignals() as stop:
        assert not stop.requested()
        os.kill(os.getpid(), signal.SIGINT)  # delivered to this (main) thread before kill returns
        assert stop.reason == "Ctrl-C" and not stop.hurry()
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.reason == "Ctrl-C" and stop.hurry()
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_a_stop_signal_interrupts_an_interruptible_step() -> None:
    with StopSignals() as stop:
        with pytest.raises(KeyboardInterrupt), stop.interruptible():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        assert stop.reason == "SIGTERM"
        with pytest.raises(KeyboardInterrupt), stop.interruptible():  # already requested: not even started
            pytest.fail("ran after the stop was requested")


CHILD_THAT_LINGERS = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # exits at once, leaving its child behind
child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


def test_stop_worker_leaves_nothing_of_its_process_group() -> None:
    worker = subprocess.Popen([sys.executable, "-c", CHILD_THAT_LINGERS], stdout=subprocess.PIPE, text=True, process_group=0)
    grandchild = int(worker.stdout.readline())
    assert not demo.worker_exited(worker)
    started = time.monotonic()
    assert stop_worker(worker, timeout=10) == 0
    assert time.monotonic() - started < 5
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            if psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the worker's child outlived stop_worker")


def test_stop_worker_does_not_wait_when_hurried() -> None:
    worker = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                               "print('ready', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True, process_group=0)
    assert worker.stdout.readline() == "ready\n"  # SIGTERM is ignored from here on
    started = time.monotonic()
    assert stop_worker(worker, timeout=30, hurry=lambda: time.monotonic() - started > 0.5) == -signal.SIGKILL
    assert time.monotonic() - started < 5


def test_worker_exit_code_is_read_without_reaping() -> None:
    worker = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"], process_group=0)
    deadline = time.monotonic() + 10
    while demo.worker_exit_code(worker) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert demo.worker_exit_code(worker) == 3
    assert psutil.Process(worker.pid).status() == psutil.STATUS_ZOMBIE  # not reaped: its group id is still ours
    assert stop_worker(worker, timeout=5) == 3
