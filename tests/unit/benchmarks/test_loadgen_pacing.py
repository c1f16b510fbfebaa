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
    """The two calls `LoadRun` makes of a librdkafka producer, recorded with their time."""

    def __init__(self) -> None:
        self.produced_at: list[float] = []

    def produce(self, topic: str, value: bytes, key: bytes, headers: Any = None, on_delivery: Any = None) -> None:
        self.produced_at.append(time.monotonic())

    def poll(self, timeout: float = 0) -> int:
        return 0


@pytest.mark.parametrize("rate", [1_000, 5_000])
def test_paced_load_is_exact_and_produced_in_bursts(rate: int) -> None:
    duration = 1.0
    producer = RecordingProducer()
    stats = LoadStats()
    run = LoadRun(producer, "alerts", PayloadFactory(load_profile("default")), Scenario("steady", rate_alerts=rate,
                  duration_s=duration), stats)  # type: ignore[arg-type]
    run.loop(None)
    assert stats.alerts == pytest.approx(rate * duration, rel=0.05)
    # records produced within 1 ms of the previous one belong to the same burst
    bursts = 1 + sum(1 for a, b in zip(producer.produced_at, producer.produced_at[1:]) if b - a > 0.001)
    assert bursts <= 1.5 * duration / loadgen._SLEEP_SLICE_S
    assert stats.records / bursts > 5  # many records per wake-up, not one
