"""`sinks.base.Sinks`, the one owner of the sinks' lifecycle: start order, reverse close order,
a close even after a failed start, and stages sharing sinks in the worker."""

from __future__ import annotations

import asyncio

import pytest

from sinks.base import Sinks


class FakeSink:
    def __init__(self, name: str, log: list[str], fail_start: bool = False, fail_close: bool = False) -> None:
        self.name = name
        self.log = log
        self.fail_start = fail_start
        self.fail_close = fail_close

    async def start(self) -> None:
        self.log.append(f"start {self.name}")
        await asyncio.sleep(0)
        if self.fail_start:
            raise ConnectionRefusedError(f"{self.name} down")

    async def write(self, batch: object) -> int:
        return 0

    def is_permanent(self, exc: Exception) -> bool:
        return False

    async def close(self) -> None:
        self.log.append(f"close {self.name}")
        if self.fail_close:
            raise RuntimeError("close failed")


def test_starts_in_order_and_closes_in_reverse() -> None:
    log: list[str] = []

    async def run() -> None:
        async with Sinks(FakeSink("postgres", log), FakeSink("raw", log), FakeSink("search", log)):
            log.append("work")

    asyncio.run(run())
    assert log == ["start postgres", "start raw", "start search", "work", "close search", "close raw", "close postgres"]


def test_a_failed_start_closes_every_sink_and_raises() -> None:
    log: list[str] = []

    async def run() -> None:
        async with Sinks(FakeSink("postgres", log), FakeSink("search", log, fail_start=True), FakeSink("raw", log)):
            log.append("work")  # never

    with pytest.raises(ConnectionRefusedError):
        asyncio.run(run())
    # the failed one is closed too (its client exists), and the one never started: close is safe on both
    assert log == ["start postgres", "start search", "close raw", "close search", "close postgres"]


def test_a_failing_close_does_not_leave_the_others_open() -> None:
    log: list[str] = []

    async def run() -> None:
        async with Sinks(FakeSink("a", log), FakeSink("b", log, fail_close=True), FakeSink("c", log)):
            pass

    asyncio.run(run())
    assert log[-3:] == ["close c", "close b", "close a"]


def test_stages_share_sinks_started_once_and_closed_by_the_last_to_leave() -> None:
    log: list[str] = []
    sinks = Sinks()
    postgres = sinks.add(FakeSink("postgres", log))
    search = sinks.add(FakeSink("search", log))
    left = asyncio.Event()

    async def dedup(stage: str) -> None:
        async with sinks.use(postgres):
            log.append(f"{stage} runs")
            await left.wait()
        log.append(f"{stage} left")

    async def index() -> None:
        async with sinks.use(search):
            log.append("index runs")
        log.append("index left")

    async def run() -> None:
        stages = [asyncio.create_task(dedup("bulk")), asyncio.create_task(dedup("critical"))]
        await asyncio.sleep(0.01)
        await index()  # leaves first: nothing is closed while the dedup stages still write
        assert not any(line.startswith("close") for line in log)
        left.set()
        await asyncio.gather(*stages)

    asyncio.run(run())
    assert log.count("start postgres") == 1 and log.count("start search") == 1
    # by the last stage to leave, in reverse order
    assert [line for line in log if line.startswith("close")] == ["close search", "close postgres"]
    assert log.index("bulk left") < log.index("close search") < log.index("critical left")


def test_a_stage_whose_sink_failed_to_start_still_releases_and_a_later_start_tries_again() -> None:
    log: list[str] = []
    sinks = Sinks()
    flaky = sinks.add(FakeSink("search", log, fail_start=True))

    async def run() -> None:
        for _ in range(2):
            with pytest.raises(ConnectionRefusedError):
                async with sinks.use(flaky):
                    pass
        flaky.fail_start = False
        async with sinks.use(flaky):
            log.append("work")

    asyncio.run(run())
    assert log == ["start search", "close search", "start search", "close search", "start search", "work", "close search"]


def test_only_registered_sinks_are_started() -> None:
    sinks = Sinks(FakeSink("a", []))
    with pytest.raises(ValueError):
        asyncio.run(sinks.start(FakeSink("b", [])))
    with pytest.raises(ValueError):
        sinks.add(sinks.registered[0])
