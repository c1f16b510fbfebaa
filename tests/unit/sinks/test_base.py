"""The circuit breaker's decisions, with a scripted sink (faults a real server cannot be made to
produce on cue: a given alert refused, a given number of outages)."""

from __future__ import annotations

import asyncio

import pytest

from config.settings import RetryConfig
from core.records import RejectedAlerts, Sighting, WriteBatch
from schemas.alert import Alert, NormalizedAlert
from sinks.base import CircuitBreaker, CircuitState


class BadValue(Exception):
    pass


def item(uid: str) -> NormalizedAlert:
    return NormalizedAlert(uid, 1000, "h", Alert(name=uid, last_received="t", fingerprint=uid))


def batch(*uids: str, duplicates: int = 0) -> WriteBatch:
    stored = [item(u) for u in uids]
    sightings = [Sighting("t", a.alert.fingerprint, 1000, 0, i, a, "alerts:0") for i, a in enumerate(stored)]
    sightings += [Sighting("t", f"dup{i}", 1000, 0, 100 + i, None, "alerts:0") for i in range(duplicates)]
    return WriteBatch(stored, sightings)


class ScriptedSink:
    name = "scripted"

    def __init__(self, outages: int = 0, poison: set[str] = frozenset(), throttled_once: set[str] = frozenset()) -> None:
        self.outages = outages
        self.poison = set(poison)
        self.throttled = set(throttled_once)
        self.written: list[str] = []
        self.sightings_written = 0
        self.attempts = 0

    def is_permanent(self, exc: Exception) -> bool:
        return isinstance(exc, BadValue)

    async def write(self, b: WriteBatch) -> int:
        self.attempts += 1
        if self.outages:
            self.outages -= 1
            raise ConnectionRefusedError("server down")
        if any(a.uid in self.poison for a in b.stored):
            raise BadValue("invalid byte sequence")  # the whole transaction fails, as in Postgres
        throttled = [a for a in b.stored if a.uid in self.throttled]
        if throttled:
            self.throttled -= {a.uid for a in throttled}
            ok = [a for a in b.stored if a not in throttled]
            self.written += [a.uid for a in ok]
            raise RejectedAlerts({}, WriteBatch(throttled))
        self.written += [a.uid for a in b.stored]
        self.sightings_written += len(b.sightings)
        return len(b.stored)


class Recorder:
    def __init__(self) -> None:
        self.letters: list[tuple[str, str]] = []
        self.waits: list[float] = []

    async def dead_letter(self, a: NormalizedAlert, reason: str) -> None:
        self.letters.append((a.uid, reason))

    async def wait(self, seconds: float) -> None:
        self.waits.append(seconds)


RETRY = RetryConfig(initial_backoff_s=1, max_backoff_s=8, attempt_timeout_s=5)


def breaker(sink: ScriptedSink, rec: Recorder) -> CircuitBreaker:
    return CircuitBreaker(sink, RETRY, rec.dead_letter, wait=rec.wait)


def test_outage_opens_the_circuit_waits_longer_each_time_then_writes_everything() -> None:
    sink, rec = ScriptedSink(outages=5), Recorder()
    cb = breaker(sink, rec)
    asyncio.run(cb.write(batch("a", "b")))
    assert sink.written == ["a", "b"] and cb.state is CircuitState.CLOSED
    assert len(rec.waits) == 5
    assert rec.waits[-1] > RETRY.initial_backoff_s  # grows...
    assert max(rec.waits) <= RETRY.max_backoff_s    # ...up to the cap, never a hot loop
    assert rec.letters == []


def test_a_poison_alert_is_isolated_by_bisection_and_the_rest_is_written() -> None:
    sink, rec = ScriptedSink(poison={"c"}), Recorder()
    asyncio.run(breaker(sink, rec).write(batch("a", "b", "c", "d", "e", duplicates=2)))
    assert sorted(sink.written) == ["a", "b", "d", "e"]
    assert [uid for uid, _ in rec.letters] == ["c"]
    assert "BadValue" in rec.letters[0][1]
    assert rec.waits == []  # bad data is not an outage: no waiting
    assert sink.sightings_written == 4 + 2  # the duplicates' sightings are not lost with the poison


def test_throttled_documents_are_retried_after_a_wait_and_rejected_ones_dead_lettered() -> None:
    class Partial(ScriptedSink):
        async def write(self, b: WriteBatch) -> int:
            if any(a.uid == "bad" for a in b.stored):
                ok = [a for a in b.stored if a.uid != "bad"]
                self.written += [a.uid for a in ok if a.uid not in self.throttled]
                retry = [a for a in ok if a.uid in self.throttled]
                self.throttled.clear()
                raise RejectedAlerts({"bad": "400 mapper_parsing_exception"}, WriteBatch(retry))
            return await super().write(b)

    sink, rec = Partial(throttled_once={"slow"}), Recorder()
    asyncio.run(breaker(sink, rec).write(batch("a", "bad", "slow")))
    assert sorted(sink.written) == ["a", "slow"]
    assert rec.letters == [("bad", "scripted: 400 mapper_parsing_exception")]
    assert len(rec.waits) == 1


