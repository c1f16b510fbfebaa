"""Consumer lag of alertstream's consumer groups, measured the way Burrow and kafka_exporter do:
the partition's end offset minus the group's committed offset.

Every worker process polls the same groups and partitions (not only its own assignment), so any
one of them gives the whole picture; Prometheus rules aggregate with `max by (group, topic,
partition)` across instances.

A partition the group never committed counts from the log start (the groups read from the
earliest offset), so a group that has not started yet still shows its backlog.

The broker calls are confluent-kafka's AdminClient (`list_consumer_group_offsets`, `list_offsets`):
aiokafka's admin cannot decode group offsets from the local Tansu broker (INFRA.md). They block,
so they run in a thread. Tansu under-reports end offsets (the start of the last record batch + 1),
so lag on the local stack is a lower bound unless producers send one-record batches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from confluent_kafka import OFFSET_INVALID, ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from config.metrics import CONSUMER_LAG, CONSUMER_LAG_POLL_ERRORS, CONSUMER_LAG_POLLED
from config.settings import Settings
from streams.retry import tier_topics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PartitionLag:
    group: str
    topic: str
    partition: int
    committed: int | None  # None: the group never committed on this partition
    start: int
    end: int

    @property
    def lag(self) -> int:
        position = self.start if self.committed is None else max(self.committed, self.start)
        return max(0, self.end - position)


def watched_groups(settings: Settings) -> dict[str, list[str]]:
    """Each consumer group of the worker (see streams/app.py) and the topics it reads, plus any
    group the operator asked for (`lag_extra_groups`)."""
    groups = {
        settings.app_id: [settings.topic_normalized, settings.topic_normalized_critical],  # Faust's agents
        f"{settings.app_id}-normalize": [settings.topic_alerts],
        f"{settings.app_id}-normalize-critical": [settings.topic_critical],
    }
    if settings.search_enabled:
        groups[f"{settings.app_id}-index"] = [settings.topic_stored]
    for tier, topic in enumerate(tier_topics(settings), start=1):
        groups[f"{settings.app_id}-retry-{tier}"] = [topic]
    groups.update(settings.lag_extra_groups)
    return groups


class LagMonitor:
    def __init__(self, settings: Settings, timeout_s: float = 10.0) -> None:
        self.groups = watched_groups(settings)
        self.timeout_s = timeout_s
        self.admin = AdminClient({"bootstrap.servers": settings.require_kafka()})
        self.latest: list[PartitionLag] = []
        self.last_success: float | None = None  # time.time() of the last complete poll

    def max_lag(self) -> int:
        return max((p.lag for p in self.latest), default=0)

    def poll(self) -> list[PartitionLag]:
        """One blocking measurement of every watched group (call it from a thread)."""
        partitions = self._partitions({t for topics in self.groups.values() for t in topics})
        starts = self._offsets(partitions, OffsetSpec.earliest())
        ends = self._offsets(partitions, OffsetSpec.latest())
        result: list[PartitionLag] = []
        for group, topics in self.groups.items():
            mine = [tp for tp in partitions if tp[0] in topics]
            if not mine:
                continue
            try:
                committed = self._committed(group, mine)
            except Exception as exc:  # one group's coordinator trouble must not hide the others
                CONSUMER_LAG_POLL_ERRORS.labels(group).inc()
                log.warning("lag: committed offsets of group %s: %s", group, exc)
                continue
            result += [PartitionLag(group, t, p, committed.get((t, p)), starts[(t, p)], ends[(t, p)]) for t, p in mine]
        return result

    def _partitions(self, topics: set[str]) -> list[tuple[str, int]]:
        metadata = self.admin.list_topics(timeout=self.timeout_s).topics
        return sorted((t, p) for t in topics if t in metadata and not metadata[t].error
                      for p in metadata[t].partitions)

    def _offsets(self, partitions: list[tuple[str, int]], spec: OffsetSpec) -> dict[tuple[str, int], int]:
        if not partitions:
            return {}
        futures = self.admin.list_offsets({TopicPartition(t, p): spec for t, p in partitions},
                                          request_timeout=self.timeout_s)
        return {(tp.topic, tp.partition): f.result().offset for tp, f in futures.items()}

    def _committed(self, group: str, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        request = ConsumerGroupTopicPartitions(group, [TopicPartition(t, p) for t, p in partitions])
        answer = self.admin.list_consumer_group_offsets([request], request_timeout=self.timeout_s)[group].result()
        return {(tp.topic, tp.partition): tp.offset for tp in answer.topic_partitions
                if tp.offset != OFFSET_INVALID and tp.offset >= 0}

    def export(self, lags: list[PartitionLag]) -> None:
        # series of partitions that went away (a topic deleted, a group removed) are dropped
        CONSUMER_LAG.clear()
        for p in lags:
            CONSUMER_LAG.labels(p.group, p.topic, str(p.partition)).set(p.lag)
        self.latest = lags
        self.last_success = time.time()
        CONSUMER_LAG_POLLED.set(self.last_success)

    async def run_forever(self, interval_s: float) -> None:
        while True:
            try:
                self.export(await asyncio.to_thread(self.poll))
            except Exception as exc:  # broker down: keep the last values, count the failure, try again
                CONSUMER_LAG_POLL_ERRORS.labels("*").inc()
                log.warning("lag poll failed: %s", exc)
            await asyncio.sleep(interval_s)
