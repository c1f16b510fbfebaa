"""The load generator's pacing loop (`LoadRun.loop`), with a producer that records what it is given:
the rate is exact on average and the records leave in bursts, one per sleep slice, not one wake-up
per record (the broker side is tested in tests/integration/benchmarks/test_loadgen.py)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from benchmarks import loadgen
from benchmarks.loadgen import LoadRun, LoadStats, Scenario
from benchmarks.payload_factory import PayloadFactory, load_profile


class RecordingProducer:
    """The two calls `LoadRun` makes of a librdkafka producer, recorded in order with the loop's sleeps."""

    def __init__(self) -> None:
        self.events: list[str] = []  # "produce", or "sleep" when the loop gives up the CPU

    def produce(self, topic: str, value: bytes, key: bytes, headers: Any = None, on_delivery: Any = None) -> None:
        self.events.append("produce")

    def poll(self, timeout: float = 0) -> int:
        return 0


@pytest.mark.parametrize("rate", [1_000, 5_000])
def test_paced_load_is_exact_and_produced_in_bursts(rate: int, monkeypatch: pytest.MonkeyPatch) -> None:
    duration = 1.0
    producer = RecordingProducer()
    real_sleep = time.sleep

    def recorded_sleep(seconds: float) -> None:
        producer.events.append("sleep")
        real_sleep(seconds)

    monkeypatch.setattr(loadgen.time, "sleep", recorded_sleep)
    stats = LoadStats()
    run = LoadRun(producer, "alerts", PayloadFactory(load_profile("default")), Scenario("steady", rate_alerts=rate,
                  duration_s=duration), stats)  # type: ignore[arg-type]
    run.loop(None)
    assert stats.alerts == pytest.approx(rate * duration, rel=0.05)
    # A burst is the records produced between two sleeps. Counted by the loop's sleeps, not by wall-clock
    # gaps between records, so a preempted process on a busy machine does not split one burst into many.
    bursts = sum(1 for a, b in zip(["sleep"] + producer.events, producer.events) if a == "sleep" and b == "produce")
    assert bursts <= 1.5 * duration / loadgen._SLEEP_SLICE_S
    assert stats.records / bursts > 5  # many records per wake-up, not one
