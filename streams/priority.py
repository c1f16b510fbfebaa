"""Priority inside one worker process: critical alerts in flight hold the bulk stages back.

Separate topics and agents keep critical alerts out of the bulk backlog's queue, but on a busy
worker both share one event loop and its CPU. So the critical stages announce the alerts they
have in flight, and the bulk stages wait (briefly, bounded) before taking their next batch while
any are.
"""

from __future__ import annotations

import asyncio


class PriorityGate:
    def __init__(self, max_hold_s: float = 0.5) -> None:
        self.max_hold_s = max_hold_s  # bounded: a lost count can slow the bulk path, never stop it
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def begin(self, alerts: int) -> None:
        if alerts > 0:
            self._in_flight += alerts
            self._idle.clear()

    def end(self, alerts: int) -> None:
        self._in_flight = max(0, self._in_flight - alerts)
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
