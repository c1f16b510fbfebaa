"""A real search server for the local stack: OpenSearch 2.19 (default) or Elasticsearch 8.19 (opt-in).

Both come as the minimal zip their own builds use for integration tests, from Maven Central
(`opensearch.pom.xml`, `elasticsearch.pom.xml`), unpacked once into the engines cache and run by
their own start script (`bin/opensearch` execs the JVM, so the recorded pid is the server's).
One node, security off, loopback only. Both refuse to run as root: as root the server runs as
the system user `alertstream_search`, with its config, data and logs in a private home it owns
(`streams.engines.private_home`); its stdout (the log) still goes to `<state_dir>/search/server.log`.

Private home layout: `config/` (rewritten at each start), `data/` (kept across restarts),
`logs/` (the server's own log files, GC log), `tmp/`.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.engines import HERE, Java, cache_root, fetch, find_java, is_fetched, unzip_single, wipe

SEARCH_USER = "alertstream_search"
CLUSTER_NAME = "alertstream-local"
# Heap for a 2-core, 24 GiB machine shared with Kafka, Postgres and the workers. Xms = Xmx as both
# vendors advise; the rest of the memory the server uses is the OS page cache.
HEAP = "1g"


@dataclass(frozen=True)
class Distribution:
    name: str  # the `local_search` value
    version: str
    pom: Path
    label: str
    script: str  # bin/<script>
    config_file: str
    env_prefix: str  # <prefix>_JAVA_HOME, <prefix>_PATH_CONF, <prefix>_TMPDIR
    java_max: int  # newest Java the version supports (OpenSearch 2.x needs the security manager, gone in 24)
    settings: tuple[str, ...] = ()
    has_root_endpoint: bool = True  # `GET /`


OPENSEARCH = Distribution(
    name="opensearch", version="2.19.6", pom=HERE / "opensearch.pom.xml", label="OpenSearch 2.19.6 (minimal)",
    script="opensearch", config_file="opensearch.yml", env_prefix="OPENSEARCH", java_max=23,
)
ELASTICSEARCH = Distribution(
    name="elasticsearch", version="8.19.3", pom=HERE / "elasticsearch.pom.xml",
    label="Elasticsearch 8.19.3 (integ-test zip)", script="elasticsearch", config_file="elasticsearch.yml",
    env_prefix="ES", java_max=24,
    # x-pack-security is in the zip: off, as the minimal OpenSearch has none.
    settings=("xpack.security.enabled: false",),
    has_root_endpoint=False,  # `GET /` lives in the rest-root module, which this zip lacks (405)
)
DISTRIBUTIONS = {d.name: d for d in (OPENSEARCH, ELASTICSEARCH)}


def dist_dir(dist: Distribution) -> Path:
    return cache_root() / f"{dist.name}-{dist.version}"


def fetched(dist: Distribution) -> bool:
    return is_fetched(dist.pom, dist_dir(dist))


def java(dist: Distribution) -> Java | None:
    return find_java(17, dist.java_max)


def ensure_dist(dist: Distribution) -> Path:
    """The unpacked distribution (its `home/`), fetched and unpacked on the first start only."""
    return fetch(dist.pom, dist_dir(dist), dist.label, unpack=lambda tmp: unzip_single(tmp / "lib", tmp / "home")) / "home"


def settings_yml(dist: Distribution, home: Path, port: int, transport_port: int) -> str:
    return "\n".join([
        "# Written by `alertstream stack up` at each start (streams/engines/search.py): edits are lost.",
        f"cluster.name: {CLUSTER_NAME}",
        "node.name: local",
        "network.host: 127.0.0.1",
        f"http.port: {port}",
        f"transport.port: {transport_port}",
        "discovery.type: single-node",
        f"path.data: {home / 'data'}",
        f"path.logs: {home / 'logs'}",
        # A developer's nearly full disk must not turn the indices read-only (flood stage at 95%).
        "cluster.routing.allocation.disk.threshold_enabled: false",
        *dist.settings,
        "",
    ])


def _own_paths(jvm_options: str, home: Path) -> str:
    """The vendor's jvm.options with its relative paths (read against the distribution's home, which
    the server's user cannot write) made absolute into the private home, and a smaller GC log."""
    logs = home / "logs"
    jvm_options = re.sub(r"file=(?:logs/)?gc\.log", f"file={logs}/gc.log", jvm_options)
    jvm_options = jvm_options.replace("-XX:HeapDumpPath=data", f"-XX:HeapDumpPath={logs}")
    jvm_options = re.sub(r"-XX:ErrorFile=(?:logs/)?", f"-XX:ErrorFile={logs}/", jvm_options)
    return jvm_options.replace("filecount=32,filesize=64m", "filecount=4,filesize=10m")


def prepare(dist: Distribution, home: Path, port: int, transport_port: int, java_rt: Java,
            run_as: dict[str, Any], clean: bool = False) -> tuple[list[str], dict[str, str]]:
    """Write the config into the private home; return the command line and its environment."""
    dist_home = ensure_dist(dist)
    if clean:
        wipe(home)
    config = home / "config"
    shutil.rmtree(config, ignore_errors=True)
    shutil.copytree(dist_home / "config", config)  # log4j2.properties, jvm.options, ...
    (config / dist.config_file).write_text(settings_yml(dist, home, port, transport_port))
    jvm_options = config / "jvm.options"
    jvm_options.write_text(_own_paths(jvm_options.read_text(), home))
    (config / "jvm.options.d").mkdir(exist_ok=True)
    (config / "jvm.options.d" / "alertstream.options").write_text(f"-Xms{HEAP}\n-Xmx{HEAP}\n")
    for sub in ("data", "logs", "tmp"):
        (home / sub).mkdir(exist_ok=True)
    if run_as:
        for path in (home, *home.rglob("*")):
            os.lchown(path, run_as["user"], run_as["group"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ES_", "OPENSEARCH_", "JAVA_TOOL"))}
    env.update({
        f"{dist.env_prefix}_JAVA_HOME": str(java_rt.home),
        f"{dist.env_prefix}_PATH_CONF": str(config),
        f"{dist.env_prefix}_TMPDIR": str(home / "tmp"),
    })
    if run_as:
        env["HOME"] = str(home)
    return [str(dist_home / "bin" / dist.script)], env
