"""Event-loop health: a probe that sleeps a fixed interval and measures how late it wakes up.

A late wake-up means something ran on the loop without yielding (a large batch parsed in one go,
a blocking call); it delays every consumer heartbeat and sink write in the process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from config.metrics import EVENT_LOOP_BLOCKED, EVENT_LOOP_LAG

log = logging.getLogger(__name__)


@dataclass
class LoopHealth:
    """What `/healthz` reads (streams/health.py): monotonic times of the last probe and last block."""

    last_probe: float | None = None
    last_blocked: float | None = None
    last_blocked_s: float = 0.0


HEALTH = LoopHealth()  # one event loop per worker process


PROBE_INTERVAL_S = 0.1  # how often the monitor's timer fires, in the worker and the gateway


async def watch_event_loop(interval_s: float, blocked_threshold_s: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        await asyncio.sleep(interval_s)
        lag = max(0.0, loop.time() - started - interval_s)
        EVENT_LOOP_LAG.set(lag)
        HEALTH.last_probe = time.monotonic()
        if lag > blocked_threshold_s:
            HEALTH.last_blocked, HEALTH.last_blocked_s = HEALTH.last_probe, lag
            EVENT_LOOP_BLOCKED.inc()
            log.warning("event loop blocked for %.3fs (threshold %.3fs)", lag, blocked_threshold_s)
