"""The dedup table's changelog is a compacted topic, and on a real broker it really compacts: many
changes of few identities shrink to about one record per identity, and a worker that lost its
state directory rebuilds the table from what compaction kept, still recognising exact repeats."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from config.settings import Settings
from streams.topics import ensure_topics
from tables.dedup_state import is_state_key
from tests.conftest import WorkerProcess, free_port, wait_until
from tests.integration.streams.test_pipeline_e2e import generic_alert, produce
from tests.integration.streams.test_worker_restart import restart_settings, sighted_and_rows

pytestmark = pytest.mark.integration

TENANT = "compaction"
# every sighting a change (contents alternate), one round per batch (a batch writes a key's last
# state only): 300 changelog records for 20 keys
IDENTITIES, CHANGES = 20, 15


def changelog_topic(settings: Settings) -> str:
    return f"{settings.app_id}-dedup-state-changelog"  # Faust's name for the table `dedup-state`


def topic_config(admin: AdminClient, topic: str) -> dict[str, str]:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result(timeout=30)
    return {name: entry.value for name, entry in entries.items()}


def records_in(bootstrap: str, topic: str, partitions: int) -> tuple[int, int]:
    """(records, distinct identity keys) in the topic, read from the start (each partition's flow
    positions are records too, under a key of their own: not an identity)."""
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": f"count-{time.monotonic_ns()}",
                       "enable.auto.commit": False, "enable.partition.eof": True})
    count, keys, done = 0, set(), set()
    try:
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        deadline = time.monotonic() + 30
        while len(done) < partitions and time.monotonic() < deadline:
            for m in reader.consume(1000, timeout=1.0):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        done.add(m.partition())
                    continue
                count += 1
                if is_state_key(m.key()):
                    keys.add(m.key())
    finally:
        reader.close()
    return count, len(keys)


def test_the_changelog_compacts_and_a_lost_state_dir_is_rebuilt_from_it(stack_env, tmp_path) -> None:  # noqa: ANN001
    first = restart_settings(stack_env, tmp_path / "first", "compaction")
    if first.local_broker == "tansu":
        pytest.skip("the stand-in broker does not compact topics")
    ensure_topics(first)
    dsn = first.require_database_url()
    bootstrap = first.require_kafka()
    admin = AdminClient({"bootstrap.servers": bootstrap})

    def send(changes: range) -> None:
        records = [("keep", f"k{i}".encode(), generic_alert(50_000 + i, changed=c % 2 == 1))
                   for c in changes for i in range(IDENTITIES)]
        produce(bootstrap, first.topic_alerts, records, tenant=TENANT)

    worker = WorkerProcess(first, tmp_path / "first.log")
    try:
        for change in range(CHANGES):
            send(range(change, change + 1))
            wait_until(lambda: sighted_and_rows(dsn, TENANT)[0] >= IDENTITIES * (change + 1), timeout=180,
                       what=f"change {change} processed")
        assert sighted_and_rows(dsn, TENANT) == (IDENTITIES * CHANGES, IDENTITIES * CHANGES)  # every one a change
    finally:
        assert worker.stop() == 0, worker.log_tail()

    topic = changelog_topic(first)
    assert topic_config(admin, topic)["cleanup.policy"] == "compact"
    before, keys = records_in(bootstrap, topic, first.topic_partitions)
    assert keys == IDENTITIES and before >= IDENTITIES * CHANGES

    # make the cleaner eligible soon (segments roll after 1 s; any dirty share cleans), then roll the
    # active segment with one more write per identity: compaction never touches the active segment
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("segment.ms", "1000", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("min.cleanable.dirty.ratio", "0.01", incremental_operation=AlterConfigOpType.SET),
        ConfigEntry("min.compaction.lag.ms", "0", incremental_operation=AlterConfigOpType.SET),
    ])
    admin.incremental_alter_configs([resource])[resource].result(timeout=30)
    time.sleep(1.5)
    second = first.model_copy(update={"data_dir": tmp_path / "second", "worker_web_port": free_port()})
    worker = WorkerProcess(second, tmp_path / "second.log")  # its recovery reads the changelog too
    try:
        send(range(CHANGES, CHANGES + 1))  # one more change each: new records, the old segment rolled
        expected = IDENTITIES * (CHANGES + 1)
        wait_until(lambda: sighted_and_rows(dsn, TENANT)[0] >= expected, timeout=180, what="the rolling write")
        wait_until(lambda: records_in(bootstrap, topic, first.topic_partitions)[0] <= 3 * IDENTITIES, timeout=180,
                   what=f"the log cleaner compacts {topic}")
    finally:
        assert worker.stop() == 0, worker.log_tail()
    after, keys = records_in(bootstrap, topic, first.topic_partitions)
    assert keys == IDENTITIES and after < before

    # the state directory lost: the table comes back from the compacted changelog alone
    third = first.model_copy(update={"data_dir": tmp_path / "third", "worker_web_port": free_port()})
    worker = WorkerProcess(third, tmp_path / "third.log")
    try:
        send(range(CHANGES, CHANGES + 1))  # exact repeats of each identity's last content
        total = IDENTITIES * (CHANGES + 2)
        wait_until(lambda: sighted_and_rows(dsn, TENANT)[0] >= total, timeout=180, what="the repeats processed")
    finally:
        worker.stop()
    assert sighted_and_rows(dsn, TENANT) == (total, IDENTITIES * (CHANGES + 1)), \
        "exact repeats after the rebuild were stored again: the compacted changelog lost state"
