import asyncio
import time

import pytest

from streams.priority import PriorityGate


def test_bulk_waits_while_critical_work_is_held_and_resumes_when_done() -> None:
    async def scenario() -> float:
        gate = PriorityGate(max_hold_s=5)

        async def critical_batch() -> None:
            with gate.holding(3):
                await asyncio.sleep(0.2)

        task = asyncio.create_task(critical_batch())
        await asyncio.sleep(0)  # the critical batch starts first
        started = time.monotonic()
        await gate.wait_idle()
        waited = time.monotonic() - started
        await task
        return waited

    waited = asyncio.run(scenario())
    assert 0.15 < waited < 2


def test_the_hold_is_bounded() -> None:
    async def scenario() -> float:
        gate = PriorityGate(max_hold_s=0.1)
        with gate.holding(1):  # critical work that takes longer than the hold
            started = time.monotonic()
            await gate.wait_idle()
            return time.monotonic() - started

    assert asyncio.run(scenario()) < 1


def test_a_failed_critical_batch_releases_the_gate() -> None:
    """The count is entered and left by the same block: a failure cannot leave it up, which would
    slow every later bulk batch by the whole hold (what a count that another process was meant to
    end did before)."""
    gate = PriorityGate()
    with pytest.raises(RuntimeError):
        with gate.holding(4):
            raise RuntimeError("sink down")
    assert gate.in_flight == 0
    with gate.holding(2), gate.holding(1):
        assert gate.in_flight == 3
    assert gate.in_flight == 0
