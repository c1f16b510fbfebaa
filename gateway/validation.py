"""Validation of webhook bodies off the event loop: a small pool of processes, fair between tenants.

The gateway validates a body by running the pipeline's own stage-one code (`normalize_record`), which
is CPU work proportional to the body (and, for hostile bodies, possibly worse). On the event loop it
would hold every other request, of every tenant, for as long as it runs. Here it runs in one of
`processes` worker processes, so the loop only copies bytes to a socket and back:

- **Fair**: jobs wait in one queue per tenant; a free process takes the next job round-robin over
  the tenants that wait. One tenant never holds more than `processes - 1` processes at once, so a
  tenant's huge body never delays another tenant's small one by more than a process switch.
- **Bounded**: a tenant may have `tenant_pending` jobs queued or running; beyond that its requests
  are pushed back (`PoolBusy`, 429/503 with Retry-After) instead of piling up bodies in memory. A job
  that waited `timeout_s` for a process without getting one is pushed back the same way.
- **Timed out**: a job still running after `timeout_s` has its process killed (and replaced), and
  the request is refused with `validation_timeout`. Each process also caps its address space
  (`MEMORY_LIMIT_BYTES`): a body that would need more gets `validation_memory` instead of taking
  the gateway's memory.

Processes are fresh interpreters (`python -m gateway.validation FD ...`, never a fork of the gateway,
whose librdkafka threads make forking unsafe), talk over a socket pair in plain data (never pickles),
get none of the `ALERTSTREAM_*` environment (no database password where hostile bodies are parsed), and
exit when the gateway goes away (end of file on their socket). One that dies before it is ready is
restarted with a backoff.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from multiprocessing.connection import Connection

import orjson

from schemas.normalizers import DEFAULT_LIMITS, NormalizeLimits

log = logging.getLogger(__name__)

MEMORY_LIMIT_BYTES = 1024 * 1024 * 1024  # address space of one validation process (the body, parsed, normalized)
DETAIL_MAX = 1000  # characters of a refusal's detail sent back (answers stay small)
VALIDATOR = "gateway.validation:validate_body"
# a body the pipeline parks in the DLQ on purpose, for an operator: accepted, so it is not lost
ACCEPTED_INVALID = {"sns_subscription_confirmation"}


@dataclass(frozen=True, slots=True)
class Outcome:
    """What validating one body found: accepted (`reason` None) with its alerts, or refused."""

    alerts: int = 0
    key: bytes = b""
    critical: bool = False
    reason: str | None = None
    detail: str = ""


class PoolBusy(Exception):
    """The tenant has `tenant_pending` validations queued or running already."""


class ValidatorFailed(Exception):
    """The validation process died under the job (not killed by its timeout): not the body's fault, as far as we know."""


_LIMITS = DEFAULT_LIMITS  # the worker's normalizer limits, set once in a validation process (`_child_main`)


def validate_body(body: bytes, headers: dict[str, bytes], default_tenant: str, max_payload_bytes: int) -> Outcome:
    """(alert count, record key, any critical) by the pipeline's own stage-one code, or the reason it
    would dead-letter the body. Runs in a validation process."""
    from core.errors import TENANT
    from core.records import RawRecord
    from pipeline.normalizer import CLASSIFIER, normalize_record

    tenant = headers.get(TENANT, b"").decode() or default_tenant
    record = RawRecord("gateway", 0, 0, int(time.time() * 1000), None, body, headers)
    try:
        alerts = normalize_record(record, default_tenant=default_tenant, max_payload_bytes=max_payload_bytes, limits=_LIMITS)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - classified as the pipeline classifies it: refused here what it would dead-letter
        verdict = CLASSIFIER.classify(exc)
        if verdict.reason in ACCEPTED_INVALID:
            return Outcome(0, tenant.encode())
        return Outcome(reason=verdict.reason, detail=verdict.detail[:DETAIL_MAX])
    # key: the first alert's identity, so repeats of one alert keep their order on the input topic
    key = f"{tenant}\x00{alerts[0].alert.fingerprint}".encode() if alerts else tenant.encode()
    return Outcome(len(alerts), key, any(item.alert.severity == "critical" for item in alerts))


