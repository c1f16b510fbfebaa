"""The stall rule: idle, records queued for the agent, for the whole timeout, as seen by checks."""

from __future__ import annotations

from streams.stall_watchdog import AgentWatchdog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def watchdog(queued: list[int], clock: Clock, timeout_s: float = 60) -> AgentWatchdog:
    return AgentWatchdog("dedup", lambda: queued[0], timeout_s, clock=clock)


def test_idle_with_records_queued_for_the_timeout_is_a_stall() -> None:
    clock, queued = Clock(), [0]
    w = watchdog(queued, clock)
    clock.now = 1000  # a long quiet period first: it must not count
    assert not w.is_stalled()
    queued[0] = 5
    assert not w.is_stalled(), "records just arrived"
    clock.now += 59
    assert not w.is_stalled()
    clock.now += 1
    assert w.is_stalled() and w.stalled_for() == 60


def test_a_busy_agent_is_never_stalled() -> None:
    clock, queued = Clock(), [100]
    w = watchdog(queued, clock)
    w.busy()  # a slow sink: the agent holds its batch for minutes
    for _ in range(10):
        clock.now += 60
        assert not w.is_stalled()


def test_taking_a_record_resets_the_count() -> None:
    clock, queued = Clock(), [3]
    w = watchdog(queued, clock)
    w.is_stalled()
    clock.now += 50
    w.busy()
    w.idle()
    w.is_stalled()
    clock.now += 50
    assert not w.is_stalled(), "50 s since the agent last took a record"


def test_an_empty_queue_is_not_a_stall() -> None:
    clock, queued = Clock(), [0]
    w = watchdog(queued, clock)
    for _ in range(10):
        clock.now += 60
        assert not w.is_stalled()
