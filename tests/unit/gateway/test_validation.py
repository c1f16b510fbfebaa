"""The gateway's validation processes (gateway/validation.py): real processes, real pipes.

The validator is the pipeline's own code for the examples; for timing (slow, crashing, memory-hungry
bodies) a validator of this module runs in the processes instead, so the checks do not depend on how
fast the normalizer happens to be.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from gateway.validation import Outcome, PoolBusy, ValidationPool, ValidatorFailed, validate_body

EXAMPLES = Path(__file__).resolve().parents[3] / "schemas" / "examples"
PROVIDER_OF = {"cloudwatch": "cloudwatch", "datadog": "datadog", "grafana": "grafana", "keep": None, "pagerduty": "pagerduty",
               "prometheus": "prometheus", "sentry": "sentry", "zabbix": "zabbix"}


def scripted(body: bytes, headers: dict[str, bytes], default_tenant: str, max_payload_bytes: int) -> Outcome:
    """Runs in the validation processes: `sleep:<s>`, `crash`, `hog`, `env`, else one alert."""
    if body.startswith(b"sleep:"):
        time.sleep(float(body[6:]))
    elif body == b"crash":
        os._exit(3)
    elif body == b"hog":
        hoard = bytearray(2 * 1024 * 1024 * 1024)  # over the process's address-space cap
        return Outcome(len(hoard))
    elif body == b"env":
        return Outcome(detail=",".join(sorted(k for k in os.environ if k.startswith("ALERTSTREAM_"))))
    return Outcome(1, headers.get("tenant", b""))


SCRIPTED = f"{__name__}:scripted"


def pool(**kw) -> ValidationPool:  # noqa: ANN003
    args = {"processes": 2, "timeout_s": 5.0, "tenant_pending": 8, "default_tenant": "default", "max_payload_bytes": 1 << 20,
            "validator": SCRIPTED, **kw}
    return ValidationPool(**args)


def run(coro):  # noqa: ANN001, ANN201
    return asyncio.run(coro)


def test_the_processes_answer_what_the_pipeline_code_answers_in_process() -> None:
    bodies = [(p.read_bytes(), PROVIDER_OF[p.name.split("_")[0]]) for p in sorted(EXAMPLES.glob("*.json"))]
    bodies += [(b"{not json", None), (b"[1, 2]", "prometheus"), (b'{"name": "a\\u0000b"}', None), (b"", None)]

    async def go() -> list[tuple[Outcome, Outcome]]:
        p = pool(validator="gateway.validation:validate_body")
        await p.start()
        try:
            out = []
            for body, provider in bodies:
                headers = {"tenant": b"acme", **({"provider": provider.encode()} if provider else {})}
                out.append((await p.validate("acme", body, headers), validate_body(body, headers, "default", 1 << 20)))
            return out
        finally:
            await p.close()
    pairs = run(go())
    assert all(a == b for a, b in pairs), [a for a, b in pairs if a != b]
    assert sum(o.reason is None and o.alerts >= 1 for o, _ in pairs) >= 10
    assert {o.reason for o, _ in pairs} >= {"malformed_json", "invalid_shape", "invalid_field", "empty"}


def test_a_tenants_slow_bodies_do_not_delay_another_tenant() -> None:
    """Tenant A queues five 1 s bodies; tenant B's body is answered while A's first still runs (A holds at
    most processes - 1 = 1 process); A's bodies run one after another, so its own later ones wait."""
    async def go() -> tuple[float, list[float]]:
        p = pool(processes=2)
        await p.start()
        try:
            started = time.monotonic()
            a_jobs = [asyncio.create_task(p.validate("a", b"sleep:1", {"tenant": b"a"})) for _ in range(5)]
            await asyncio.sleep(0.1)
            t0 = time.monotonic()
            assert (await p.validate("b", b"fast", {"tenant": b"b"})).key == b"b"
            b_latency = time.monotonic() - t0
            done = []
            for job in asyncio.as_completed(a_jobs):
                await job
                done.append(time.monotonic() - started)
            return b_latency, done
        finally:
            await p.close()
    b_latency, a_done = run(go())
    assert b_latency < 0.5, f"tenant B waited {b_latency:.2f} s behind tenant A"
    assert a_done[-1] >= 4.5, "A may never use both processes at once"


def test_round_robin_between_waiting_tenants() -> None:
    """With one process, B and C's bodies are not served after all of A's: turns alternate."""
    async def go() -> list[str]:
        p = pool(processes=1)
        await p.start()
        order: list[str] = []

        async def one(tenant: str) -> None:
            await p.validate(tenant, b"sleep:0.05", {"tenant": tenant.encode()})
            order.append(tenant)
        try:
            tasks = [asyncio.create_task(one("a")) for _ in range(4)]
            await asyncio.sleep(0.01)
            tasks += [asyncio.create_task(one("b")), asyncio.create_task(one("c"))]
            await asyncio.gather(*tasks)
            return order
        finally:
            await p.close()
    order = run(go())
    assert order.index("b") <= 2 and order.index("c") <= 3, order


