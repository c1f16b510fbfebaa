"""Retry topics with growing delays: `alerts.retry.1` (10 s), `.2` (1 min), `.3` (10 min), ...

A record that failed for a transient reason is parked on the tier for its attempt number; the
tier's forwarder sends it back to its target topic once its delay has passed. After the last
tier it goes to the DLQ with reason `retries_exhausted`. Waiting pauses the tier's partitions
(no hot loop), and records of a tier are due in order because they all wait the same delay.
Which tier, and every header, is the error router's (core/errors.py); this module names the
configured topics and times the delays.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from config.settings import Settings
from core.errors import ATTEMPTS, ErrorRouter

T = TypeVar("T")


def tier_topics(settings: Settings) -> list[str]:
    return [f"{settings.topic_retry_prefix}{i}" for i in range(1, len(settings.retry_delays_s) + 1)]


def error_router(settings: Settings) -> ErrorRouter:
    """The error router for the configured dead-letter topic and retry tiers."""
    return ErrorRouter(settings.topic_dlq, tuple(tier_topics(settings)))


def by_origin(items: list[T], origin: Mapping[str, Mapping[str, bytes]], uid: Callable[[T], str]
              ) -> list[tuple[dict[str, bytes], list[T]]]:
    """`items` grouped by the headers of the retry record each came back on (`origin`: uid →
    headers), `{}` for items failing for the first time, in order of first appearance: parked
    again with those headers, each group climbs from its own attempt count toward the DLQ."""
    groups: dict[int, tuple[dict[str, bytes], list[T]]] = {}
    for item in items:
        headers = origin.get(uid(item))
        headers = headers if headers is not None and headers.get(ATTEMPTS) else {}
        groups.setdefault(id(headers) if headers else 0, (dict(headers), []))[1].append(item)
    return list(groups.values())


def due_in_s(record_timestamp_ms: int, delay_s: float, now_ms: int | None = None) -> float:
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    return max(0.0, (record_timestamp_ms + delay_s * 1000 - now_ms) / 1000)