def _child_main(conn: Connection, validator: str, default_tenant: str, max_payload_bytes: int, memory_limit: int,
                limits: dict | None = None) -> None:
    """A validation process: bodies in, Outcomes out, until the gateway closes the socket."""
    global _LIMITS
    _LIMITS = NormalizeLimits(**limits) if limits else DEFAULT_LIMITS  # refuse exactly what the worker refuses
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the gateway's to handle; it ends us by closing the socket
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if memory_limit:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        limit = memory_limit if hard == resource.RLIM_INFINITY else min(memory_limit, hard)
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    module, _, name = validator.partition(":")
    fn = getattr(importlib.import_module(module), name)
    fn(b'{"name": "warm-up"}', {"tenant": b"warm-up"}, default_tenant, max_payload_bytes)  # imports, caches
    conn.send_bytes(b'["ready"]')
    while True:
        try:
            data = conn.recv_bytes()
        except (EOFError, OSError):
            return
        body, headers = _unframe(data)
        try:
            outcome = fn(body, headers, default_tenant, max_payload_bytes)
        except MemoryError:
            outcome = Outcome(reason="validation_memory",
                              detail=f"validating this body needs more than {memory_limit // (1024 * 1024)} MiB")
        del body, data
        conn.send_bytes(orjson.dumps(["done", outcome.alerts, outcome.key.decode("latin-1"), outcome.critical,
                                      outcome.reason, outcome.detail]))


# Both ways the messages are plain data, never pickles: a process that parses hostile bodies must not be
# able to make the gateway run code by what it answers. To the process: 4 bytes of header length, the
# headers as JSON (values latin-1, so any bytes survive), the body. Back: a JSON list.
def _frame(body: bytes, headers: dict[str, bytes]) -> bytes:
    encoded = orjson.dumps({k: v.decode("latin-1") for k, v in headers.items()})
    return struct.pack(">I", len(encoded)) + encoded + body


def _unframe(data: bytes) -> tuple[bytes, dict[str, bytes]]:
    (size,) = struct.unpack_from(">I", data)
    headers = {k: v.encode("latin-1") for k, v in orjson.loads(data[4:4 + size]).items()}
    return data[4 + size:], headers


def _outcome(message: list) -> Outcome:
    _, alerts, key, critical, reason, detail = message
    return Outcome(int(alerts), str(key).encode("latin-1"), bool(critical), None if reason is None else str(reason),
                   str(detail))


def main(argv: list[str]) -> None:
    """`python -m gateway.validation FD CONFIG_JSON`: the process side of ValidationPool."""
    fd, config = int(argv[0]), json.loads(argv[1])
    _child_main(Connection(fd), config["validator"], config["default_tenant"], config["max_payload_bytes"],
                config["memory_limit"], config.get("limits"))


@dataclass(eq=False)
class _Job:
    tenant: str
    payload: bytes
    future: asyncio.Future
    queued: asyncio.TimerHandle | None = None  # gives up waiting for a process after `timeout_s`


@dataclass(eq=False)
class _Worker:
    process: subprocess.Popen
    conn: Connection
    ready: bool = False
    job: _Job | None = None
    deadline: asyncio.TimerHandle | None = None
    sending: asyncio.Future | None = None  # a big body being copied to the pipe by a thread
    gone: bool = False


@dataclass
class _Stats:
    timeouts: int = 0
    crashes: int = 0


