"""Priority inside one worker process: critical work in progress holds the bulk stages back.

Separate topics and agents keep critical alerts out of the bulk backlog's queue, but on a busy
worker both share one event loop and its CPU. So the critical stages hold the gate while they
work on a batch, and the bulk stages wait (briefly, bounded) before taking their next batch while
it is held.

The count is what *this process* is working on, entered and left by the same task (`holding`):
a critical alert normalized here may be deduplicated by another process or replica, so counting
it in here and out there (as an earlier version did) left this process's count up for good and
slowed every bulk batch by the full hold. Across processes the OS shares the CPU; there is
nothing for a gate in one process to wait for in another.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from config.metrics import PRIORITY_IN_FLIGHT


class PriorityGate:
    def __init__(self, max_hold_s: float = 0.5) -> None:
        self.max_hold_s = max_hold_s  # bounded: the bulk path slows while critical work runs, never stops
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextlib.contextmanager
    def holding(self, records: int) -> Iterator[None]:
        """Critical work on `records` records runs inside this block; released however it ends."""
        records = max(records, 1)
        self._in_flight += records
        self._idle.clear()
        PRIORITY_IN_FLIGHT.set(self._in_flight)
        try:
            yield
        finally:
            self._in_flight -= records
            PRIORITY_IN_FLIGHT.set(self._in_flight)
            if self._in_flight == 0:
                self._idle.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def wait_idle(self) -> None:
        if self._idle.is_set():
            return
        try:
            await asyncio.wait_for(self._idle.wait(), self.max_hold_s)
        except asyncio.TimeoutError:
            pass
