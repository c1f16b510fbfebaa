"""The real engines of the local stack: Apache Kafka and OpenSearch (or Elasticsearch), from Maven Central.

`streams/localstack.py` starts and stops the processes; this package finds a Java runtime and
Maven, fetches each engine once into the engines cache (later starts fetch nothing), and writes
each engine's configuration. docs/local-stack.md has the layout and docs/decisions.md the choices.

- Kafka: the jars named by `kafka.pom.xml`, copied by `mvn dependency:copy-dependencies`, run with
  `java -cp '<jars>/*' kafka.Kafka server.properties` as Kafka's own scripts do (engines/kafka.py).
- Search: the minimal OpenSearch distribution named by `opensearch.pom.xml`, unpacked and run by its
  own `bin/opensearch`, as an unprivileged system user when the stack runs as root (it refuses root).

The cache: `/var/cache/alertstream/engines` as root (readable by that system user, whatever the mode
of the checkout or of root's home), else `$XDG_CACHE_HOME/alertstream/engines` (~/.cache/...).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
JAVA_MIN = 17  # Kafka 4 brokers and OpenSearch 2.19 both need 17+


class StackError(RuntimeError):
    """A server of the local stack could not be started or stopped."""


class EngineUnavailable(StackError):
    """A real engine cannot run here (no Java 17+, no Maven for a first fetch, the fetch failed):
    `auto` falls back to the stand-in, an explicit choice stops with this message."""


def say(message: str) -> None:
    # Progress goes to stderr: stdout of `stack up` is eval'ed by the shell.
    # One write per line: the services start in parallel threads.
    sys.stderr.write(f"stack: {message}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------- Java and Maven


@dataclass(frozen=True)
class Java:
    home: Path
    version: int  # the feature release: 17, 21, 25

    @property
    def bin(self) -> Path:
        return self.home / "bin" / "java"


def _java_homes() -> list[Path]:
    """JAVA_HOME first, then the `java` on PATH, then every JDK under /usr/lib/jvm."""
    homes: list[Path] = []
    if os.environ.get("JAVA_HOME"):
        homes.append(Path(os.environ["JAVA_HOME"]))
    on_path = shutil.which("java")
    if on_path:
        homes.append(Path(on_path).resolve().parent.parent)
    jvm = Path("/usr/lib/jvm")
    if jvm.is_dir():
        homes.extend(sorted(p.resolve() for p in jvm.iterdir() if (p / "bin" / "java").exists()))
    unique: list[Path] = []
    for home in homes:
        if home not in unique:
            unique.append(home)
    return unique


@functools.lru_cache(maxsize=None)
def _java_version(java_bin: Path) -> int | None:
    try:
        out = subprocess.run([str(java_bin), "-XshowSettings:properties", "-version"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"java\.specification\.version = (\S+)", out.stderr + out.stdout)
    if not match:
        return None
    spec = match.group(1)
    return int(spec.split(".")[1]) if spec.startswith("1.") else int(spec.split(".")[0])


def find_java(min_version: int = JAVA_MIN, max_version: int | None = None) -> Java | None:
    """The first Java runtime (in `_java_homes` order) whose version is in range, or None."""
    for home in _java_homes():
        version = _java_version(home / "bin" / "java")
        if version is None or version < min_version or (max_version is not None and version > max_version):
            continue
        return Java(home, version)
    return None


def find_maven() -> str | None:
    return shutil.which("mvn")


# --------------------------------------------------------------------------- the engines cache


def cache_root() -> Path:
    if os.geteuid() == 0:
        # Not under /root (mode 700): the search server's system user must read its binaries.
        return Path("/var/cache/alertstream/engines")
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "alertstream" / "engines"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    _traversable(path.parent)
    with open(path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _traversable(cache_dir: Path) -> None:
    """The cache dirs the stack made itself (under /var/cache/alertstream as root): 0755, so that
    a server's system user reaches its binaries. Directories the stack did not make are left alone."""
    top = Path("/var/cache/alertstream")
    if os.geteuid() != 0 or not (cache_dir == top or top in cache_dir.parents):
        return
    for path in (cache_dir, *cache_dir.parents):
        if path == Path("/var/cache"):
            break
        path.chmod(0o755)


