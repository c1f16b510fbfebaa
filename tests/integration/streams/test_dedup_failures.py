"""The dedup stage never acks a batch it did not finish (issue 14, finding 3).

Each step of a dedup batch is made to fail in a real worker process against the real broker and
Postgres: the offset check's broker query, the DLQ produce of a sink-rejected alert, the produce
of stored alerts to the indexer's topic, the table write after the sinks. Those steps fail by fail
points (streams/failpoints.py): a broker that refuses one chosen produce, once, on demand, cannot
be had. An undecodable internal record is real: foreign bytes produced to the internal topic.

Each fault fails the same batch `dedup_batch_attempts` times, so the process gives up and exits
for a fresh one (the supervisor starts it). faust-streaming acks a batch in a `finally` even when
it failed; were that ack let through, the offsets would be committed past alerts never written and
the fresh process would not see them. Every alert must be in Postgres exactly once afterwards.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from confluent_kafka import Producer

from config.settings import BatchConfig, Settings
from streams.dlq import read_topic
from streams.topics import ensure_topics
from tests.conftest import WorkerProcess, free_port, isolated, wait_until
from tests.integration.streams.test_pipeline_e2e import generic_alert, produce, sql

pytestmark = pytest.mark.integration
COUNT = 600
REJECTED = "reject-me"  # an alert name the test's trigger makes Postgres refuse (a data exception)


def refuse_rejected_alerts(dsn: str) -> None:
    """Postgres refuses, as bad data (SQLSTATE 22023), an alert named `reject-me`: a real
    permanent sink failure, which the stage bisects and dead-letters."""
    sql(dsn, f"""
        CREATE OR REPLACE FUNCTION test_reject_alert() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.name = '{REJECTED}' THEN
                RAISE EXCEPTION 'test: this alert is refused' USING ERRCODE = '22023';
            END IF;
            RETURN NEW;
        END $$""")
    sql(dsn, "DROP TRIGGER IF EXISTS test_reject_alert ON alert")
    sql(dsn, "CREATE TRIGGER test_reject_alert BEFORE INSERT ON alert FOR EACH ROW EXECUTE FUNCTION test_reject_alert()")


@pytest.fixture
def rejecting_trigger(stack_env):  # noqa: ANN001, ANN201
    dsn = stack_env["ALERTSTREAM_DATABASE_URL"]
    refuse_rejected_alerts(dsn)
    yield dsn
    sql(dsn, "DROP TRIGGER IF EXISTS test_reject_alert ON alert")


def failing_settings(stack_env, tmp_path, name: str, point: str) -> Settings:  # noqa: ANN001
    failpoints = tmp_path / "failpoints.json"
    attempts = 3
    failpoints.write_text(json.dumps({point: attempts}))  # every attempt of one batch, then never again
    return isolated(Settings(
        kafka_bootstrap=stack_env["ALERTSTREAM_KAFKA_BOOTSTRAP"],
        database_url=stack_env["ALERTSTREAM_DATABASE_URL"],
        search_url=stack_env["ALERTSTREAM_SEARCH_URL"],
        search_enabled=point == "dedup.send_stored",  # only then are stored alerts produced
        data_dir=tmp_path / "w",
        worker_web_port=free_port(),
        worker_processes=1,
        broker_session_timeout_s=10,
        table_recovery_consistency_check=False,
        stream_batch=BatchConfig(max_events=50, timeout_s=0.2),  # many batches: the fault lands mid-stream
        dedup_batch_attempts=attempts,
        sink_retry={"initial_backoff_s": 0.1, "max_backoff_s": 0.5, "attempt_timeout_s": 30},
        failpoints_path=failpoints,
    ), name)


def produce_in_chunks(settings: Settings, tenant: str, extra: list[bytes]) -> threading.Thread:
    def run() -> None:
        for chunk in range(6):
            records = [("keep", f"k{i}".encode(), generic_alert(300_000 + i)) for i in range(chunk * 100, chunk * 100 + 100)]
            if chunk == 2:
                records += [("keep", b"bad", value) for value in extra]
            produce(settings.require_kafka(), settings.topic_alerts, records, tenant=tenant)
            time.sleep(0.3)
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def stored(dsn: str, tenant: str) -> tuple[int, int]:
    row = sql(dsn, "SELECT count(*) AS n, count(DISTINCT fingerprint) AS fps FROM alert WHERE tenant = $1", tenant)[0]
    return row["n"], row["fps"]


def positions(settings: Settings) -> str:
    """Each hop's committed offsets against its topic's end, for a failure's message."""
    from confluent_kafka import Consumer, TopicPartition

    out = []
    for topic, group in ((settings.topic_alerts, f"{settings.app_id}-normalize"), (settings.topic_normalized, settings.app_id)):
        consumer = Consumer({"bootstrap.servers": settings.require_kafka(), "group.id": group, "enable.auto.commit": False})
        try:
            parts = [TopicPartition(topic, p) for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions]
            committed = [tp.offset for tp in consumer.committed(parts, timeout=10)]
            ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in parts]
            out.append(f"{topic} committed {committed} of {ends}")
        finally:
            consumer.close()
    return "; ".join(out)


