"""The topics alertstream owns, created explicitly with the configured partition count.

Brokers that auto-create topics do so with their own default partition count
(often 1), which would cap parallelism silently; so the worker creates its
topics before it starts consuming.
"""

from __future__ import annotations

import logging

from confluent_kafka.admin import AdminClient, NewTopic

from config.settings import Settings

log = logging.getLogger(__name__)


def topic_names(settings: Settings) -> list[str]:
    from streams.retry import tier_topics

    return tier_topics(settings) + [settings.topic_alerts, settings.topic_critical, settings.topic_normalized,
            settings.topic_normalized_critical, settings.topic_stored, settings.topic_dlq]


def ensure_topics(settings: Settings, timeout_s: float = 30.0) -> list[str]:
    """Create missing topics; return the ones created. Warn about a partition-count mismatch."""
    admin = AdminClient({"bootstrap.servers": settings.require_kafka()})
    existing = admin.list_topics(timeout=timeout_s).topics
    missing = [name for name in topic_names(settings) if name not in existing]
    copartitioned = {settings.topic_normalized, settings.topic_normalized_critical}
    for name in topic_names(settings):
        if name in existing and len(existing[name].partitions) != settings.topic_partitions:
            message = f"topic {name} has {len(existing[name].partitions)} partitions, settings say {settings.topic_partitions}"
            if name in copartitioned:  # the dedup table is co-partitioned with these: a mismatch would stall it
                raise RuntimeError(message + "; the dedup stage's topics must match ALERTSTREAM_TOPIC_PARTITIONS")
            log.warning(message)
    if not missing:
        return []
    futures = admin.create_topics(
        [NewTopic(name, num_partitions=settings.topic_partitions, replication_factor=settings.topic_replication) for name in missing],
        operation_timeout=timeout_s,
    )
    for name, future in futures.items():
        try:
            future.result()
        except Exception as exc:  # lost a race with another worker creating it: fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    log.info("created topics %s", ", ".join(missing))
    return missing
