"""Catch Faust losing track of records it fetched: a skipped offset, or an agent left waiting.

Seen here after a `kill -9` and a restart with a backlog on `alerts.normalized`: the consumer
fetched records that were never handed to the dedup agent (dropped inside Faust's fetch/rebalance
hand-off while the fetch position moved on). Then either nothing more arrives and the agent waits
forever (a stall), or later records arrive and the agent is handed offset N+k without N (a skip:
committing past it would lose those alerts). Upstream reports the same symptom (faust-streaming
issues 175 and 640, "consumers slowly die").

Neither heals in-process, so both are treated as a crash: log, exit with EXIT_STALLED before
anything past the gap is acked, and let the supervisor start a fresh process, which resumes from
the committed offsets (at-least-once; the sinks are idempotent).

- A skip is caught at once: each agent knows the next offset it must be handed per partition
  (the committed offset after an assignment, then the last one it took + 1).
- A stall is caught after `timeout_s`: the agent is idle and the partition's end offset is past
  the next offset it expects, check after check. A busy agent (a slow sink) or an idle topic is
  neither.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable

EXIT_STALLED = 75  # EX_TEMPFAIL: a restart is expected to help
requested = False  # set once the process decided to stop for a fresh one (its exit code is then EXIT_STALLED)


class OffsetTracker:
    """The next offset each partition must hand to one agent; Faust must never skip one."""

    def __init__(self, committed: Callable[[Hashable], int | None]) -> None:
        self._committed = committed  # where the consumer resumes a partition after an assignment
        self._next: dict[Hashable, int] = {}

    def expected(self, tp: Hashable) -> int | None:
        return self._next.get(tp, self._committed(tp))

    def gap(self, tp: Hashable, offset: int) -> int | None:
        """The first skipped offset if `offset` is past the one expected, else None."""
        expected = self.expected(tp)
        return expected if expected is not None and offset > expected else None

    def start(self, tp: Hashable, offset: int) -> None:
        """The partition resumes at `offset` (the group's committed offset, asked of the broker)."""
        self._next.setdefault(tp, offset)

    def took(self, tp: Hashable, offset: int) -> None:
        self._next[tp] = max(self._next.get(tp, 0), offset + 1)

    def forget(self, tps: Iterable[Hashable]) -> None:
        """Partitions revoked: their next owner resumes from the committed offset."""
        for tp in tps:
            self._next.pop(tp, None)

    def waiting(self, end_offsets: dict[Hashable, int | None]) -> int:
        """Records known to exist past what the agent was handed, over the given partitions."""
        total = 0
        for tp, end in end_offsets.items():
            expected = self.expected(tp)
            if end is not None and expected is not None and end > expected:
                total += end - expected
        return total


class AgentWatchdog:
    def __init__(self, name: str, waiting: Callable[[], int], timeout_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._waiting = waiting  # records that exist for this agent and have not been handed to it
        self.timeout_s = timeout_s
        self._clock = clock
        self._busy = False
        self._waiting_since: float | None = None  # first check that saw the agent idle with records waiting

    def busy(self) -> None:
        """The agent took a batch and is processing it."""
        self._busy = True
        self._waiting_since = None

    def idle(self) -> None:
        """The agent finished its batch and waits for the next one."""
        self._busy = False
        self._waiting_since = None

    def stalled_for(self) -> float:
        """Seconds (as seen by periodic checks) the agent has been idle with records waiting for it."""
        if self._busy or self._waiting() <= 0:
            self._waiting_since = None
            return 0.0
        now = self._clock()
        if self._waiting_since is None:
            self._waiting_since = now
        return now - self._waiting_since

    def is_stalled(self) -> bool:
        return self.stalled_for() >= self.timeout_s
