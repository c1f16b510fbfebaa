"""Running the gateway: producer, key store, validation processes and app under uvicorn
(`alertstream gateway`), and `/metrics` on a listener of its own (`gateway_metrics_bind`/`_port`):
the metrics name tenants, so they are never served on the public webhook port."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn

from config.settings import Settings
from gateway.apikeys import KeyStore
from gateway.app import create_app
from gateway.producer import GatewayProducer
from gateway.validation import ValidationPool
from streams.loop_monitor import PROBE_INTERVAL_S as LOOP_PROBE_INTERVAL_S
from streams.loop_monitor import watch_event_loop

log = logging.getLogger(__name__)


def _ensure_topics(settings: Settings) -> None:
    from streams.topics import ensure_topics

    try:
        ensure_topics(settings, timeout_s=5)
    except Exception as exc:  # noqa: BLE001 - the broker may be down now: serve anyway, answer 503 until it is up
        log.warning("could not check the topics (%s); the gateway answers 503 while the broker is unreachable", exc)


def start_metrics_listener(settings: Settings):  # noqa: ANN201 - (server, thread) or None
    """prometheus_client's own HTTP server on its own thread: a scrape never waits for the event loop
    (nor the loop for it). Port 0: none. A port already taken is logged, not fatal: webhooks matter more."""
    from prometheus_client import start_http_server

    bind, port = settings.gateway_metrics_bind, settings.gateway_metrics_port
    if not port:
        log.info("no metrics listener (gateway_metrics_port is 0)")
        return None
    try:
        listener = start_http_server(port, addr=bind)
    except OSError as exc:
        log.error("metrics listener on %s:%d failed (%s): /metrics is not served", bind, port, exc)
        return None
    log.info("gateway metrics on http://%s:%d/metrics", bind, port)
    return listener


async def serve(settings: Settings) -> None:
    _ensure_topics(settings)
    keystore = await KeyStore.connect(settings.require_database_url(), ttl_s=settings.gateway_apikey_cache_ttl_s)
    validator = ValidationPool.from_settings(settings)
    await validator.start()
    producer = GatewayProducer(settings)
    producer.start()
    metrics_listener = start_metrics_listener(settings)
    app = create_app(settings, producer, keystore, validator=validator)
    config = uvicorn.Config(app, host=settings.gateway_bind, port=settings.gateway_port, log_level=settings.log_level.lower(),
                            access_log=False, server_header=False,
                            limit_concurrency=4096, timeout_graceful_shutdown=15)
    server = _Server(config)
    log.info("gateway on http://%s:%d", settings.gateway_bind, settings.gateway_port)
    # the same loop monitor as the worker's: /healthz fails while the loop is (or just was) blocked
    monitor = asyncio.create_task(watch_event_loop(LOOP_PROBE_INTERVAL_S, settings.loop_blocked_threshold_s))
    try:
        await server.serve()  # SIGTERM/SIGINT: stops taking requests, lets those in flight finish
    finally:
        monitor.cancel()
        # requests still waiting for an ack got their answer during the graceful shutdown; flush the rest
        await asyncio.to_thread(producer.close)
        await validator.close()
        await keystore.close()
        if metrics_listener is not None:
            metrics_listener[0].shutdown()


class _Server(uvicorn.Server):
    """uvicorn re-raises SIGTERM/SIGINT once it has drained, which kills the process before the
    producer is flushed and closed; here the signal only starts the graceful shutdown."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.handle_exit, sig, None)
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def run(settings: Settings) -> int:
    asyncio.run(serve(settings))
    return 0
