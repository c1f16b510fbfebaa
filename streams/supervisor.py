"""`alertstream worker`: a supervisor and one Faust worker process per CPU core.

Python runs one core per process, and one worker process is CPU-bound well before the broker or
Postgres are (docs/performance.md), so a worker machine runs one process per core. Each process is
an ordinary member of the consumer group with its own web port (`worker_web_port + i`) and its own
RocksDB directory (keyed by that port); Kafka's group protocol spreads the partitions over them,
exactly as it spreads them over machines. The supervisor only starts, restarts and stops them:

- SIGTERM/SIGINT is forwarded to every child, which flushes its batches and commits; the
  supervisor waits for them (then kills what is left after `worker_stop_timeout_s`).
- A child that dies, or exits because its stream stalled (streams/stall_watchdog.py), is restarted
  after a growing delay; a child that keeps dying (crash loop) stops the whole worker with a
  non-zero exit, so the orchestrator sees the failure instead of a worker quietly running at a
  fraction of its capacity.
- A child dies with its supervisor (PR_SET_PDEATHSIG): `kill -9` of the worker leaves no orphan
  consuming in the background.

In a container or pod, run one process (`ALERTSTREAM_WORKER_PROCESSES=1`) and scale with replicas;
the supervisor still restarts a stalled process faster than a pod restart would.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from config.settings import Settings

log = logging.getLogger("alertstream.supervisor")

CRASH_WINDOW_S = 300.0  # restarts counted over this window ...
CRASH_LIMIT = 5  # ... and more than this many in it is a crash loop


def die_with_parent() -> None:
    """In a child: be killed when the supervisor dies, however it dies (Linux; elsewhere a no-op)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the supervisor died before the call above: do not run unsupervised
        os._exit(1)


def young_gc_every(allocations: int) -> None:
    """In a child: collect the young generation every `allocations` allocations (0: Python's 700).

    A dedup batch allocates hundreds of thousands of objects (decoded alerts, rows); at 700 a
    collection ran every few alerts and each walked the objects still young, about two thirds of
    decoding a batch (docs/performance.md). The older generations keep their ratios."""
    if allocations:
        gc.set_threshold(allocations, *gc.get_threshold()[1:])


def resolve_worker_processes(settings: Settings) -> int:
    """Configured count, or one per CPU core; never more than the partitions to share out."""
    wanted = settings.worker_processes or (os.cpu_count() or 1)
    return max(1, min(wanted, settings.topic_partitions))


def worker_roles(settings: Settings, processes: int) -> list[str]:
    """The role (`worker_role`) of each process: the first `worker_stateless_processes` run the
    stateless stages, the rest the dedup stage; with none asked for, each process runs everything."""
    stateless = settings.worker_stateless_processes
    if not stateless:
        return [settings.worker_role] * processes
    if settings.worker_role != "all":
        raise ValueError("ALERTSTREAM_WORKER_STATELESS_PROCESSES splits the roles itself: leave ALERTSTREAM_WORKER_ROLE unset")
    if stateless >= processes:
        raise ValueError(f"ALERTSTREAM_WORKER_STATELESS_PROCESSES={stateless} leaves none of the {processes} "
                         "worker processes for the dedup stage")
    return ["stateless"] * stateless + ["stateful"] * (processes - stateless)


def worker_ports(settings: Settings) -> list[int]:
    """Web ports of the worker's processes (`/metrics` of each)."""
    return [settings.worker_web_port + i for i in range(resolve_worker_processes(settings))]


@dataclass
class Child:
    index: int
    port: int
    role: str
    proc: subprocess.Popen | None = None
    restarts: deque[float] = field(default_factory=deque)
    restart_at: float = 0.0


class Supervisor:
    def __init__(self, settings: Settings, processes: int) -> None:
        self.settings = settings
        self.children = [Child(i, settings.worker_web_port + i, role)
                         for i, role in enumerate(worker_roles(settings, processes))]
        self.stopping = False

    def _spawn(self, child: Child) -> None:
        env = dict(os.environ)
        # the child is a one-process worker on its own port (and so its own RocksDB directory)
        env["ALERTSTREAM_WORKER_PROCESSES"] = "1"
        env["ALERTSTREAM_WORKER_WEB_PORT"] = str(child.port)
        env["ALERTSTREAM_WORKER_ROLE"] = child.role
        env.pop("ALERTSTREAM_WORKER_STATELESS_PROCESSES", None)  # split here already: the child is one role
        # the status page of each process shows the whole worker: it asks its siblings (streams/status_page.py)
        env["ALERTSTREAM_SIBLING_WEB_PORTS"] = ",".join(str(c.port) for c in self.children if c is not child)
        if self.settings.group_instance_id:  # each process is its own static member
            env["ALERTSTREAM_GROUP_INSTANCE_ID"] = f"{self.settings.group_instance_id}-{child.index}"
        child.proc = subprocess.Popen([sys.executable, "-m", "cli.main", "worker", "--child"], env=env)
        log.info("worker process %d (%s stages) started (pid %d, web port %d)", child.index, child.role,
                 child.proc.pid, child.port)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            log.info("signal %d: stopping %d worker processes", signum, len(self.children))
        self.stopping = True
        for child in self.children:
            if child.proc and child.proc.poll() is None:
                child.proc.send_signal(signal.SIGTERM)

    def _reap(self, child: Child, now: float) -> bool:
        """Schedule the restart of a child that died; False when it is crash-looping."""
        code = child.proc.returncode if child.proc else None
        child.proc = None
        while child.restarts and now - child.restarts[0] > CRASH_WINDOW_S:
            child.restarts.popleft()
        child.restarts.append(now)
        if len(child.restarts) > CRASH_LIMIT:
            log.error("worker process %d died %d times in %.0f s (last exit %s): giving up",
                      child.index, len(child.restarts), CRASH_WINDOW_S, code)
            return False
        delay = min(30.0, 2.0 ** (len(child.restarts) - 1))
        child.restart_at = now + delay
        log.warning("worker process %d exited with %s; restarting in %.0f s", child.index, code, delay)
        return True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for child in self.children:
            self._spawn(child)
        failed = False
        while not self.stopping:
            now = time.monotonic()
            for child in self.children:
                if child.proc is not None and child.proc.poll() is not None and not self.stopping:
                    if not self._reap(child, now):
                        failed = True
                        self._on_signal(signal.SIGTERM, None)
                elif child.proc is None and not self.stopping and now >= child.restart_at:
                    self._spawn(child)
            time.sleep(0.2)
        return self._wait_children() or (1 if failed else 0)

    def _wait_children(self) -> int:
        deadline = time.monotonic() + self.settings.worker_stop_timeout_s
        worst = 0
        for child in self.children:
            if child.proc is None:
                continue
            try:
                code = child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker process %d did not stop in time: killing it", child.index)
                child.proc.kill()
                code = child.proc.wait()
            worst = worst or (code if code not in (0, -signal.SIGTERM) else 0)
        return worst
