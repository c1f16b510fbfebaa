"""Crashes: `kill -9` of a worker mid-stream, then a restart; and two workers sharing the
partitions, one killed. Every produced alert ends up in Postgres exactly once."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil

import pytest

from config.settings import BatchConfig, Settings
from streams import localstack
from streams.topics import ensure_topics
from tests.conftest import WorkerProcess, free_port, wait_until
from tests.integration.streams.test_pipeline_e2e import generic_alert, produce, sql
from tests.integration.streams.test_worker_restart import restart_settings

pytestmark = pytest.mark.integration
COUNT = 3000


LOCAL = {"kafka_bootstrap": None, "database_url": None, "search_url": None}


@pytest.fixture(scope="module")
def crash_stack(tmp_path_factory):  # noqa: ANN001, ANN201
    """A fresh stack of its own: a broker that has served the whole session answers a killed
    member's group more slowly than these tests' timeouts allow, and one test kills the broker."""
    import asyncio

    from sinks.migrate import migrate

    state_dir = tmp_path_factory.mktemp("crash-stack")
    env = localstack.up(Settings(**LOCAL), state_dir=state_dir)
    try:
        asyncio.run(migrate(env["ALERTSTREAM_DATABASE_URL"]))
        yield state_dir, env
    finally:
        localstack.down(state_dir)


@pytest.fixture(scope="module")
def stack_env(crash_stack):  # noqa: ANN001, ANN201 - overrides the session's stack for this module
    return crash_stack[1]


def crash_settings(stack_env, data_dir, name: str):  # noqa: ANN001, ANN201
    return restart_settings(stack_env, data_dir, name).model_copy(update={
        "producer_one_record_batches": False, "table_recovery_consistency_check": False,
        "stream_batch": BatchConfig(max_events=100, timeout_s=0.2),  # many small batches: the kill lands mid-stream
        "worker_stall_timeout_s": 20,  # a stalled restart is replaced well within the test's wait
    })


def produce_slowly(settings, tenant: str) -> threading.Thread:  # noqa: ANN001
    """3000 distinct alerts in 30 chunks over 6+ seconds, from a background thread: the stop
    always lands while records are still arriving."""
    def run() -> None:
        for chunk in range(30):
            time.sleep(0.2)
            records = [("keep", f"c{i}".encode(), generic_alert(200_000 + i)) for i in range(chunk * 100, chunk * 100 + 100)]
            produce(settings.require_kafka(), settings.topic_alerts, records, tenant=tenant)
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def produce_idempotently(settings, tenant: str) -> threading.Thread:  # noqa: ANN001
    """The same 3000 alerts as `produce_slowly`, by one idempotent producer that waits out a broker
    restart: a retry after a lost ack can then never write a record twice (as a producer that
    needs exact counts must be configured)."""
    from confluent_kafka import Producer

    def run() -> None:
        producer = Producer({"bootstrap.servers": settings.require_kafka(), "enable.idempotence": True,
                             "linger.ms": 10, "message.timeout.ms": 120_000})
        failures: list = []
        for chunk in range(30):
            time.sleep(0.2)
            for i in range(chunk * 100, chunk * 100 + 100):
                producer.produce(settings.topic_alerts, key=f"c{i}".encode(), value=generic_alert(200_000 + i),
                                 headers=[("provider", b"keep"), ("tenant", tenant.encode())],
                                 on_delivery=lambda err, msg: failures.append(err) if err else None)
            producer.poll(0)
        assert producer.flush(150) == 0 and not failures, failures
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _serving(port: int) -> bool:
    import urllib.request

    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).status == 200
    except OSError:
        return False


def stored(dsn: str, tenant: str) -> tuple[int, int, int]:
    row = sql(dsn, "SELECT count(*) AS n, count(DISTINCT id) AS ids, count(DISTINCT fingerprint) AS fps FROM alert WHERE tenant = $1", tenant)[0]
    return row["n"], row["ids"], row["fps"]


def group_report(settings) -> str:  # noqa: ANN001
    """Committed vs end offsets of the worker's two stages: what a stalled restart is waiting for."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka import Consumer as KafkaConsumer
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": settings.require_kafka()})
    reader = KafkaConsumer({"bootstrap.servers": settings.require_kafka(), "group.id": "crash-report"})
    lines = []
    try:
        for group, topic in [(f"{settings.app_id}-normalize", settings.topic_alerts), (settings.app_id, settings.topic_normalized)]:
            request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(settings.topic_partitions)])]
            for tp in next(iter(admin.list_consumer_group_offsets(request).values())).result().topic_partitions:
                lo, hi = reader.get_watermark_offsets(TopicPartition(topic, tp.partition), timeout=5)
                lines.append(f"{group} {topic}[{tp.partition}] committed={tp.offset} end={hi}")
    finally:
        reader.close()
    return "\n".join(lines)