def rejected_alert() -> bytes:
    alert = json.loads(generic_alert(999_999))
    alert["name"] = REJECTED
    return json.dumps(alert).encode()


@pytest.mark.parametrize("point", ["dedup.offsets", "dedup.dead_letter", "dedup.send_stored", "dedup.state"])
def test_a_failing_step_never_acks_its_batch(stack_env, rejecting_trigger, tmp_path, point) -> None:  # noqa: ANN001
    name = "fail-" + point.split(".")[1].replace("_", "") + "-" + uuid.uuid4().hex[:6]  # a repeat starts afresh
    settings = failing_settings(stack_env, tmp_path, name, point)
    ensure_topics(settings)
    dsn = settings.require_database_url()
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    producer = produce_in_chunks(settings, name, [rejected_alert()])
    try:
        try:
            wait_until(lambda: stored(dsn, name)[1] >= COUNT, timeout=180, what=f"every alert stored after {point} failed")
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; stored {stored(dsn, name)}; {positions(settings)}; worker log:\n"
                                 f"{worker.log_tail(200)}") from exc
        producer.join()
        log = worker.log_path.read_text(errors="replace")
        assert f"fail point {point}" in log, "the fault was injected"
        assert "failed 3 times" in log and "exiting for a fresh process" in log, worker.log_tail(60)
        assert json.loads(settings.failpoints_path.read_text())[point] == 0
        time.sleep(2)  # a replay still in flight would show as a second row
        assert stored(dsn, name) == (COUNT, COUNT), "every alert exactly once"
        sighted = sql(dsn, "SELECT sum(received_count) AS n, count(*) AS k FROM last_alert WHERE tenant = $1 "
                           "AND fingerprint LIKE 'e2e-3%'", name)[0]
        assert (sighted["n"], sighted["k"]) == (COUNT, COUNT), "every sighting counted once"
        refused = [r for r in read_topic(settings, idle_s=2) if r.reason == "sink_rejected"]
        # dead-lettered at least once; a step that fails after the sinks repeats the batch, and with
        # it the DLQ produce (at-least-once: a replay of the copies stores the alert once)
        assert refused and {r.value for r in refused} == {refused[0].value}, [r.detail for r in refused]
        if point in ("dedup.offsets", "dedup.dead_letter"):  # failed before the DLQ produce succeeded
            assert len(refused) == 1
        assert b'"name":"reject-me"' in refused[0].value
        assert worker.proc.poll() is None, "the supervisor kept the worker running"
    finally:
        producer.join()
        worker.stop()


