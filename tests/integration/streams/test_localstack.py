"""The local stack against its real servers: Apache Kafka 4 (KRaft), PostgreSQL 18 and OpenSearch 2.19.

One stack is started for the module (about 10 s once the engines are cached; the first start
fetches them from Maven Central) and the tests run in file order: the last ones stop it, start it
again on the same data (a real broker restart) and check that nothing is left behind. The
stand-ins (Tansu, osmem) are what the engine choice falls back to: `choose_engines` is tested
without starting anything.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic, OffsetSpec

from config.settings import Settings
from streams import localstack
from streams.engines import search as search_engine

pytestmark = pytest.mark.integration

ENV_KEYS = {"ALERTSTREAM_KAFKA_BOOTSTRAP", "ALERTSTREAM_DATABASE_URL", "ALERTSTREAM_SEARCH_URL"}
REAL = {"local_broker": "kafka", "local_search": "opensearch"}  # whatever the environment says
# Written before the restart, read back after it (test_restart_keeps_the_data).
KEPT_TOPIC = f"kept-{uuid.uuid4().hex[:8]}"
KEPT_INDEX = f"kept-{uuid.uuid4().hex[:8]}"
KEPT_RECORDS = 5000


def shell_settings(data_dir: Path, env: dict[str, str], **extra: object) -> Settings:
    """Settings as read in a shell that ran `eval "$(alertstream stack up)"`."""
    return local_settings(data_dir, kafka_bootstrap=env["ALERTSTREAM_KAFKA_BOOTSTRAP"],
                          database_url=env["ALERTSTREAM_DATABASE_URL"], search_url=env["ALERTSTREAM_SEARCH_URL"], **extra)


def local_settings(data_dir: Path, **external: object) -> Settings:
    # Explicit None: a developer's shell may export ALERTSTREAM_* from `eval "$(alertstream stack up)"`.
    fields = {"kafka_bootstrap": None, "database_url": None, "search_url": None, **REAL, **external}
    return Settings(data_dir=data_dir, **fields)


def pids(state_dir: Path) -> dict[str, int | None]:
    return {s.name: s.pid for s in localstack.status(state_dir)}


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def mentioning(state_dir: Path) -> list[int]:
    """Live processes whose command line, or working directory, is in the state dir (or in the
    private homes of Postgres and the search server): what a stack leaves running."""
    places = [str(state_dir)] + [str((state_dir / name / "data").resolve()) for name in ("postgres", "search")]
    found = []
    for proc in psutil.process_iter(["pid", "cmdline", "cwd", "status"]):
        if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.info["pid"] == os.getpid():
            continue
        text = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["cwd"] or "")
        if any(place in text for place in places):
            found.append(proc.info["pid"])
    return found


def http_json(url: str, method: str = "GET", body: bytes | None = None) -> dict:
    req = urllib.request.Request(url, data=body, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)


def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the future resolves
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(timeout=30)


def end_offsets(bootstrap: str, topic: str, partitions: int = 1) -> list[int]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in range(partitions)})
    return [f.result(timeout=30).offset for _, f in sorted(futures.items(), key=lambda kv: kv[0].partition)]


PARENT_MODES: dict[Path, int] = {}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    state_dir = tmp_path_factory.mktemp("stack")
    PARENT_MODES.update({parent: parent.stat().st_mode for parent in state_dir.parents})
    env = localstack.up(local_settings(state_dir), state_dir)
    yield state_dir, env
    localstack.down(state_dir)  # no-op when the last test already stopped it


# --------------------------------------------------------------------------- the engine choice


def choose(java: bool = True, mvn: bool = True, **settings: object) -> localstack.EngineChoice:
    fields = {"kafka_bootstrap": None, "database_url": None, "search_url": None,
              "local_broker": "auto", "local_search": "auto", **settings}
    base = Settings(**fields)
    local = [name for name, field in (("kafka", "kafka_bootstrap"), ("search", "search_url")) if not getattr(base, field)]
    return localstack.choose_engines(base, local, java=lambda engine: java, can_fetch=lambda engine: mvn)


def test_auto_takes_the_real_engines_where_java_and_maven_are() -> None:
    assert choose() == localstack.EngineChoice("kafka", "opensearch", None)


def test_auto_falls_back_to_the_stand_ins_and_says_why() -> None:
    no_java = choose(java=False)
    assert (no_java.kafka, no_java.search) == ("tansu", "osmem")
    assert "no Java 17+ runtime found" in no_java.note and "Tansu" in no_java.note and "osmem" in no_java.note
    assert "\n" not in no_java.note  # one line
    no_mvn = choose(mvn=False)
    assert (no_mvn.kafka, no_mvn.search) == ("tansu", "osmem") and "no Maven (mvn)" in no_mvn.note


def test_an_explicit_choice_wins() -> None:
    assert choose(java=False, local_broker="kafka", local_search="opensearch") == localstack.EngineChoice("kafka", "opensearch", None)
    chosen = choose(local_broker="tansu")
    assert (chosen.kafka, chosen.search) == ("tansu", "opensearch")
    assert "Tansu as the broker" in chosen.note and "osmem" not in chosen.note and "as set" in chosen.note
    assert choose(local_search="elasticsearch").search == "elasticsearch"


def test_services_pointed_elsewhere_are_not_spoken_of() -> None:
    chosen = choose(java=False, kafka_bootstrap="kafka.example:9092", search_url="https://search.example")
    assert chosen.note is None


def test_a_missing_java_stops_an_explicit_choice_with_one_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.engines import kafka as kafka_engine

    monkeypatch.setattr(kafka_engine, "java", lambda: None)
    externals = {"database_url": "postgresql://u:p@db.example/x", "search_url": "http://s.example"}
    with pytest.raises(localstack.StackError, match="needs a Java 17"):
        localstack.up(local_settings(tmp_path, **externals), tmp_path)
    assert not mentioning(tmp_path)


# --------------------------------------------------------------------------- the real stack


def test_up_starts_all_three(stack: tuple[Path, dict[str, str]]) -> None:
    state_dir, env = stack
    assert set(env) == ENV_KEYS  # no recovery-check override: Kafka's end offsets are exact
    statuses = localstack.status(state_dir)
    assert [s.name for s in statuses] == ["kafka", "postgres", "search"]
    assert [s.engine for s in statuses] == ["kafka", "postgres", "opensearch"]
    for s in statuses:
        assert s.alive and not s.external and s.pid, s
        assert (state_dir / s.name / "server.log").stat().st_size > 0
    kafka = psutil.Process(pids(state_dir)["kafka"])
    assert kafka.cmdline()[-2:] == ["kafka.Kafka", str(state_dir / "kafka" / "server.properties")]
    assert (state_dir / "kafka" / "data" / "meta.properties").exists()  # formatted, on disk
    search = psutil.Process(pids(state_dir)["search"])
    if os.geteuid() == 0:  # OpenSearch refuses root: it runs as the stack's system user
        assert search.username() == search_engine.SEARCH_USER
    assert b"Kafka Server started" in (state_dir / "kafka" / "server.log").read_bytes()
    # As root, pytest's base temp dir is mode 700: the servers run as other users anyway, and no
    # directory above the state dir had its permissions changed for them.
    assert {parent: parent.stat().st_mode for parent in state_dir.parents} == PARENT_MODES
    # Detached: each server leads its own session, so the caller's Ctrl-C or exit spares it.
    for s in statuses:
        assert os.getsid(s.pid) == s.pid
    password = env["ALERTSTREAM_DATABASE_URL"].split(":")[2].split("@")[0]
    assert password and password not in (state_dir / "stack.json").read_text()
    assert "***" in next(s.endpoint for s in statuses if s.name == "postgres")


def test_kafka_round_trip(stack: tuple[Path, dict[str, str]]) -> None:
    bootstrap = stack[1]["ALERTSTREAM_KAFKA_BOOTSTRAP"]
    topic = f"roundtrip-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the future resolves
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(timeout=10)

    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, key=b"k", value=b"hello")
    assert producer.flush(10) == 0

    # A real group join (subscribe): quick on Kafka (group.initial.rebalance.delay.ms=0).
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "roundtrip", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    try:
        consumer.subscribe([topic])
        msg = consumer.poll(30)
    finally:
        consumer.close()
    assert msg is not None and msg.error() is None
    assert (msg.key(), msg.value()) == (b"k", b"hello")


def test_end_offsets_are_exact_for_multi_record_batches(stack: tuple[Path, dict[str, str]]) -> None:
    """Tansu reported the first offset of the last batch + 1; Kafka reports the last offset + 1."""
    bootstrap = stack[1]["ALERTSTREAM_KAFKA_BOOTSTRAP"]
    topic = f"batches-{uuid.uuid4().hex[:8]}"
    create_topic(bootstrap, topic, partitions=2)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "batch.num.messages": 1000})
    for i in range(3001):
        producer.produce(topic, value=b"x" * 100, partition=i % 2)
    assert producer.flush(30) == 0
    assert end_offsets(bootstrap, topic, 2) == [1501, 1500]

    # Lag = end offset - committed offset, exactly, after a commit part-way.
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"lag-{topic}", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        consumed = 0
        while consumed < 1000:
            msgs = consumer.consume(1000 - consumed, timeout=10)
            assert msgs, "no records within 10 s"
            consumed += len(msgs)
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    admin = AdminClient({"bootstrap.servers": bootstrap})
    group = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(f"lag-{topic}")])[f"lag-{topic}"].result(timeout=30)
    committed = {tp.partition: tp.offset for tp in group.topic_partitions}
    assert committed[0] == 1000 and 1501 - committed[0] == 501


def test_kept_data_is_written(stack: tuple[Path, dict[str, str]]) -> None:
    """Records and a document that test_restart_keeps_the_data reads back after down/up."""
    _, env = stack
    bootstrap = env["ALERTSTREAM_KAFKA_BOOTSTRAP"]
    create_topic(bootstrap, KEPT_TOPIC, partitions=2)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "acks": "all"})
    for i in range(KEPT_RECORDS):
        producer.produce(KEPT_TOPIC, key=str(i).encode(), value=f"record {i}".encode(), partition=i % 2)
    assert producer.flush(30) == 0
    http_json(f"{env['ALERTSTREAM_SEARCH_URL']}/{KEPT_INDEX}/_doc/1?refresh=true", "PUT", b'{"kept": true}')


async def test_postgres_query(stack: tuple[Path, dict[str, str]]) -> None:
    conn = await asyncpg.connect(stack[1]["ALERTSTREAM_DATABASE_URL"], timeout=10)
    try:
        assert await conn.fetchval("select 1") == 1
        assert await conn.fetchval("select current_database()") == "alertstream"
        assert (await conn.fetchval("show server_version")).startswith("18")
    finally:
        await conn.close()


async def test_postgres_requires_the_password(stack: tuple[Path, dict[str, str]]) -> None:
    url = stack[1]["ALERTSTREAM_DATABASE_URL"]
    wrong = url.replace(url.split(":")[2].split("@")[0], "wrong")
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(wrong, timeout=10)


def test_search_answers_http(stack: tuple[Path, dict[str, str]]) -> None:
    with urllib.request.urlopen(stack[1]["ALERTSTREAM_SEARCH_URL"] + "/", timeout=10) as resp:
        assert resp.status == 200
        assert json.load(resp)["version"]["distribution"] == "opensearch"


def test_export_lines_survive_eval(stack: tuple[Path, dict[str, str]]) -> None:
    env = {**stack[1], "ALERTSTREAM_ODD": "it's $HOME `x` \"q\""}
    script = 'eval "$1"; printf "%s\\n" "$ALERTSTREAM_DATABASE_URL" "$ALERTSTREAM_ODD"'
    out = subprocess.run(["bash", "-c", script, "_", localstack.export_lines(env)],
                         capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [env["ALERTSTREAM_DATABASE_URL"], env["ALERTSTREAM_ODD"]]


def test_up_again_is_idempotent(stack: tuple[Path, dict[str, str]], capsys: pytest.CaptureFixture[str]) -> None:
    state_dir, env = stack
    before = pids(state_dir)
    assert localstack.up(local_settings(state_dir), state_dir) == env
    assert pids(state_dir) == before
    out, err = capsys.readouterr()
    assert out == ""  # stdout is eval'ed by the shell: messages go to stderr only
    assert "already running" in err and env["ALERTSTREAM_DATABASE_URL"] not in err


def test_up_from_a_shell_that_exported_the_stack(stack: tuple[Path, dict[str, str]]) -> None:
    # Its own endpoints in the environment are not "external": the stack stays managed.
    state_dir, env = stack
    before = pids(state_dir)
    assert localstack.up(shell_settings(state_dir, env), state_dir) == env
    assert pids(state_dir) == before
    assert not any(s.external for s in localstack.status(state_dir))


def test_up_restarts_a_dead_service(stack: tuple[Path, dict[str, str]]) -> None:
    state_dir, _ = stack
    before = pids(state_dir)
    os.kill(before["search"], signal.SIGKILL)
    deadline = time.monotonic() + 10  # a JVM with a 1 GB heap takes a moment to go
    while not gone(before["search"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    env = localstack.up(local_settings(state_dir), state_dir)
    after = pids(state_dir)
    assert after["search"] != before["search"] and gone(before["search"])
    assert (after["kafka"], after["postgres"]) == (before["kafka"], before["postgres"])
    with urllib.request.urlopen(env["ALERTSTREAM_SEARCH_URL"] + "/", timeout=10) as resp:
        assert resp.status == 200


def test_external_services_are_not_started(tmp_path: Path) -> None:
    external = {"database_url": "postgresql://u:secret@db.example:5432/alerts",
                "search_url": "https://search.example:9200"}
    env = localstack.up(local_settings(tmp_path, **external), tmp_path)
    try:
        assert env["ALERTSTREAM_DATABASE_URL"] == external["database_url"]
        assert env["ALERTSTREAM_SEARCH_URL"] == external["search_url"]
        by_name = {s.name: s for s in localstack.status(tmp_path)}
        assert by_name["kafka"].alive and not by_name["kafka"].external
        for name in ("postgres", "search"):
            assert by_name[name].external and by_name[name].pid is None
            assert not (tmp_path / name).exists()
        assert "secret" not in (tmp_path / "stack.json").read_text()
    finally:
        assert localstack.down(tmp_path) == ["kafka"]


def test_down_stops_a_broker_that_stack_json_lost(tmp_path: Path) -> None:
    externals = {"database_url": "postgresql://u:p@db.example/x", "search_url": "http://s.example"}
    localstack.up(local_settings(tmp_path, **externals), tmp_path)
    pid = pids(tmp_path)["kafka"]
    (tmp_path / "stack.json").unlink()
    assert localstack.down(tmp_path) == ["kafka"]  # found by its server.properties on the command line
    assert gone(pid) and not mentioning(tmp_path)


def test_down_stops_a_search_server_whose_record_no_longer_matches(tmp_path: Path) -> None:
    """Seen in benchmark runs: `down` judged the recorded search process gone (its start time no
    longer matched the record) and left the JVM running. Found by its config dir on its command line."""
    externals = {"database_url": "postgresql://u:p@db.example/x", "kafka_bootstrap": "kafka.example:9092"}
    localstack.up(local_settings(tmp_path, **externals), tmp_path)
    pid = pids(tmp_path)["search"]
    state = json.loads((tmp_path / "stack.json").read_text())
    state["search"]["create_time"] -= 60  # the record names another process now
    state["search"]["start_ticks"] -= 6000
    (tmp_path / "stack.json").write_text(json.dumps(state))
    assert localstack.down(tmp_path) == ["search"]
    assert gone(pid) and not mentioning(tmp_path)


def test_a_taken_port_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real_free_port = localstack._free_port
        monkeypatch.setattr(localstack, "_free_port", lambda: next(ports, None) or real_free_port())
        externals = {"database_url": "postgresql://u:p@db.example/x", "search_url": "http://s.example"}
        env = localstack.up(local_settings(tmp_path, **externals), tmp_path)
        try:
            assert env["ALERTSTREAM_KAFKA_BOOTSTRAP"] != f"127.0.0.1:{taken}"
            assert "Address already in use" in (tmp_path / "kafka" / "server.log").read_text()
            assert localstack.status(tmp_path)[0].alive
        finally:
            localstack.down(tmp_path)


def test_down_leaves_nothing_behind(stack: tuple[Path, dict[str, str]]) -> None:
    state_dir, _ = stack
    servers = [pid for pid in pids(state_dir).values() if pid]
    backends = [child.pid for child in psutil.Process(pids(state_dir)["postgres"]).children(recursive=True)]
    assert len(servers) == 3 and backends  # postgres runs checkpointer, walwriter, ...

    assert localstack.down(state_dir) == ["kafka", "postgres", "search"]
    for pid in servers + backends:
        assert not psutil.pid_exists(pid), pid  # reaped, not even a zombie
    assert not mentioning(state_dir)
    assert "[BrokerServer id=1] shut down completed" in (state_dir / "kafka" / "server.log").read_text()  # controlled shutdown, not a kill
    assert not any(s.alive or s.pid for s in localstack.status(state_dir))
    assert '"pid": null' in (state_dir / "stack.json").read_text()
    assert not (state_dir / "postgres" / "data" / "postmaster.pid").exists()  # a clean shutdown
    assert localstack.down(state_dir) == []


async def test_up_after_down_restarts_on_the_same_endpoints(stack: tuple[Path, dict[str, str]]) -> None:
    # The shell still exports the old endpoints: `up` must start the stack again, not
    # take them for external servers, and reuse the ports so those exports stay valid.
    state_dir, env = stack
    assert localstack.up(shell_settings(state_dir, env), state_dir) == env
    assert all(s.alive and not s.external for s in localstack.status(state_dir))
    conn = await asyncpg.connect(env["ALERTSTREAM_DATABASE_URL"], timeout=10)  # same data dir, same password
    try:
        assert await conn.fetchval("select 1") == 1
    finally:
        await conn.close()


def test_restart_keeps_the_data(stack: tuple[Path, dict[str, str]]) -> None:
    """A real broker restart: the records written before `down` are all there after `up`."""
    _, env = stack
    bootstrap = env["ALERTSTREAM_KAFKA_BOOTSTRAP"]
    assert end_offsets(bootstrap, KEPT_TOPIC, 2) == [KEPT_RECORDS // 2, KEPT_RECORDS // 2]
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{KEPT_TOPIC}", "enable.auto.commit": False})
    seen: set[bytes] = set()
    try:
        consumer.assign([TopicPartition(KEPT_TOPIC, p, 0) for p in (0, 1)])
        deadline = time.monotonic() + 60
        while len(seen) < KEPT_RECORDS and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=2):
                assert msg.error() is None, msg.error()
                seen.add(msg.key())
    finally:
        consumer.close()
    assert seen == {str(i).encode() for i in range(KEPT_RECORDS)}
    assert http_json(f"{env['ALERTSTREAM_SEARCH_URL']}/{KEPT_INDEX}/_count")["count"] == 1


def test_a_clean_start_wipes_the_broker_and_the_search_data(stack: tuple[Path, dict[str, str]]) -> None:
    state_dir, env = stack
    before = pids(state_dir)
    assert localstack.up(shell_settings(state_dir, env, local_stack_clean=True), state_dir) == env
    after = pids(state_dir)
    assert after["postgres"] == before["postgres"]  # only the broker and the search server start clean
    assert after["kafka"] != before["kafka"] and after["search"] != before["search"]
    topics = AdminClient({"bootstrap.servers": env["ALERTSTREAM_KAFKA_BOOTSTRAP"]}).list_topics(timeout=30).topics
    assert KEPT_TOPIC not in topics
    indices = http_json(f"{env['ALERTSTREAM_SEARCH_URL']}/_cat/indices?format=json")
    assert KEPT_INDEX not in {i["index"] for i in indices}
    assert localstack.down(state_dir) == ["kafka", "postgres", "search"]
    assert not mentioning(state_dir)


@pytest.mark.skipif(os.geteuid() != 0, reason="private homes are for servers run as another user, as root")
async def test_a_state_dir_made_again_at_the_same_path_starts_fresh(tmp_path: Path) -> None:
    """`make clean` deletes .alertstream: the private home of the old one is not taken for its data."""
    state_dir = tmp_path / "stack"
    externals = {"kafka_bootstrap": "127.0.0.1:1", "search_url": "http://127.0.0.1:1"}
    first = localstack.up(local_settings(state_dir, **externals), state_dir)
    home = (state_dir / "postgres" / "data").resolve()
    assert home.is_relative_to("/var/lib/alertstream/stacks") and home.owner() == localstack.PG_SYSTEM_USER
    assert localstack.down(state_dir) == ["postgres"]
    subprocess.run(["rm", "-rf", str(state_dir)], check=True)
    second = localstack.up(local_settings(state_dir, **externals), state_dir)
    try:
        assert second["ALERTSTREAM_DATABASE_URL"] != first["ALERTSTREAM_DATABASE_URL"]  # a new password
        conn = await asyncpg.connect(second["ALERTSTREAM_DATABASE_URL"], timeout=10)
        await conn.close()
    finally:
        assert localstack.down(state_dir) == ["postgres"]


def test_a_failed_start_stops_what_it_started(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kafka and Postgres start, then the search server cannot: nothing is left running."""
    monkeypatch.setattr(search_engine, "HEAP", "100t")  # the JVM refuses to start: a real failure
    with pytest.raises(localstack.StackError, match="search exited"):
        localstack.up(local_settings(tmp_path), tmp_path)
    assert "Could not reserve enough space" in (tmp_path / "search" / "server.log").read_text()
    statuses = localstack.status(tmp_path)
    assert not any(s.alive or s.pid for s in statuses), statuses
    assert (tmp_path / "kafka" / "data" / "meta.properties").exists()  # it did start
    assert not mentioning(tmp_path)
    assert localstack.down(tmp_path) == []
