"""The worker's observability endpoints, beside `/metrics` on its Faust web server:

- `/healthz`, `/readyz`: liveness and readiness (streams/health.py), JSON, 200 or 503;
- `/status`: a self-contained HTML page (streams/static/status.html, no CDN) for `make run` users
  without Grafana: lag per partition, throughput, dedup ratio, DLQ, sink circuits; it polls
- `/status.json`: a snapshot of the metrics, read from the process's own Prometheus registry, so
  the page shows exactly what `/metrics` exports; merged with the sibling processes' snapshots
  (their ports come from the supervisor), so the page shows the whole worker. Neither page needs a
  login, so neither names a tenant: no per-tenant numbers, only totals per provider, outcome, stage.

`install(app, settings)` also starts the consumer-lag poller (streams/lag.py).

With several worker processes, lag is complete on every process (each polls every partition);
counters are summed over the processes by `merge_snapshots` (`?local=1` asks for one process).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import defaultdict, deque
from importlib import resources

import aiohttp
import faust
from confluent_kafka.admin import AdminClient
from prometheus_client import REGISTRY

from config.settings import Settings
from streams.health import broker_check, circuit_checks, lag_check, loop_check, report
from streams.lag import LagMonitor
from streams.loop_monitor import PROBE_INTERVAL_S as LOOP_PROBE_INTERVAL_S


def _samples(name: str) -> list:
    """Samples of one metric family (name without _total) from the default registry."""
    return [s for family in REGISTRY.collect() if family.name == name for s in family.samples
            if not s.name.endswith("_created")]


def _sum_by(name: str, *labels: str, suffix: str = "") -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for s in _samples(name):
        if suffix and not s.name.endswith(suffix):
            continue
        totals["/".join(s.labels.get(label, "") for label in labels)] += s.value
    return dict(totals)


def _value(name: str) -> float | None:
    return REGISTRY.get_sample_value(name)


RATE_WINDOW_S = 5.0


class RateWindow:
    """Per-second rates of a few counters over the last RATE_WINDOW_S, sampled by the worker itself
    once a second, so the page's rates do not depend on how often (or when) a browser polls."""

    def __init__(self) -> None:
        self.samples: deque[tuple[float, dict[str, dict[str, float]]]] = deque(maxlen=int(RATE_WINDOW_S) + 1)

    def sample(self, now: float | None = None) -> None:
        self.samples.append((time.time() if now is None else now, _rate_counters()))

    def rates(self) -> dict[str, dict[str, float]]:
        if len(self.samples) < 2:
            return {}
        (t0, first), (t1, last) = self.samples[0], self.samples[-1]
        return {kind: {k: max(0.0, v - first.get(kind, {}).get(k, 0.0)) / (t1 - t0) for k, v in values.items()}
                for kind, values in last.items()}


def _rate_counters() -> dict[str, dict[str, float]]:
    return {"stage": _sum_by("alertstream_records_received", "stage"),
            "provider": _sum_by("alertstream_alerts", "provider"),
            "outcome": _sum_by("alertstream_alerts", "outcome")}


def snapshot(window: RateWindow | None = None) -> dict:
    """Everything the status page shows: counters as totals, rates over the last few seconds."""
    outcomes = _sum_by("alertstream_alerts", "outcome")
    seen = sum(outcomes.values())
    return {
        "time": time.time(),
        "rates": window.rates() if window is not None else {},
        "lag": sorted(({"group": s.labels["group"], "topic": s.labels["topic"],
                        "partition": int(s.labels["partition"]), "lag": s.value}
                       for s in _samples("alertstream_consumer_lag")),
                      key=lambda r: (r["group"], r["topic"], r["partition"])),
        "lag_polled_at": _value("alertstream_consumer_lag_last_poll_timestamp_seconds"),
        "records_received": _sum_by("alertstream_records_received", "stage"),
        "alerts_by_outcome": outcomes,
        "alerts_by_provider": _sum_by("alertstream_alerts", "provider"),
        # no tenant breakdown: this page needs no login, and tenant names are not for everyone who can
        # reach the port (per-tenant numbers are in /metrics, for Prometheus and Grafana's login)
        "dedup_ratio": (outcomes.get("duplicate", 0) / seen) if seen else None,
        "dlq_by_reason": _sum_by("alertstream_dlq_records", "reason"),
        "retries_by_topic": _sum_by("alertstream_retry_records", "topic"),
        "sinks": {sink: {"circuit": int(state),
                         "written": _sum_by("alertstream_sink_rows_written", "sink").get(sink, 0),
                         "errors": sum(v for k, v in _sum_by("alertstream_sink_errors", "sink", "error").items()
                                       if k.startswith(sink + "/"))}
                  for sink, state in _sum_by("alertstream_sink_circuit_state", "sink").items()},
        "event_loop_lag_s": _value("alertstream_event_loop_lag_seconds"),
        "event_loop_blocked": _value("alertstream_event_loop_blocked_total"),
        "rss_bytes": _value("alertstream_worker_rss_bytes"),
    }


