"""The search sink sends one bulk request per write: throttled and refused documents go back to
the circuit breaker, whose shared retry loop (RetryConfig) is the only one."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from config.settings import RetryConfig, Settings
from core.records import RejectedAlerts, WriteBatch
from schemas.alert import Alert, NormalizedAlert
from sinks.base import CircuitBreaker
from sinks.search import SearchSink


def item(uid: str) -> NormalizedAlert:
    return NormalizedAlert(uid, 1000, "h", Alert(name=uid, last_received="2025-01-15T10:00:00Z", fingerprint=uid))


class FakeClient:
    """Answers bulk requests from a script: per request, the status of each document (by uid)."""

    def __init__(self, statuses: list[dict[str, int]]) -> None:
        self.statuses = statuses
        self.requests: list[list[str]] = []

    async def bulk(self, operations: bytes) -> dict[str, Any]:
        import orjson

        lines = operations.split(b"\n")
        uids = [orjson.loads(line)["index"]["_id"] for line in lines[0::2] if line]
        self.requests.append(uids)
        script = self.statuses.pop(0) if self.statuses else {}
        items = []
        for uid in uids:
            status = script.get(uid, 201)
            result: dict[str, Any] = {"_id": uid, "status": status}
            if status >= 300:
                result["error"] = {"type": "mapper_parsing_exception" if status == 400 else "es_rejected_execution_exception",
                                   "reason": "x"}
            items.append({"index": result})
        return {"errors": any(s >= 300 for s in script.values()), "items": items}

    async def close(self) -> None:
        pass


def sink_with(client: FakeClient, throttle_retries: int = 5) -> SearchSink:
    sink = SearchSink(client, "alerts", Settings(search_throttle_retries=throttle_retries))  # type: ignore[arg-type]
    sink._index_ready = True  # noqa: SLF001 - no schema to install against a fake client
    return sink


RETRY = RetryConfig(initial_backoff_s=1, max_backoff_s=8, attempt_timeout_s=5)


def test_a_write_is_one_request_and_hands_back_throttled_and_refused_documents() -> None:
    client = FakeClient([{"b": 429, "c": 400}])
    with pytest.raises(RejectedAlerts) as info:
        asyncio.run(sink_with(client).write(WriteBatch([item("a"), item("b"), item("c")])))
    assert client.requests == [["a", "b", "c"]]  # no retry loop of its own
    assert [a.uid for a in info.value.retry.stored] == ["b"]
    assert list(info.value.rejected) == ["c"] and info.value.rejected["c"].startswith("400 mapper_parsing_exception")


def test_the_breaker_retries_the_throttled_documents_with_the_shared_backoff() -> None:
    client = FakeClient([{"b": 429}, {"b": 503}, {}])
    waits: list[float] = []
    letters: list[str] = []

    async def wait(seconds: float) -> None:
        waits.append(seconds)

    async def dead_letter(a: NormalizedAlert, reason: str) -> None:
        letters.append(a.uid)

    sink = sink_with(client)
    asyncio.run(CircuitBreaker(sink, RETRY, dead_letter, wait=wait,
                               throttle_retries=sink._settings.search_throttle_retries).write(  # noqa: SLF001
        WriteBatch([item("a"), item("b")])))
    assert client.requests == [["a", "b"], ["b"], ["b"]]
    assert len(waits) == 2 and waits[0] <= RETRY.initial_backoff_s < RETRY.initial_backoff_s * 2 >= waits[1]
    assert letters == []


def _indexed_count() -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("alertstream_e2e_index_latency_seconds_count") or 0.0


def test_only_acknowledged_documents_count_in_the_index_latency() -> None:
    before = _indexed_count()
    client = FakeClient([{"b": 429, "c": 400}, {}])
    sink = sink_with(client)
    with pytest.raises(RejectedAlerts):
        asyncio.run(sink.write(WriteBatch([item("a"), item("b"), item("c")])))
    assert _indexed_count() == before + 1  # a; not the throttled b, not the refused c
    asyncio.run(sink.write(WriteBatch([item("b")])))
    assert _indexed_count() == before + 2