def test_split_keeps_each_sighting_with_its_alert() -> None:
    first, second = batch("a", "b", "c", duplicates=1).split()
    assert [a.uid for a in first.stored] == ["a"] and [a.uid for a in second.stored] == ["b", "c"]
    assert {s.fingerprint for s in first.sightings} == {"a", "dup0"}
    assert {s.fingerprint for s in second.sightings} == {"b", "c"}


@pytest.mark.parametrize("outages", [0, 1, 3])
def test_circuit_state_metric_ends_closed(outages: int) -> None:
    from prometheus_client import REGISTRY

    sink, rec = ScriptedSink(outages=outages), Recorder()
    asyncio.run(breaker(sink, rec).write(batch("x")))
    assert REGISTRY.get_sample_value("alertstream_sink_circuit_state", {"sink": "scripted"}) == 0


def test_throttled_documents_are_retried_by_the_breaker_then_handed_to_a_retry_topic() -> None:
    class AlwaysThrottled(ScriptedSink):
        async def write(self, b: WriteBatch) -> int:
            self.attempts += 1
            raise RejectedAlerts({}, WriteBatch([a for a in b.stored]))

    parked: list[list[str]] = []

    async def retry_later(b: WriteBatch, exc: Exception) -> None:
        parked.append([a.uid for a in b.stored])

    sink, rec = AlwaysThrottled(), Recorder()
    cb = CircuitBreaker(sink, RETRY, rec.dead_letter, wait=rec.wait, retry_later=retry_later, throttle_retries=2)
    asyncio.run(cb.write(batch("a", "b")))
    assert sink.attempts == 3 and len(rec.waits) == 2  # the first try and two retries, with the shared backoff
    assert parked == [["a", "b"]] and cb.state is CircuitState.CLOSED


def test_throttled_documents_written_on_a_retry_are_not_parked() -> None:
    parked: list[WriteBatch] = []

    async def retry_later(b: WriteBatch, exc: Exception) -> None:
        parked.append(b)

    sink, rec = ScriptedSink(throttled_once={"b"}), Recorder()
    asyncio.run(CircuitBreaker(sink, RETRY, rec.dead_letter, wait=rec.wait, retry_later=retry_later,
                               throttle_retries=1).write(batch("a", "b")))
    assert sorted(sink.written) == ["a", "b"] and parked == [] and len(rec.waits) == 1


def test_give_up_after_raises_the_outage_instead_of_probing_forever() -> None:
    sink, rec = ScriptedSink(outages=10), Recorder()
    cb = CircuitBreaker(sink, RETRY, rec.dead_letter, wait=rec.wait, give_up_after=3)
    with pytest.raises(ConnectionRefusedError):
        asyncio.run(cb.write(batch("a")))
    assert sink.attempts == 3 and len(rec.waits) == 2
    assert cb.state is CircuitState.CLOSED  # a job that gave up leaves no open circuit behind (readiness)


def test_a_raw_batch_is_never_bisected_and_every_failure_is_retried() -> None:
    from sinks.raw_storage import RawBatch

    class RawScripted:
        name = "raw-scripted"

        def __init__(self) -> None:
            self.calls: list[int] = []

        def is_permanent(self, exc: Exception) -> bool:
            return True  # even a sink calling a failure permanent: no row can be refused alone

        async def write(self, b: RawBatch) -> int:
            self.calls.append(b.size)
            if len(self.calls) < 3:
                raise ValueError("refused")
            return b.size

    sink, rec = RawScripted(), Recorder()
    cb: CircuitBreaker[RawBatch] = CircuitBreaker(sink, RETRY, rec.dead_letter, wait=rec.wait)
    asyncio.run(cb.write(RawBatch([("r1",), ("r2",), ("r3",)])))
    assert sink.calls == [3, 3, 3] and rec.letters == [] and len(rec.waits) == 2


def test_write_batch_without_keeps_the_duplicates_sightings() -> None:
    b = batch("a", "b", duplicates=2)
    rest = b.without({"a"})
    assert [a.uid for a in rest.stored] == ["b"]
    assert sorted(s.fingerprint for s in rest.sightings) == ["b", "dup0", "dup1"]
    assert not rest.is_empty() and WriteBatch([], rest.sightings[1:]).size == 0
    assert WriteBatch().is_empty()
