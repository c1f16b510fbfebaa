"""Detect a Faust agent that stopped taking records it has already been handed.

Faust sometimes stops delivering events to an agent while they sit in the agent's own queue: seen
here after a restart with a backlog (the agent takes one record, then waits forever with the rest
queued), and reported upstream as consumers that "slowly die" (faust-streaming issues 175, 640).
Nothing recovers from that inside the process, so the worker treats it as a crash: log the task
stacks, count it, exit with EXIT_STALLED, and let the supervisor start a fresh process, which
resumes from the committed offsets (at-least-once; the sinks are idempotent).

A stall is precise: the agent is idle (waiting for its next record), records are queued for it,
and that has been so for `timeout_s`. A slow sink is not a stall (the agent is busy), an idle
topic is not a stall (nothing is queued).
"""

from __future__ import annotations

import time
from collections.abc import Callable

EXIT_STALLED = 75  # EX_TEMPFAIL: a restart is expected to help


class AgentWatchdog:
    def __init__(self, name: str, queued: Callable[[], int], timeout_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._queued = queued
        self.timeout_s = timeout_s
        self._clock = clock
        self._busy = False
        self._waiting_since: float | None = None  # first check that saw the agent idle with records queued

    def busy(self) -> None:
        """The agent took a record and is processing it."""
        self._busy = True
        self._waiting_since = None

    def idle(self) -> None:
        """The agent finished its record and waits for the next one."""
        self._busy = False
        self._waiting_since = None

    def stalled_for(self) -> float:
        """Seconds (as seen by periodic checks) the agent has been idle with records queued for it."""
        if self._busy or self._queued() <= 0:
            self._waiting_since = None
            return 0.0
        now = self._clock()
        if self._waiting_since is None:
            self._waiting_since = now
        return now - self._waiting_since

    def is_stalled(self) -> bool:
        return self.stalled_for() >= self.timeout_s


def queue_size(stream) -> Callable[[], int]:  # noqa: ANN001 - a Faust stream
    """Records waiting in the agent's channel queue (0 when the channel has none)."""
    def size() -> int:
        queue = getattr(stream.channel, "queue", None)
        return queue.qsize() if queue is not None else 0
    return size
