"""The stall rule: idle, records queued for the agent, for the whole timeout, as seen by checks."""

from __future__ import annotations

from streams.stall_watchdog import AgentWatchdog, OffsetTracker


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


def test_offsets_start_at_the_committed_offset_and_follow_the_agent() -> None:
    committed = {("t", 0): 2, ("t", 1): None}
    offsets = OffsetTracker(committed.get)
    assert offsets.gap(("t", 0), 2) is None, "the committed offset is the first one expected"
    assert offsets.gap(("t", 0), 3) == 2, "offset 2 was skipped"
    offsets.took(("t", 0), 2)
    assert offsets.gap(("t", 0), 3) is None
    assert offsets.gap(("t", 1), 40) is None, "no commit yet: the first offset handed over is taken as the start"


def test_waiting_counts_records_past_what_the_agent_was_handed() -> None:
    offsets = OffsetTracker({("t", 0): 2, ("t", 1): None}.get)
    assert offsets.waiting({("t", 0): 10, ("t", 1): 5}) == 8, "partition 1 has no known start: not counted"
    offsets.took(("t", 0), 9)
    assert offsets.waiting({("t", 0): 10}) == 0
    assert offsets.waiting({("t", 0): None}) == 0, "an end offset not known yet"


def test_a_revoked_partition_resumes_from_the_committed_offset() -> None:
    committed = {("t", 0): 5}
    offsets = OffsetTracker(committed.get)
    offsets.took(("t", 0), 20)
    offsets.forget([("t", 0)])
    assert offsets.expected(("t", 0)) == 5
