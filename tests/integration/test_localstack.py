"""The local stack against its real servers: Tansu, PostgreSQL 18 and osmem.

One stack is started for the module (about 2 s) and the tests run in file order:
the last one stops it and checks that nothing is left behind.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from streams import localstack
from streams.settings import Settings

pytestmark = pytest.mark.integration

ENV_KEYS = {"ALERTSTREAM_KAFKA_BOOTSTRAP", "ALERTSTREAM_DATABASE_URL", "ALERTSTREAM_SEARCH_URL",
            "ALERTSTREAM_TABLE_RECOVERY_CONSISTENCY_CHECK"}  # the local broker's end-offset quirk


def shell_settings(data_dir: Path, env: dict[str, str]) -> Settings:
    """Settings as read in a shell that ran `eval "$(alertstream stack up)"`."""
    return local_settings(data_dir, kafka_bootstrap=env["ALERTSTREAM_KAFKA_BOOTSTRAP"],
                          database_url=env["ALERTSTREAM_DATABASE_URL"], search_url=env["ALERTSTREAM_SEARCH_URL"])


def local_settings(data_dir: Path, **external: str) -> Settings:
    # Explicit None: a developer's shell may export ALERTSTREAM_* from `eval "$(alertstream stack up)"`.
    fields = {"kafka_bootstrap": None, "database_url": None, "search_url": None, **external}
    return Settings(data_dir=data_dir, **fields)


def pids(state_dir: Path) -> dict[str, int | None]:
    return {s.name: s.pid for s in localstack.status(state_dir)}


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    state_dir = tmp_path_factory.mktemp("stack")
    env = localstack.up(local_settings(state_dir), state_dir)
    yield state_dir, env
    localstack.down(state_dir)  # no-op when the last test already stopped it


def test_up_starts_all_three(stack: tuple[Path, dict[str, str]]) -> None:
    state_dir, env = stack
    assert set(env) == ENV_KEYS
    statuses = localstack.status(state_dir)
    assert [s.name for s in statuses] == ["kafka", "postgres", "search"]
    for s in statuses:
        assert s.alive and not s.external and s.pid, s
        assert (state_dir / s.name / "server.log").stat().st_size > 0
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

    # assign() rather than subscribe(): a group join on Tansu takes half a session timeout.
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "roundtrip", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, 0, 0)])
        msg = consumer.poll(10)
    finally:
        consumer.close()
    assert msg is not None and msg.error() is None
    assert (msg.key(), msg.value()) == (b"k", b"hello")


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
            assert "Address in use" in (tmp_path / "kafka" / "server.log").read_text()
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
    assert localstack.down(state_dir) == ["kafka", "postgres", "search"]