def test_an_undecodable_internal_record_is_dead_lettered_and_the_rest_flows(stack_env, tmp_path) -> None:  # noqa: ANN001
    """Foreign bytes on the internal topic (a producer that should not write there): the stage
    dead-letters them with their position, and goes on."""
    name = "undecodable"
    settings = failing_settings(stack_env, tmp_path, name, "dedup.state").model_copy(update={"failpoints_path": None})
    ensure_topics(settings)
    dsn = settings.require_database_url()
    garbage = b"\xc1 not a packed batch"
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    producer = produce_in_chunks(settings, name, [])
    try:
        foreign = Producer({"bootstrap.servers": settings.require_kafka()})
        foreign.produce(settings.topic_normalized, value=garbage, partition=1)
        assert foreign.flush(10) == 0
        wait_until(lambda: stored(dsn, name)[1] >= COUNT, timeout=120, what="every alert stored")
        producer.join()
        letters = wait_until(lambda: [r for r in read_topic(settings, idle_s=2) if r.reason == "undecodable"], 30,
                             what="the undecodable record in the DLQ")
        assert [(r.value, r.header("dlq_topic"), r.header("dlq_partition")) for r in letters] == \
            [(garbage, settings.topic_normalized, "1")]
        assert stored(dsn, name) == (COUNT, COUNT)
        assert "exiting for a fresh process" not in worker.log_path.read_text(errors="replace")
    finally:
        producer.join()
        worker.stop()


def test_a_sink_rejected_alert_replayed_from_the_dlq_is_restored_exactly(stack_env, rejecting_trigger, tmp_path) -> None:  # noqa: ANN001
    """Finding 8: the replayed alert keeps its provider, its `extra` (not nested under `extra.extra`)
    and its content hash, and is stored (its dedup state was not written while it was refused)."""
    import msgspec

    from schemas.alert import NormalizedAlert
    from streams.dlq import replay
    from tests.integration.streams.test_pipeline_e2e import alertmanager_webhook

    name = "replayexact"
    settings = failing_settings(stack_env, tmp_path, name, "dedup.state").model_copy(update={"failpoints_path": None})
    ensure_topics(settings)
    dsn = settings.require_database_url()
    hook = json.loads(alertmanager_webhook(7))
    hook["alerts"][0]["labels"]["alertname"] = REJECTED
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        produce(settings.require_kafka(), settings.topic_alerts, [("prometheus", b"hook", json.dumps(hook).encode())], tenant=name)
        letters = wait_until(lambda: [r for r in read_topic(settings, idle_s=2) if r.reason == "sink_rejected"], 120,
                             what="the refused alert in the DLQ")
        assert len(letters) == 1 and letters[0].header("provider") == "alertstream"
        refused = msgspec.json.decode(letters[0].value, type=NormalizedAlert)
        assert (refused.alert.name, refused.alert.provider_type) == (REJECTED, "prometheus")
        others = len(hook["alerts"]) - 1
        wait_until(lambda: stored(dsn, name)[0] == others, 60, what="the other alerts stored")

        sql(dsn, "DROP TRIGGER IF EXISTS test_reject_alert ON alert")  # the fix
        report = replay(settings, letters)
        assert report.ok and report.targets == {settings.topic_alerts: 1}, report.errors
        row = wait_until(lambda: sql(dsn, "SELECT provider_type, content_hash, fingerprint, event::text AS event FROM alert "
                                          "WHERE tenant = $1 AND name = $2", name, REJECTED), 60, what="the replayed alert stored")
        assert len(row) == 1
        restored = msgspec.json.decode(row[0]["event"].encode())
        assert (row[0]["provider_type"], row[0]["content_hash"], row[0]["fingerprint"]) == \
            ("prometheus", refused.content_hash, refused.alert.fingerprint)
        assert restored == msgspec.to_builtins(refused.alert)
        assert "extra" not in restored["extra"]
        assert stored(dsn, name)[0] == others + 1
    finally:
        worker.stop()
