"""A confluent-kafka producer bridged to asyncio: `await send(...)` returns once the broker acked.

librdkafka does the batching and the network on its own threads; a poll thread
runs the delivery callbacks, which resolve the request's future on the event
loop. The gateway answers 202 only after that future resolved without error.

Bounded, never buffering without limit: bytes produced but not yet acked are
capped (`gateway_max_inflight_bytes`), librdkafka's own queue is capped, and a
record not acked within `gateway_produce_timeout_s` fails the request (503, the
sender retries; if the broker stored it after all, the pipeline's idempotent
sinks and dedup make the repeat harmless).

A health thread asks the broker for metadata and the normalizer groups' lag
every `gateway_health_interval_s`; while the broker is unreachable the gateway
fails fast instead of letting each request wait for the produce timeout.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from config.settings import Settings
from gateway import metrics

log = logging.getLogger(__name__)


class Backpressure(Exception):
    """The gateway cannot take the request now; `reason` is a metric label and goes to the client."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Delivered:
    topic: str
    partition: int
    offset: int


class _OncePer(logging.Filter):
    """Passes a given message at most once per `interval_s`: a down broker otherwise logs every reconnect."""

    def __init__(self, interval_s: float = 30.0) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now, text = time.monotonic(), record.getMessage()
        if now - self._last.get(text, -1e9) < self.interval_s:
            return False
        if len(self._last) > 1000:
            self._last.clear()
        self._last[text] = now
        return True


_KAFKA_LOG = logging.getLogger("gateway.kafka")
_KAFKA_LOG.addFilter(_OncePer())


