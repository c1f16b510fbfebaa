import asyncio
import time

from streams.priority import PriorityGate


def test_bulk_waits_while_critical_alerts_are_in_flight_and_resumes_when_done() -> None:
    async def scenario() -> float:
        gate = PriorityGate(max_hold_s=5)
        gate.begin(3)
        asyncio.get_running_loop().call_later(0.2, gate.end, 3)
        started = time.monotonic()
        await gate.wait_idle()
        return time.monotonic() - started

    waited = asyncio.run(scenario())
    assert 0.15 < waited < 2


def test_the_hold_is_bounded_and_counts_never_go_negative() -> None:
    async def scenario() -> float:
        gate = PriorityGate(max_hold_s=0.1)
        gate.begin(1)  # never ended: a lost count
        started = time.monotonic()
        await gate.wait_idle()
        gate.end(5)
        assert gate.in_flight == 0
        return time.monotonic() - started

    assert asyncio.run(scenario()) < 1