def _stamp(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()[:16]


def is_fetched(pom: Path, dest: Path) -> bool:
    marker = dest / ".complete"
    return marker.exists() and marker.read_text().strip() == _stamp(pom)


def fetch(pom: Path, dest: Path, label: str, unpack: Callable[[Path], None] | None = None) -> Path:
    """The artifacts of `pom` in `dest/lib` (and whatever `unpack` makes of them), fetched once.

    `mvn dependency:copy-dependencies` resolves through the user's own Maven setup (~/.m2 and its
    settings.xml: mirrors, proxies), so only Maven Central or its mirror is contacted. The result
    is built in a temporary sibling and renamed into place, so an interrupted fetch leaves no
    half-filled cache behind; `.complete` holds a hash of the pom, so editing the pom refetches.
    """
    if is_fetched(pom, dest):
        return dest
    # One fetch at a time, across processes too: Maven's local repository (~/.m2) is not safe for
    # two concurrent writers, and two `stack up` must not both fill the same cache entry.
    with _locked(dest.parent / ".fetch.lock"):
        if is_fetched(pom, dest):
            return dest
        mvn = find_maven()
        if mvn is None:
            raise EngineUnavailable(f"{label} is not in {dest} yet and Maven (mvn) is not installed to fetch it")
        tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "lib").mkdir(parents=True)
        _traversable(dest.parent)
        say(f"fetching {label} from Maven Central into {dest} (first start only)")
        started = time.monotonic()
        _run_maven(mvn, pom, tmp / "lib", label)
        if unpack is not None:
            unpack(tmp)
        (tmp / ".complete").write_text(_stamp(pom) + "\n")
        for path in (tmp, *tmp.rglob("*")):  # readable by the search server's system user
            if path.is_dir():
                path.chmod(path.stat().st_mode | 0o755)
            elif not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o444)
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
        size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
        say(f"{label}: {size / 1e6:.0f} MB in {time.monotonic() - started:.0f} s")
    return dest


def _run_maven(mvn: str, pom: Path, out_dir: Path, label: str) -> None:
    cmd = [mvn, "-B", "-Dstyle.color=never", "-f", str(pom), "dependency:copy-dependencies",
           f"-DoutputDirectory={out_dir}", "-DincludeScope=runtime"]
    tail: list[str] = []
    # Maven names each file as it arrives (its own plugins too, on a fresh ~/.m2): summed up into
    # a progress line every few seconds, with the file that just came.
    downloaded = re.compile(r"Downloaded from \S+: \S+/([^/\s]+\.(?:jar|zip)) \(([\d.]+) ([kMG]?B)")
    files, size, shown = 0, 0.0, time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, cwd=pom.parent)
    assert proc.stdout is not None
    for line in proc.stdout:
        tail = (tail + [line.rstrip()])[-25:]
        match = downloaded.search(line)
        if not match:
            continue
        files += 1
        size += float(match.group(2)) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[match.group(3)]
        if time.monotonic() - shown >= 2 or match.group(3) in ("MB", "GB") and float(match.group(2)) >= 20:
            say(f"  {label}: {files} files, {size / 1e6:.0f} MB so far ({match.group(1)})")
            shown = time.monotonic()
    if proc.wait() != 0:
        detail = "\n".join(tail)
        raise EngineUnavailable(f"fetching {label} failed (mvn exit {proc.returncode}):\n{detail}")


def unzip_single(lib_dir: Path, home: Path) -> None:
    """Unpack the one zip in `lib_dir` into `home`, without its top directory, keeping file modes."""
    zips = sorted(lib_dir.glob("*.zip"))
    if len(zips) != 1:
        raise StackError(f"expected one zip in {lib_dir}, found {[z.name for z in zips]}")
    with zipfile.ZipFile(zips[0]) as archive:
        for info in archive.infolist():
            parts = Path(info.filename).parts[1:]  # drop `opensearch-2.19.6/`
            if not parts or ".." in parts:
                continue
            target = home.joinpath(*parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
            mode = (info.external_attr >> 16) & 0o777
            target.chmod(mode or 0o644)
    zips[0].unlink()  # the unpacked tree is what runs; ~/.m2 keeps the zip


# --------------------------------------------------------------------------- another user's files


def system_user(name: str) -> dict[str, Any]:
    """Popen arguments that run a server as system user `name` (created if missing), as root only.

    Elasticsearch, OpenSearch and PostgreSQL refuse to run as root. Not root: {} (the server runs
    as the caller, who owns everything involved)."""
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       check=True, capture_output=True)
        entry = pwd.getpwnam(name)
    return {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}


RUNTIME_ROOT = Path("/var/lib/alertstream/stacks")


