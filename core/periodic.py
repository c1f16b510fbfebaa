"""Background jobs of the worker (maintenance, archiving): run now, then every interval."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def run_periodically(job: Callable[[], Awaitable[object]], interval_s: float, what: str) -> None:
    """Run `job` at once, then every `interval_s` (±10%, so workers do not all run it together).
    A failed run is logged and the next one retries; the stream never waits on it."""
    while True:
        try:
            await job()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; trying again in %.0fs", what, interval_s)
        await asyncio.sleep(interval_s * random.uniform(0.9, 1.1))