def producer_config(settings: Settings) -> dict[str, object]:
    return {
        "bootstrap.servers": settings.require_kafka(),
        "acks": "all",
        # a retry after a lost ack writes nothing twice: each sighting counted once (off only where the
        # broker refuses it, the local stand-in Tansu: `stack up` says so)
        "enable.idempotence": settings.kafka_idempotent_producers,
        "linger.ms": 2,  # a webhook waits at most 2 ms for company; under load batches fill before that
        "compression.type": "lz4",
        "message.timeout.ms": int(settings.gateway_produce_timeout_s * 1000),
        "queue.buffering.max.kbytes": max(1024, settings.gateway_max_inflight_bytes // 1024),
        "message.max.bytes": max(settings.gateway_max_body_bytes + 64 * 1024, 1_000_000),
        "socket.connection.setup.timeout.ms": 5000,
        "reconnect.backoff.ms": 500,  # a down broker: one reconnect attempt (and log line) per 0.5-5 s, not per 50 ms
        "reconnect.backoff.max.ms": 5000,
        "logger": _KAFKA_LOG,  # librdkafka's log lines through Python logging (deduplicated), not raw stderr
    }


class GatewayProducer:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._producer = Producer({**producer_config(settings), "error_cb": self._on_error})
        self._inflight_bytes = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.broker_up = False  # until the first health check (at start) reached the broker
        self.lag: int | None = None
        self._threads = [threading.Thread(target=self._poll_loop, name="gateway-producer-poll", daemon=True),
                         threading.Thread(target=self._health_loop, name="gateway-health", daemon=True)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def close(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        remaining = self._producer.flush(timeout_s)
        if remaining:
            log.warning("%d records not acked at shutdown; their requests got 503", remaining)
        for t in self._threads:
            t.join(timeout=timeout_s)

    # ------------------------------------------------------------ producing
    async def send(self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> Delivered:
        if not self.broker_up:
            raise Backpressure("broker_unavailable", "the Kafka broker is unreachable")
        size = len(value)
        with self._lock:
            if self._inflight_bytes + size > self.settings.gateway_max_inflight_bytes:
                raise Backpressure("inflight_full", "too many bytes wait for the broker's acknowledgement")
            self._inflight_bytes += size
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Delivered] = loop.create_future()

        def on_delivery(err: KafkaError | None, msg) -> None:  # noqa: ANN001 - runs on the poll thread
            self._release(size)
            loop.call_soon_threadsafe(_resolve, future, err, msg)

        try:
            self._producer.produce(topic, value, key, headers=headers, on_delivery=on_delivery)
        except BufferError:
            self._release(size)
            raise Backpressure("queue_full", "the producer queue is full") from None
        except KafkaException as exc:
            self._release(size)
            raise Backpressure("produce_failed", str(exc)) from None
        try:
            # the record's own timeout (message.timeout.ms) fires first; this is the guard against a lost callback
            return await asyncio.wait_for(asyncio.shield(future), self.settings.gateway_produce_timeout_s + 5)
        except asyncio.TimeoutError:
            raise Backpressure("produce_timeout", "the broker did not acknowledge in time") from None

    def _release(self, size: int) -> None:
        with self._lock:
            self._inflight_bytes -= size
        metrics.INFLIGHT_BYTES.set(self._inflight_bytes)

    @property
    def inflight_bytes(self) -> int:
        return self._inflight_bytes

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    def _on_error(self, err: KafkaError) -> None:
        if err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._TRANSPORT) and self.broker_up:
            log.warning("broker error: %s", err)
            if err.code() == KafkaError._ALL_BROKERS_DOWN:
                self._set_broker_up(False)

    def _set_broker_up(self, up: bool) -> None:
        if up != self.broker_up:
            log.log(logging.INFO if up else logging.WARNING, "broker %s",
                    "reachable" if up else "unreachable: answering 503 until it is back")
        self.broker_up = up
        metrics.BROKER_UP.set(1 if up else 0)

    # ------------------------------------------------------------ health: metadata and lag
    def _health_loop(self) -> None:
        probes: dict[str, Consumer] = {}
        while not self._stop.is_set():
            try:
                self._producer.list_topics(self.settings.topic_alerts, timeout=2.0)
                self._set_broker_up(True)
            except Exception as exc:  # noqa: BLE001 - any failure to reach the broker means "down"
                log.debug("broker metadata check failed: %s", exc)
                self._set_broker_up(False)
            if self.broker_up and self.settings.gateway_lag_threshold:
                try:
                    self.lag = self._measure_lag(probes)
                    metrics.CONSUMER_LAG.set(self.lag)
                except Exception as exc:  # noqa: BLE001 - an unknown lag keeps the last value; it never blocks intake
                    log.warning("consumer lag check failed: %s", exc)
            self._stop.wait(self.settings.gateway_health_interval_s)
        for probe in probes.values():
            probe.close()

    def _measure_lag(self, probes: dict[str, Consumer]) -> int:
        """Records on the input topics that the normalizer groups have not committed yet."""
        s = self.settings
        total = 0
        for topic, group in ((s.topic_alerts, f"{s.app_id}-normalize"), (s.topic_critical, f"{s.app_id}-normalize-critical")):
            probe = probes.get(group)
            if probe is None:
                # carries the group's id to read its committed offsets; never subscribes, so never joins it
                probe = probes[group] = Consumer({"bootstrap.servers": s.require_kafka(), "group.id": group,
                                                  "enable.auto.commit": False})
            meta = probe.list_topics(topic, timeout=2.0).topics.get(topic)
            if meta is None or meta.error is not None:
                continue
            parts = [TopicPartition(topic, p) for p in meta.partitions]
            for tp in probe.committed(parts, timeout=2.0):
                low, high = probe.get_watermark_offsets(tp, timeout=2.0)
                total += max(0, high - (tp.offset if tp.offset >= 0 else low))
        return total


def _resolve(future: asyncio.Future, err: KafkaError | None, msg) -> None:  # noqa: ANN001
    if future.done():  # the request gave up already (timeout, client went away)
        return
    if err is not None:
        future.set_exception(Backpressure("broker_error", err.str()))
    else:
        future.set_result(Delivered(msg.topic(), msg.partition(), msg.offset()))