class ValidationPool:
    def __init__(self, *, processes: int, timeout_s: float, tenant_pending: int, default_tenant: str,
                 max_payload_bytes: int, validator: str = VALIDATOR, memory_limit: int = MEMORY_LIMIT_BYTES,
                 limits: dict | None = None) -> None:
        if processes < 1:
            raise ValueError("at least one validation process")
        self.processes = processes
        self.timeout_s = timeout_s
        self.tenant_pending = tenant_pending
        # one tenant never holds every process: the last one is always left to the others
        self.tenant_running = max(1, processes - 1)
        self._config = json.dumps({"validator": validator, "default_tenant": default_tenant,
                                   "max_payload_bytes": max_payload_bytes, "memory_limit": memory_limit,
                                   "limits": limits})
        self._startup_failures = 0  # processes in a row that died before they were ready
        self._workers: list[_Worker] = []
        self._queues: OrderedDict[str, deque[_Job]] = OrderedDict()
        self._pending: dict[str, int] = {}
        self._running: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.stats = _Stats()

    @classmethod
    def from_settings(cls, settings) -> "ValidationPool":  # noqa: ANN001 - config.settings.Settings
        return cls(processes=settings.gateway_validation_processes,
                   timeout_s=settings.gateway_validation_timeout_s,
                   tenant_pending=settings.gateway_validation_tenant_pending,
                   default_tenant=settings.default_tenant, max_payload_bytes=settings.max_payload_bytes,
                   limits=settings.normalizer_limits.model_dump())

    # ------------------------------------------------------------ life cycle
    async def start(self, timeout_s: float = 60.0) -> None:
        """Start the processes and wait until each has imported the normalizer and answered."""
        self._loop = asyncio.get_running_loop()
        for _ in range(self.processes):
            self._spawn()
        deadline = time.monotonic() + timeout_s
        while sum(w.ready for w in self._workers) < self.processes:
            if time.monotonic() > deadline:
                raise RuntimeError("validation processes did not start")
            await asyncio.sleep(0.02)

    async def close(self) -> None:
        self._closed = True
        for worker in list(self._workers):
            self._retire(worker, kill=False)
        for queue in self._queues.values():
            for job in queue:
                if not job.future.done():
                    job.future.set_exception(ValidatorFailed("the gateway is stopping"))
        self._queues.clear()
        for worker in list(self._workers):
            try:
                await asyncio.to_thread(worker.process.wait, 5)
            except subprocess.TimeoutExpired:
                worker.process.kill()
        self._workers.clear()

    def _spawn(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen([sys.executable, "-m", "gateway.validation", str(theirs.fileno()), self._config],
                                       pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=_child_env())
        finally:
            theirs.close()
        conn = Connection(ours.detach())
        os.set_blocking(conn.fileno(), True)
        worker = _Worker(process, conn)
        self._workers.append(worker)
        assert self._loop is not None
        self._loop.add_reader(conn.fileno(), self._on_readable, worker)

    def _respawn(self, failed_before_ready: bool) -> None:
        if self._closed:
            return
        self._startup_failures = self._startup_failures + 1 if failed_before_ready else 0
        if not self._startup_failures:
            self._spawn()
            return
        delay = min(30.0, 0.5 * 2 ** (self._startup_failures - 1))
        assert self._loop is not None
        self._loop.call_later(delay, lambda: None if self._closed else self._spawn())

    def _retire(self, worker: _Worker, kill: bool, error: Exception | None = None) -> None:
        """Stop using a process: its running job (if any) fails with `error`."""
        if worker.gone:
            return
        worker.gone = True
        if worker.deadline is not None:
            worker.deadline.cancel()
        assert self._loop is not None
        self._loop.remove_reader(worker.conn.fileno())
        if kill and worker.process.poll() is None:
            worker.process.kill()
        self._loop.run_in_executor(None, _reap, worker.process)  # off the loop
        if worker.sending is not None and not worker.sending.done():
            # never close a pipe a thread still writes to (its descriptor could be reused meanwhile):
            # the write fails at once now that the process is gone, then the pipe is closed
            worker.sending.add_done_callback(lambda _: worker.conn.close())
        else:
            worker.conn.close()  # end of file: an idle process exits by itself
        job, worker.job = worker.job, None
        if job is not None:
            self._finish(job)
            if not job.future.done():
                job.future.set_exception(error or ValidatorFailed("the gateway is stopping"))
        if not self._closed:
            self._workers.remove(worker)

    # ------------------------------------------------------------ jobs
    async def validate(self, tenant: str, body: bytes, headers: dict[str, bytes]) -> Outcome:
        """The body's Outcome. Raises PoolBusy (over the tenant's pending bound, or no process free for
        `timeout_s`), TimeoutError (the process ran over `timeout_s` and was killed) or ValidatorFailed
        (the process died)."""
        if self._closed or self._loop is None:
            raise ValidatorFailed("the validation pool is not running")
        if self._pending.get(tenant, 0) >= self.tenant_pending:
            raise PoolBusy(f"{self.tenant_pending} validations of this tenant are queued or running")
        job = _Job(tenant, _frame(body, headers), self._loop.create_future())
        job.queued = self._loop.call_later(self.timeout_s, self._waited_too_long, job)
        self._pending[tenant] = self._pending.get(tenant, 0) + 1
        self._queues.setdefault(tenant, deque()).append(job)
        try:
            self._dispatch()
            return await job.future
        finally:
            left = self._pending[tenant] - 1
            if left:
                self._pending[tenant] = left
            else:
                del self._pending[tenant]
            if job.queued is not None:
                job.queued.cancel()
            if not job.future.done():  # the client went away: a queued job is dropped; a running one finishes unseen
                job.future.cancel()

    def _dispatch(self) -> None:
        idle = [w for w in self._workers if w.ready and w.job is None and not w.gone]
        while idle and self._queues:
            job = self._next_job()
            if job is None:
                return
            self._assign(idle.pop(), job)

    def _next_job(self) -> _Job | None:
        """Round-robin over the tenants that wait and may run one more now."""
        for tenant in list(self._queues):
            queue = self._queues[tenant]
            while queue and queue[0].future.done():  # cancelled while queued
                queue.popleft()
            if not queue:
                del self._queues[tenant]
                continue
            if self._running.get(tenant, 0) >= self.tenant_running:
                continue
            job = queue.popleft()
            if queue:
                self._queues.move_to_end(tenant)  # the next job of this tenant waits for the others' turn
            else:
                del self._queues[tenant]
            return job
        return None

    def _waited_too_long(self, job: _Job) -> None:
        """Still queued after `timeout_s`: the tenant's own backlog (or no process at all) is that long."""
        if not job.future.done():
            job.future.set_exception(PoolBusy(f"no validation process was free for {self.timeout_s:g} s"))
        # _next_job drops it from its queue (its future is done)

    def _assign(self, worker: _Worker, job: _Job) -> None:
        assert self._loop is not None
        if job.queued is not None:
            job.queued.cancel()
            job.queued = None
        worker.job = job
        self._running[job.tenant] = self._running.get(job.tenant, 0) + 1
        worker.deadline = self._loop.call_later(self.timeout_s, self._expire, worker, job)
        worker.sending = None
        if len(job.payload) <= 65536:
            self._send(worker, job)
        else:  # a big body fills the pipe several times over: copy it off the loop
            worker.sending = self._loop.run_in_executor(None, self._send, worker, job)

    def _send(self, worker: _Worker, job: _Job) -> None:
        try:
            worker.conn.send_bytes(job.payload)
        except (OSError, ValueError):  # the process died (or was killed) meanwhile: _on_readable sees it
            pass

    def _finish(self, job: _Job) -> None:
        left = self._running.get(job.tenant, 0) - 1
        if left > 0:
            self._running[job.tenant] = left
        else:
            self._running.pop(job.tenant, None)

    def _on_readable(self, worker: _Worker) -> None:
        try:
            message = orjson.loads(worker.conn.recv_bytes(maxlength=1 << 20))
        except (EOFError, OSError, orjson.JSONDecodeError):
            self._died(worker)
            return
        if message[0] == "ready":
            worker.ready = True
            self._startup_failures = 0
        else:
            job, worker.job = worker.job, None
            if worker.deadline is not None:
                worker.deadline.cancel()
                worker.deadline = None
            if job is not None:
                self._finish(job)
                if not job.future.done():
                    try:
                        job.future.set_result(_outcome(message))
                    except (ValueError, TypeError) as exc:
                        job.future.set_exception(ValidatorFailed(f"unreadable answer from a validation process: {exc}"))
        self._dispatch()

    def _died(self, worker: _Worker) -> None:
        job = worker.job
        self._retire(worker, kill=True, error=ValidatorFailed("the validation process died"))
        if self._closed:
            return
        self.stats.crashes += 1
        log.error("a validation process died%s%s; starting another", "" if worker.ready else " before it was ready",
                  f" validating a body of tenant {job.tenant!r}" if job else "")
        self._respawn(failed_before_ready=not worker.ready)

    def _expire(self, worker: _Worker, job: _Job) -> None:
        if worker.job is not job or worker.gone:
            return
        self.stats.timeouts += 1
        log.warning("validating a body of tenant %r took over %.1f s: its process is killed and replaced",
                    job.tenant, self.timeout_s)
        self._retire(worker, kill=True, error=TimeoutError(f"validation took over {self.timeout_s:g} s"))
        self._respawn(failed_before_ready=False)
        self._dispatch()


def _child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ALERTSTREAM_")}


def _reap(process: subprocess.Popen) -> None:
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


if __name__ == "__main__":
    # through the imported module, so that the validator's Outcome class is this module's, not __main__'s
    from gateway.validation import main as _main

    _main(sys.argv[1:])