def private_home(state_dir: Path, service: str, run_as: dict[str, Any]) -> Path:
    """Where a server run as another user keeps its data: reachable by that user wherever the stack is.

    Not root: `<state_dir>/<service>/data`. As root: `/var/lib/alertstream/stacks/<id>/<service>`,
    owned by the server's user, with `<state_dir>/<service>/data` a symlink to it, so that a state dir
    under a mode-700 directory (/root, pytest's /tmp/pytest-of-root) works without changing the
    permissions of directories the project does not own. `<id>` is a hash of the state dir's path;
    `owner` beside it names the state dir and a token also kept in the state dir, so that a state
    dir deleted and made again at the same path (`make clean`) does not inherit the old data, and
    `collect_orphans` can remove what a deleted state dir left.
    """
    link = state_dir / service / "data"
    if not run_as:
        link.mkdir(parents=True, exist_ok=True)
        return link
    stack_home = RUNTIME_ROOT / hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]
    home = stack_home / service
    with _locked(RUNTIME_ROOT / ".lock"):  # postgres and search start in parallel threads
        token_file = state_dir / ".private-home"
        token = token_file.read_text().strip() if token_file.exists() else None
        owner = stack_home / "owner"
        recorded = owner.read_text().split() if owner.exists() else []
        if stack_home.exists() and recorded != [str(state_dir), token or ""]:
            if _busy(stack_home):
                raise StackError(f"{stack_home} holds the data of an earlier {state_dir} and a server still runs "
                                 f"in it: stop it (or remove {stack_home}) first")
            say(f"removing {stack_home}: the data of an earlier {state_dir}, which was deleted")
            shutil.rmtree(stack_home)
        if token is None:
            token = hashlib.sha256(os.urandom(16)).hexdigest()[:16]
            token_file.write_text(token + "\n")
        home.mkdir(parents=True, exist_ok=True)
        for path in (RUNTIME_ROOT.parent, RUNTIME_ROOT, stack_home):
            path.chmod(0o755)
        owner.write_text(f"{state_dir}\n{token}\n")
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() and Path(os.readlink(link)) != home:
        link.unlink()
    if not link.is_symlink():
        if link.is_dir():
            # Data of a stack from before the private homes: moved in, not lost.
            if any(home.iterdir()):
                raise StackError(f"both {link} and {home} hold data: remove the one to drop")
            for child in link.iterdir():
                shutil.move(str(child), str(home / child.name))
            link.rmdir()
            say(f"moved the {service} data from {link} to {home} (a symlink stays at {link})")
        link.symlink_to(home, target_is_directory=True)
    for path in (home, *home.rglob("*")):
        os.lchown(path, run_as["user"], run_as["group"])
    home.chmod(0o700)
    return home


def _busy(stack_home: Path) -> bool:
    """Whether a process works in `stack_home` (servers run with their private home as cwd)."""
    import psutil

    for proc in psutil.process_iter(["cwd"]):
        cwd = Path(proc.info.get("cwd") or "/")
        if cwd == stack_home or stack_home in cwd.parents:
            return True
    return False


def mirror(sources: dict[str, Path], label: str) -> Path:
    """Copies of `sources` ({relative path in the copy: source dir}) in the engines cache, made
    once (as root: so that a server run as another user can read its binaries wherever the
    checkout is, e.g. under /root). Relative paths keep an `$ORIGIN` rpath working. Returns the copy."""
    dest = cache_root() / label
    marker = dest / ".complete"
    stamp = repr(sorted((k, str(v)) for k, v in sources.items()))
    if marker.exists() and marker.read_text().strip() == stamp:
        return dest
    with _locked(dest.parent / f".{dest.name}.lock"):
        if marker.exists() and marker.read_text().strip() == stamp:
            return dest
        tmp = dest.with_name(f"{dest.name}.tmp{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        for relative, src in sources.items():
            shutil.copytree(src, tmp / relative, symlinks=True)
        for path in (tmp, *tmp.rglob("*")):
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | (0o755 if path.is_dir() else 0o444))
        (tmp / ".complete").write_text(stamp + "\n")
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    return dest


def collect_orphans() -> list[Path]:
    """Remove the private homes of state dirs that no longer exist (e.g. pytest's old tmp dirs)
    and that no process works in. Returns what was removed."""
    if os.geteuid() != 0 or not RUNTIME_ROOT.is_dir():
        return []
    removed = []
    with _locked(RUNTIME_ROOT / ".lock"):
        for stack_home in RUNTIME_ROOT.iterdir():
            try:
                state_dir = Path((stack_home / "owner").read_text().split()[0])
            except (OSError, IndexError):
                continue
            if not state_dir.exists() and not _busy(stack_home):
                shutil.rmtree(stack_home, ignore_errors=True)
                removed.append(stack_home)
    return removed


def wipe(path: Path) -> None:
    """Empty a data dir (keeping the dir itself, its owner and mode)."""
    if not path.exists():
        return
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
