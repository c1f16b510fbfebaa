"""Apache Kafka 4 in KRaft mode for the local stack: one node that is both broker and controller.

What Kafka's own scripts do, without the scripts (they are not in the jars): `kafka-storage.sh
format` is `java -cp '<jars>/*' kafka.tools.StorageTool format ...`, run once per data dir, and
`kafka-server-start.sh` is `java <heap> <KAFKA_JVM_PERFORMANCE_OPTS> -cp '<jars>/*' kafka.Kafka
server.properties`. Its log goes to stdout, which the stack sends to `kafka/server.log`.

Layout under the service dir (`<state_dir>/kafka`):

    server.properties   rewritten at each start (the ports may change; the data stays)
    log4j2.properties   console only: everything lands in server.log
    data/               log.dirs and the KRaft metadata log, formatted on the first start
    gc.log*             the JVM's GC log (4 x 10 MB at most)
"""

from __future__ import annotations

import base64
import subprocess
import uuid
from pathlib import Path

from streams.engines import HERE, Java, StackError, cache_root, fetch, find_java, is_fetched, wipe

KAFKA_VERSION = "4.4.0"  # the version in kafka.pom.xml
POM = HERE / "kafka.pom.xml"
NODE_ID = 1

# Heap for a 2-core, 24 GiB machine shared with Postgres, the search server and the workers: the
# broker's real cache is the OS page cache, not the heap (Kafka's docs: 1-6 GB heaps).
HEAP = ["-Xms512m", "-Xmx1g"]
# kafka-run-class.sh's KAFKA_JVM_PERFORMANCE_OPTS, as of Kafka 4.
JVM_OPTS = ["-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent", "-XX:MaxInlineLevel=15", "-Djava.awt.headless=true"]
READY_LINE = b"Kafka Server started"  # logged by KafkaRaftServer once broker and controller run


def jars_dir() -> Path:
    return cache_root() / f"kafka-{KAFKA_VERSION}"


def fetched() -> bool:
    return is_fetched(POM, jars_dir())


def java() -> Java | None:
    return find_java(17)


def ensure_jars() -> Path:
    return fetch(POM, jars_dir(), f"Apache Kafka {KAFKA_VERSION}") / "lib"


def server_properties(data_dir: Path, port: int, controller_port: int) -> str:
    """A single combined node, set as production expects (deploy/docker-compose.yml) where it matters:
    no topic auto-creation (alertstream creates its topics with the configured partition count),
    16 MB messages (dead letters keep the original bytes), 72 h retention."""
    return "\n".join([
        "# Written by `alertstream stack up` at each start (streams/engines/kafka.py): edits are lost.",
        "process.roles=broker,controller",
        f"node.id={NODE_ID}",
        # Static quorum: the controller's port may change between starts (a taken port is retried).
        f"controller.quorum.voters={NODE_ID}@127.0.0.1:{controller_port}",
        f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names=CONTROLLER",
        "inter.broker.listener.name=PLAINTEXT",
        "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        f"log.dirs={data_dir}",
        "auto.create.topics.enable=false",
        "num.partitions=1",
        "message.max.bytes=16777216",
        "log.retention.hours=72",
        # One node: every internal topic has one replica.
        "offsets.topic.replication.factor=1",
        "transaction.state.log.replication.factor=1",
        "transaction.state.log.min.isr=1",
        "share.coordinator.state.topic.replication.factor=1",
        "share.coordinator.state.topic.min.isr=1",
        "default.replication.factor=1",
        "min.insync.replicas=1",
        # Production waits 3 s for a batch of workers to join; a local stack has one or two.
        "group.initial.rebalance.delay.ms=0",
        "",
    ])


LOG4J2 = """\
# Written by `alertstream stack up` (streams/engines/kafka.py): the broker logs to stdout,
# which goes to server.log beside this file.
status = warn
# Log4j's own shutdown hook would stop the logging before Kafka's hook has shut the broker down.
shutdownHook = disable
appender.stdout.type = Console
appender.stdout.name = STDOUT
appender.stdout.layout.type = PatternLayout
appender.stdout.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRefs = stdout
rootLogger.appenderRef.stdout.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = INFO
"""


def _cluster_id() -> str:
    # What `kafka-storage.sh random-uuid` prints (Uuid.randomUuid: url-safe base64, no padding),
    # made here to save a JVM start. Kafka refuses ids that start with '-'.
    while True:
        value = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not value.startswith("-"):
            return value


def prepare(service_dir: Path, port: int, controller_port: int, java_rt: Java, clean: bool = False) -> list[str]:
    """Write the configuration, format the data dir if new; return the broker's command line."""
    lib = ensure_jars()
    data = service_dir / "data"
    if clean:
        wipe(data)
    data.mkdir(parents=True, exist_ok=True)
    (service_dir / "server.properties").write_text(server_properties(data, port, controller_port))
    (service_dir / "log4j2.properties").write_text(LOG4J2)
    base = [str(java_rt.bin), f"-Dlog4j2.configurationFile={service_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={service_dir}", "-cp", f"{lib}/*"]
    if not (data / "meta.properties").exists():
        wipe(data)  # a format that stopped half-way
        _format(base, service_dir, data)
    gc_log = f"-Xlog:gc*:file={service_dir / 'gc.log'}:time,tags:filecount=4,filesize=10M"
    return [base[0], *HEAP, *JVM_OPTS, gc_log, *base[1:], "kafka.Kafka", str(service_dir / "server.properties")]


def _format(base: list[str], service_dir: Path, data: Path) -> None:
    cmd = [*base, "kafka.tools.StorageTool", "format", "--cluster-id", _cluster_id(),
           "--config", str(service_dir / "server.properties")]
    with open(service_dir / "server.log", "ab") as log:
        log.write(f"--- formatting {data}\n".encode())
        log.flush()
        out = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, timeout=120)
    if out.returncode != 0:
        raise StackError(f"formatting the Kafka data dir {data} failed (exit {out.returncode}): see {service_dir / 'server.log'}")
