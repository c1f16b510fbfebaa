import asyncio
import time

from prometheus_client import REGISTRY

from streams.loop_monitor import watch_event_loop


def blocked_total() -> float:
    return REGISTRY.get_sample_value("alertstream_event_loop_blocked_total") or 0.0


def test_a_blocking_call_is_measured_and_counted() -> None:
    async def scenario() -> None:
        probe = asyncio.create_task(watch_event_loop(0.02, 0.1))
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # a blocking call on the loop, on purpose
        await asyncio.sleep(0.05)
        probe.cancel()

    before = blocked_total()
    asyncio.run(scenario())
    assert blocked_total() == before + 1
    assert REGISTRY.get_sample_value("alertstream_event_loop_lag_seconds") < 0.25  # recovered after the blocking call
