"""`/healthz` (liveness) and `/readyz` (readiness) of a worker, as named checks with a JSON body.

Liveness asks one thing: is the event loop running freely? A loop blocked right now cannot answer
at all (the probe times out, which is the signal); one that was blocked beyond the threshold in the
last `health_blocked_window_s`, or whose loop monitor stopped probing, answers 503.

Readiness asks whether the worker can do its job now: the broker answers a metadata request,
every sink's circuit is closed, and no watched partition lags more than `ready_max_lag`.
The checks are plain functions so that the gateway can serve the same answers on its own port.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass

from confluent_kafka.admin import AdminClient

from config.metrics import CIRCUIT_STATE
from streams.loop_monitor import HEALTH, LoopHealth

CIRCUIT_NAMES = {0: "closed", 1: "open", 2: "half_open"}


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


def loop_check(window_s: float, probe_interval_s: float, health: LoopHealth = HEALTH, now: float | None = None) -> Check:
    now = time.monotonic() if now is None else now
    if health.last_probe is None:
        return Check("event_loop", False, "the loop monitor has not probed yet")
    # a probe that stopped arriving means the monitor task died or the loop is starved
    if now - health.last_probe > max(5.0, 20 * probe_interval_s):
        return Check("event_loop", False, f"no loop probe for {now - health.last_probe:.1f}s")
    if health.last_blocked is not None and now - health.last_blocked < window_s:
        return Check("event_loop", False,
                     f"blocked {health.last_blocked_s:.2f}s, {now - health.last_blocked:.0f}s ago (window {window_s:g}s)")
    return Check("event_loop", True, "running freely")


def circuit_checks() -> list[Check]:
    """One check per sink, from the circuit state every CircuitBreaker exports."""
    checks = []
    for sample in CIRCUIT_STATE.collect()[0].samples:
        state = CIRCUIT_NAMES.get(int(sample.value), str(sample.value))
        checks.append(Check(f"sink:{sample.labels['sink']}", state == "closed", f"circuit {state}"))
    return checks


def lag_check(max_lag_seen: int, threshold: int, last_poll: float | None, stale_after_s: float) -> Check:
    if threshold == 0:
        return Check("lag", True, "lag check off (ALERTSTREAM_READY_MAX_LAG=0)")
    if last_poll is None:
        return Check("lag", False, "lag not measured yet")
    if time.time() - last_poll > stale_after_s:
        return Check("lag", False, f"last lag measurement {time.time() - last_poll:.0f}s old")
    return Check("lag", max_lag_seen <= threshold, f"max partition lag {max_lag_seen} (threshold {threshold})")


async def broker_check(admin: AdminClient, timeout_s: float = 3.0) -> Check:
    try:
        metadata = await asyncio.to_thread(admin.list_topics, timeout=timeout_s)
    except Exception as exc:  # KafkaException on timeout: the broker is unreachable
        return Check("broker", False, f"metadata request failed: {str(exc)[:200]}")
    return Check("broker", True, f"{len(metadata.brokers)} broker(s), {len(metadata.topics)} topics")


def report(checks: list[Check]) -> tuple[int, dict]:
    """HTTP status and JSON body: 200 when every check passed, else 503 naming the failed ones."""
    failed = [c.name for c in checks if not c.ok]
    return (503 if failed else 200), {"status": "fail" if failed else "ok", "failed": failed,
                                      "checks": [asdict(c) for c in checks]}