def missing_report(settings, dsn: str, tenant: str) -> str:  # noqa: ANN001
    """Where the alerts missing from Postgres are on the internal topic (offset, batch), if at all."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition
    from confluent_kafka import Consumer as KafkaConsumer

    from pipeline.normalizer import unpack

    have = {r["fingerprint"] for r in sql(dsn, "SELECT fingerprint FROM alert WHERE tenant = $1", tenant)}
    missing = {f"e2e-{200_000 + i}" for i in range(COUNT)} - have
    reader = KafkaConsumer({"bootstrap.servers": settings.require_kafka(), "group.id": "crash-missing", "enable.auto.commit": False})
    found: list[str] = []
    try:
        reader.assign([TopicPartition(settings.topic_normalized, p, OFFSET_BEGINNING) for p in range(settings.topic_partitions)])
        idle = 0
        while idle < 3:
            messages = reader.consume(500, timeout=1.0)
            idle = 0 if messages else idle + 1
            for m in messages:
                if m.error():
                    continue
                fps = {a.alert.fingerprint for a in unpack(m.value())}
                if fps & missing:
                    found.append(f"normalized[{m.partition()}]@{m.offset()}: {len(fps & missing)} missing of {len(fps)}")
    finally:
        reader.close()
    sighted = sql(dsn, "SELECT count(*) AS n, min(alert_id::text) AS a FROM last_alert WHERE tenant = $1 AND fingerprint = ANY($2::text[])",
                  tenant, sorted(missing))[0]
    return (f"{len(missing)} missing, e.g. {sorted(missing)[:3]}; on the internal topic: {found or 'nowhere'}; "
            f"in last_alert: {sighted['n']} (e.g. alert_id {sighted['a']})")


def worker_counters(port: int) -> str:
    import urllib.request

    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3).read().decode()
    except OSError as exc:
        return f"metrics unavailable: {exc}"
    return "\n".join(line for line in text.splitlines()
                     if line.startswith(("alertstream_alerts_total", "alertstream_records_received_total", "alertstream_sink_rows")))


def assert_exactly_once(dsn: str, tenant: str, settings=None, worker: WorkerProcess | None = None) -> None:  # noqa: ANN001
    try:
        wait_until(lambda: stored(dsn, tenant)[2] >= COUNT, timeout=180, what="every alert stored")
    except TimeoutError:
        report = f"{group_report(settings)}\n{missing_report(settings, dsn, tenant)}" if settings else ""
        if worker is not None:
            report += "\n" + worker_counters(worker.settings.worker_web_port)
        raise AssertionError(f"stored {stored(dsn, tenant)} of {COUNT}\n{report}\n{worker.log_tail(80) if worker else ''}") from None
    assert stored(dsn, tenant) == (COUNT, COUNT, COUNT)
    sighted = sql(dsn, "SELECT sum(received_count) AS n, count(*) AS k FROM last_alert WHERE tenant = $1", tenant)[0]
    assert (sighted["n"], sighted["k"]) == (COUNT, COUNT)


# After kill -9 the restarted worker's consumer sometimes loses track of fetched records (a skip or
# a stall, docs/decisions.md); the stall/skip guard replaces that process and the test still sees
# every alert exactly once.
@pytest.mark.parametrize("sig", [pytest.param(signal.SIGKILL, id="kill-9"), pytest.param(signal.SIGTERM, id="sigterm")])
def test_worker_stopped_mid_stream_then_restarted(stack_env, tmp_path, sig) -> None:  # noqa: ANN001
    name = f"stop{int(sig)}"
    settings = crash_settings(stack_env, tmp_path / "w", name)
    ensure_topics(settings)
    dsn = settings.require_database_url()
    worker = WorkerProcess(settings, tmp_path / "first.log")
    # the input starts once the worker serves (it consumes from then on): a slow start must not let
    # the whole stream arrive, and be processed at once, before the stop
    wait_until(lambda: _serving(settings.worker_web_port), timeout=120, what="the worker serves")
    producer = produce_slowly(settings, name)
    try:
        wait_until(lambda: stored(dsn, name)[0] >= 500, timeout=120, what="the worker is mid-stream")
        worker.proc.send_signal(sig)
        code = worker.proc.wait(timeout=60)
        if sig == signal.SIGTERM:
            assert code == 0, "a graceful stop exits cleanly"
    finally:
        producer.join()
        worker.stop()
    assert stored(dsn, name)[0] < COUNT, "the stop came too late to test anything"
    restarted = WorkerProcess(settings.model_copy(update={"worker_web_port": free_port()}), tmp_path / "second.log")
    try:
        assert_exactly_once(dsn, name, settings, restarted)  # the restart resumes from the committed offsets
    finally:
        restarted.stop()


def test_two_workers_one_killed_the_other_takes_over(stack_env, tmp_path) -> None:  # noqa: ANN001
    first = crash_settings(stack_env, tmp_path / "a", "pair")
    second = first.model_copy(update={"data_dir": tmp_path / "b", "worker_web_port": free_port()})
    ensure_topics(first)
    dsn = first.require_database_url()
    a, b = WorkerProcess(first, tmp_path / "a.log"), WorkerProcess(second, tmp_path / "b.log")
    producer = produce_slowly(first, "pair")
    try:
        wait_until(lambda: stored(dsn, "pair")[0] >= 500, timeout=120, what="both workers running")
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait()
        producer.join()
        assert_exactly_once(dsn, "pair")
        assert b.proc.poll() is None
    finally:
        producer.join()
        a.stop()
        b.stop()


def test_broker_killed_mid_stream_then_restarted(crash_stack, tmp_path) -> None:  # noqa: ANN001
    """kill -9 of the broker (a real one: its log is on disk) while alerts arrive and the worker
    works, then `stack up` starts it again on the same data and port: the producer's retries, the
    worker's reconnects and the replay after them leave every alert stored once and every sighting
    counted once."""
    state_dir, env = crash_stack
    if Settings(**LOCAL).local_broker == "tansu":
        pytest.skip("the stand-in broker keeps its log in memory: a restart loses every topic")
    settings = crash_settings(env, tmp_path / "w", "brokerkill")
    ensure_topics(settings)
    dsn = settings.require_database_url()
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    wait_until(lambda: _serving(settings.worker_web_port), timeout=120, what="the worker serves")
    producer = produce_idempotently(settings, "brokerkill")
    try:
        wait_until(lambda: stored(dsn, "brokerkill")[0] >= 500, timeout=120, what="the worker is mid-stream")
        broker = next(s for s in localstack.status(state_dir) if s.name == "kafka")
        os.kill(broker.pid, signal.SIGKILL)
        wait_until(lambda: not psutil.pid_exists(broker.pid) or psutil.Process(broker.pid).status() == psutil.STATUS_ZOMBIE,
                   timeout=30, what="the broker is gone")
        assert stored(dsn, "brokerkill")[0] < COUNT, "the kill came too late to test anything"
        time.sleep(3)  # the worker and the producer see the broker down
        restarted = localstack.up(Settings(**LOCAL), state_dir=state_dir)
        assert restarted["ALERTSTREAM_KAFKA_BOOTSTRAP"] == env["ALERTSTREAM_KAFKA_BOOTSTRAP"]
        producer.join()
        assert_exactly_once(dsn, "brokerkill", settings, worker)
    finally:
        producer.join()
        worker.stop()