def test_a_body_over_the_time_limit_is_refused_and_its_process_replaced() -> None:
    async def go() -> tuple[float, Outcome]:
        p = pool(processes=2, timeout_s=0.5)
        await p.start()
        try:
            t0 = time.monotonic()
            with pytest.raises(TimeoutError):
                await p.validate("a", b"sleep:30", {"tenant": b"a"})
            elapsed = time.monotonic() - t0
            assert p.stats.timeouts == 1
            return elapsed, await asyncio.wait_for(p.validate("a", b"fast", {"tenant": b"a"}), 30)
        finally:
            await p.close()
    elapsed, after = run(go())
    assert 0.5 <= elapsed < 2.0
    assert after.alerts == 1


def test_a_crashed_process_fails_its_job_and_is_replaced() -> None:
    async def go() -> Outcome:
        p = pool(processes=1)
        await p.start()
        try:
            with pytest.raises(ValidatorFailed):
                await p.validate("a", b"crash", {"tenant": b"a"})
            assert p.stats.crashes == 1
            return await asyncio.wait_for(p.validate("a", b"fast", {"tenant": b"a"}), 30)
        finally:
            await p.close()
    assert run(go()).alerts == 1


def test_a_body_that_needs_too_much_memory_is_refused_not_granted() -> None:
    async def go() -> tuple[Outcome, Outcome]:
        p = pool(processes=1, memory_limit=512 * 1024 * 1024)
        await p.start()
        try:
            return await p.validate("a", b"hog", {"tenant": b"a"}), await p.validate("a", b"fast", {"tenant": b"a"})
        finally:
            await p.close()
    hog, after = run(go())
    assert hog.reason == "validation_memory" and "512 MiB" in hog.detail
    assert after.alerts == 1


def test_a_tenant_with_too_many_waiting_is_pushed_back_others_are_not() -> None:
    async def go() -> None:
        p = pool(processes=2, tenant_pending=3)
        await p.start()
        try:
            a_jobs = [asyncio.create_task(p.validate("a", b"sleep:0.5", {"tenant": b"a"})) for _ in range(3)]
            await asyncio.sleep(0.05)
            with pytest.raises(PoolBusy):
                await p.validate("a", b"fast", {"tenant": b"a"})
            assert (await p.validate("b", b"fast", {"tenant": b"b"})).alerts == 1
            await asyncio.gather(*a_jobs)
            assert (await p.validate("a", b"fast", {"tenant": b"a"})).alerts == 1  # room again
        finally:
            await p.close()
    run(go())


def test_a_request_that_goes_away_frees_its_place() -> None:
    async def go() -> None:
        p = pool(processes=1, tenant_pending=2)
        await p.start()
        try:
            running = asyncio.create_task(p.validate("a", b"sleep:0.3", {"tenant": b"a"}))
            await asyncio.sleep(0.05)
            queued = asyncio.create_task(p.validate("a", b"sleep:30", {"tenant": b"a"}))
            await asyncio.sleep(0.05)
            queued.cancel()  # the client disconnected while its body waited
            await asyncio.gather(queued, return_exceptions=True)
            await running
            # the cancelled body never ran (it would take 30 s): the next one is answered at once
            assert (await asyncio.wait_for(p.validate("a", b"fast", {"tenant": b"a"}), 5)).alerts == 1
        finally:
            await p.close()
    run(go())


def test_a_body_that_waits_too_long_for_a_process_is_pushed_back() -> None:
    """A tenant's own backlog: its jobs run one at a time; one still queued after timeout_s gives up (PoolBusy)."""
    async def go() -> list[object]:
        p = pool(processes=2, timeout_s=1.0, tenant_pending=8)
        await p.start()
        try:
            return await asyncio.gather(*(p.validate("a", b"sleep:0.6", {"tenant": b"a"}) for _ in range(4)),
                                        return_exceptions=True)
        finally:
            await p.close()
    answers = run(go())
    assert [type(a) for a in answers[:1]] == [Outcome]  # the first ran at once
    assert any(isinstance(a, PoolBusy) for a in answers[2:]), answers  # the last ones waited > 1 s for their turn


def test_the_processes_get_no_alertstream_settings_from_the_environment(monkeypatch) -> None:  # noqa: ANN001
    """They parse hostile bodies: the database URL (with its password) has no business there."""
    monkeypatch.setenv("ALERTSTREAM_DATABASE_URL", "postgresql://u:secret@db/x")

    async def go() -> Outcome:
        p = pool(processes=1)
        await p.start()
        try:
            return await p.validate("a", b"env", {"tenant": b"a"})
        finally:
            await p.close()
    assert run(go()).detail == ""