SIBLING_PORTS_ENV = "ALERTSTREAM_SIBLING_WEB_PORTS"  # set by the supervisor (streams/supervisor.py), not a setting

_SUMMED = ("records_received", "alerts_by_outcome", "alerts_by_provider", "dlq_by_reason", "retries_by_topic")


def merge_snapshots(own: dict, others: list[dict]) -> dict:
    """One worker's page for all its processes: counters, rates and memory add up; circuits and
    event-loop lag show the worst process; lag is the same in every process (each polls every
    partition), so this process's view stands."""
    merged = dict(own, processes=1 + len(others))
    for other in others:
        for key in _SUMMED:
            merged[key] = _add(merged.get(key) or {}, other.get(key) or {})
        rates = dict(merged.get("rates") or {})
        for kind, values in (other.get("rates") or {}).items():
            rates[kind] = _add(rates.get(kind, {}), values)
        merged["rates"] = rates
        sinks = dict(merged.get("sinks") or {})
        for sink, state in (other.get("sinks") or {}).items():
            mine = sinks.get(sink, {"circuit": 0, "written": 0, "errors": 0})
            sinks[sink] = {"circuit": max(mine["circuit"], state["circuit"]), "written": mine["written"] + state["written"],
                           "errors": mine["errors"] + state["errors"]}
        merged["sinks"] = sinks
        merged["rss_bytes"] = (merged.get("rss_bytes") or 0) + (other.get("rss_bytes") or 0)
        for key in ("event_loop_lag_s", "event_loop_blocked"):
            values = [v for v in (merged.get(key), other.get(key)) if v is not None]
            merged[key] = max(values) if values else None
    outcomes = merged.get("alerts_by_outcome") or {}
    seen = sum(outcomes.values())
    merged["dedup_ratio"] = (outcomes.get("duplicate", 0) / seen) if seen else None
    return merged


def _add(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in a.keys() | b.keys()}


async def _sibling_snapshots() -> list[dict]:
    """The other processes' own snapshots (a process still starting adds nothing)."""
    ports = [int(p) for p in os.environ.get(SIBLING_PORTS_ENV, "").split(",") if p]
    if not ports:
        return []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        async def one(port: int) -> dict | None:
            try:
                async with session.get(f"http://127.0.0.1:{port}/status.json?local=1") as response:
                    return await response.json() if response.status == 200 else None
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                return None
        return [s for s in await asyncio.gather(*(one(p) for p in ports)) if s is not None]


def status_html() -> bytes:
    return (resources.files("streams") / "static" / "status.html").read_bytes()


def install(app: faust.App, settings: Settings) -> LagMonitor:
    monitor = LagMonitor(settings)
    admin = AdminClient({"bootstrap.servers": settings.require_kafka()})

    @app.task
    async def poll_consumer_lag() -> None:
        await monitor.run_forever(settings.lag_poll_interval_s)

    window = RateWindow()

    @app.timer(1.0)
    async def sample_rates() -> None:
        window.sample()

    @app.page("/healthz")
    async def healthz(web, request):  # noqa: ANN001
        status, body = report([loop_check(settings.health_blocked_window_s, LOOP_PROBE_INTERVAL_S)])
        return web.json(body, status=status)

    @app.page("/readyz")
    async def readyz(web, request):  # noqa: ANN001
        checks = [await broker_check(admin), *circuit_checks(),
                  lag_check(monitor.max_lag(), settings.ready_max_lag, monitor.last_success,
                            stale_after_s=3 * settings.lag_poll_interval_s + 10)]
        status, body = report(checks)
        return web.json(body, status=status)

    @app.page("/status")
    async def status(web, request):  # noqa: ANN001
        return web.bytes(status_html(), content_type="text/html")

    @app.page("/status.json")
    async def status_json(web, request):  # noqa: ANN001
        own = snapshot(window)
        if request.query.get("local"):  # asked by a sibling: this process only
            return web.json(own)
        return web.json(merge_snapshots(own, await _sibling_snapshots()))

    return monitor
