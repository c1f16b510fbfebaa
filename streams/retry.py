"""Retry topics with growing delays: `alerts.retry.1` (10 s), `.2` (1 min), `.3` (10 min), ...

A record that failed for a transient reason is parked on the tier for its attempt number; the
tier's forwarder sends it back to its target topic once its delay has passed. After the last
tier it goes to the DLQ with reason `retries_exhausted`. Waiting pauses the tier's partitions
(no hot loop), and records of a tier are due in order because they all wait the same delay.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from config.settings import Settings
from core.retry_headers import ATTEMPT, FIRST_FAILURE, TARGET

log = logging.getLogger(__name__)


def tier_topics(settings: Settings) -> list[str]:
    return [f"{settings.topic_retry_prefix}{i}" for i in range(1, len(settings.retry_delays_s) + 1)]


def retry_headers(original: dict[str, bytes], *, source: str, partition: int, offset: int, error: Exception | str,
                  target: str, now_ms: int) -> dict[str, bytes]:
    """Headers of the next attempt: what failed, where the record came from, how often it was tried."""
    attempt = int(original.get(ATTEMPT, b"0") or 0) + 1
    error_class = type(error).__name__ if isinstance(error, Exception) else "Error"
    headers = dict(original)
    headers.update({
        ATTEMPT: str(attempt).encode(),
        FIRST_FAILURE: original.get(FIRST_FAILURE) or str(now_ms).encode(),
        TARGET: target.encode(),
        "dlq_topic": original.get("dlq_topic") or source.encode(),
        "dlq_partition": original.get("dlq_partition") or str(partition).encode(),
        "dlq_offset": original.get("dlq_offset") or str(offset).encode(),
        "dlq_error_class": error_class.encode(),
        "dlq_detail": str(error)[:2000].encode(),
    })
    return headers


@dataclass(frozen=True)
class Route:
    topic: str  # where the record goes now
    dead: bool  # True: the DLQ, retries exhausted


def route_for(headers: dict[str, bytes], settings: Settings) -> Route:
    """The tier for the record's attempt number, or the DLQ after the last one."""
    attempt = int(headers.get(ATTEMPT, b"1"))
    tiers = tier_topics(settings)
    if attempt > len(tiers):
        return Route(settings.topic_dlq, dead=True)
    return Route(tiers[attempt - 1], dead=False)


def due_in_s(record_timestamp_ms: int, delay_s: float, now_ms: int | None = None) -> float:
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    return max(0.0, (record_timestamp_ms + delay_s * 1000 - now_ms) / 1000)
