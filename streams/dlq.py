"""The dead-letter topic: read, select, inspect and replay its records (`alertstream dlq`).

A DLQ record is the original record (key, value bytes, headers) plus the `dlq_*` headers of
the error router (`core.errors.ErrorRouter.dead_letter`). Reading assigns every partition of the topic directly
(no consumer-group join, nothing committed) from the beginning or from the offsets of a start time,
and stops when every partition has reached its end. Replaying re-produces the original value and
headers, without the failure's `dlq_*` headers, to the topic the record came from.

End of a partition: librdkafka's partition-EOF event, or the reported high watermark followed by a
quiet moment. The local Tansu broker under-reports the high watermark (first offset of the last
batch + 1, docs/decisions.md), so reaching it alone never ends a partition while records keep
coming; an overall idle timeout ends the read if a broker sends neither EOF nor records.
"""

from __future__ import annotations

import re
import time
import unicodedata
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from core.errors import (
    ATTEMPTS,
    DEFAULT_PROVIDER,
    DETAIL,
    DLQ_PREFIX,
    FIRST_FAILURE,  # noqa: F401 - part of this module's vocabulary (tests read dlq.FIRST_FAILURE)
    KEPT_ON_REPLAY,
    PROVIDER,
    REASON,
    REPLAYED_FROM,
    SOURCE_OFFSET,
    SOURCE_PARTITION,
    SOURCE_TOPIC,
    TENANT,
)
from config.settings import Settings

Header = tuple[str, bytes | None]


# ------------------------------------------------------------------------------------------ records


@dataclass(slots=True)
class DeadLetterRecord:
    """One record of the dead-letter topic, as read."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: list[Header] = field(default_factory=list)

    @property
    def position(self) -> str:
        return f"{self.partition}@{self.offset}"

    def header(self, name: str) -> str | None:
        """The last header of that name, as text (bytes that are not UTF-8 are escaped), or None."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return None if found is None else found.decode(errors="backslashreplace")

    @property
    def reason(self) -> str:
        return self.header(REASON) or "(none)"

    @property
    def detail(self) -> str:
        return self.header(DETAIL) or ""

    @property
    def source(self) -> str:
        """topic/partition@offset of the original record."""
        return f"{self.header(SOURCE_TOPIC) or '?'}/{self.header(SOURCE_PARTITION) or '?'}@{self.header(SOURCE_OFFSET) or '?'}"

    @property
    def attempts(self) -> int:
        try:
            return max(1, int(self.header(ATTEMPTS) or 1))
        except ValueError:
            return 1

    def provider(self) -> str:
        return self.header(PROVIDER) or DEFAULT_PROVIDER

    def tenant(self, default_tenant: str) -> str:
        return self.header(TENANT) or default_tenant


# ---------------------------------------------------------------------------------------- selection


@dataclass(frozen=True, slots=True)
class Selection:
    """Which records a command acts on. Empty sets select everything; times are the DLQ record's
    timestamp (when it was dead-lettered), `since_ms` inclusive, `until_ms` exclusive."""

    reasons: frozenset[str] = frozenset()
    tenants: frozenset[str] = frozenset()
    providers: frozenset[str] = frozenset()
    since_ms: int | None = None
    until_ms: int | None = None
    limit: int | None = None
    default_tenant: str = "default"

    def matches(self, record: DeadLetterRecord) -> bool:
        if self.since_ms is not None and record.timestamp_ms < self.since_ms:
            return False
        if self.until_ms is not None and record.timestamp_ms >= self.until_ms:
            return False
        if self.reasons and record.reason not in self.reasons:
            return False
        if self.tenants and record.tenant(self.default_tenant) not in self.tenants:
            return False
        return not self.providers or record.provider() in self.providers


def select(records: Iterable[DeadLetterRecord], selection: Selection) -> Iterator[DeadLetterRecord]:
    """The records that match, at most `selection.limit` of them (then stop reading)."""
    if selection.limit is not None and selection.limit <= 0:
        return
    taken = 0
    for record in records:
        if selection.matches(record):
            yield record
            taken += 1
            if selection.limit is not None and taken >= selection.limit:
                return


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str, now_ms: int | None = None) -> int:
    """A point in time as epoch milliseconds: ISO 8601 (`2025-01-15T10:05`, `...Z`, `...+02:00`,
    `2025-01-15`; without an offset it is UTC), `now`, or an age such as `30m`, `2h`, `1d` (ago)."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    text = text.strip()
    if text.lower() == "now":
        return now_ms
    match = _RELATIVE.match(text)
    if match:
        return now_ms - int(float(match.group(1)) * _UNITS[match.group(2).lower()] * 1000)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (ISO 8601 like 2025-01-15T10:05:00Z, or an age like 30m, 2h, 1d)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def minutes_ago(minutes: float, now_ms: int | None = None) -> int:
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return now_ms - int(timedelta(minutes=minutes).total_seconds() * 1000)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


# ------------------------------------------------------------------------------------------- output


def printable(text: str) -> str:
    """Text safe for a terminal: control, format and unassigned characters escaped (an alert's
    payload may carry ANSI escapes or bidi overrides); newlines and tabs kept."""
    out = []
    for ch in text:
        if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn"):
            out.append(ch)
        else:
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


def one_line(text: str, width: int) -> str:
    text = printable(text).replace("\n", "\\n").replace("\t", " ")
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    for unit in ("KB", "MB", "GB"):
        size /= 1024
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}"
    raise AssertionError("unreachable")


def record_row(record: DeadLetterRecord, default_tenant: str, detail_width: int = 60) -> dict[str, str]:
    """The columns of `dlq list`, as display text."""
    return {
        "time": iso(record.timestamp_ms),
        "at": record.position,
        "reason": one_line(record.reason, 40),
        "provider": one_line(record.provider(), 30),
        "tenant": one_line(record.tenant(default_tenant), 40),
        "size": human_size(len(record.value)),
        "source": one_line(record.source, 80),
        "detail": one_line(record.detail, detail_width),
    }


def record_json(record: DeadLetterRecord, default_tenant: str) -> dict[str, Any]:
    """`dlq list --json`: everything but the value (its size instead)."""
    def source_int(name: str) -> int | None:
        try:
            return int(record.header(name) or "")
        except ValueError:
            return None

    return {
        "topic": record.topic, "partition": record.partition, "offset": record.offset,
        "timestamp_ms": record.timestamp_ms, "time": iso(record.timestamp_ms),
        "reason": record.reason, "detail": record.detail,
        "provider": record.provider(), "tenant": record.tenant(default_tenant),
        "size": len(record.value),
        "key": None if record.key is None else record.key.decode(errors="backslashreplace"),
        "source": {"topic": record.header(SOURCE_TOPIC), "partition": source_int(SOURCE_PARTITION),
                   "offset": source_int(SOURCE_OFFSET)},
        "attempts": record.attempts,
        "replayed_from": record.header(REPLAYED_FROM),
        "headers": [[k, None if v is None else v.decode(errors="backslashreplace")] for k, v in record.headers],
    }


def render_value(value: bytes, max_bytes: int) -> tuple[str, str]:
    """(what the value is, printable text of at most ~max_bytes): pretty JSON if it parses, else
    the text if it is UTF-8, else a hex dump."""
    import orjson

    size = len(value)
    try:
        pretty = orjson.dumps(orjson.loads(value), option=orjson.OPT_INDENT_2)
        kind, body = f"JSON, {size} bytes", pretty
    except (orjson.JSONDecodeError, TypeError):
        try:
            value.decode()
            kind, body = f"text, not JSON, {size} bytes", value
        except UnicodeDecodeError:
            shown = value[: min(max_bytes, 4096)]
            note = "" if len(shown) == size else f"\n… {size - len(shown)} more bytes not shown"
            return f"not UTF-8, {size} bytes; hex dump", hexdump(shown) + note
    if len(body) <= max_bytes:
        return kind, printable(body.decode())
    text = body[:max_bytes].decode(errors="ignore")  # cut on a character boundary
    return kind, printable(text) + f"\n… truncated: showed {max_bytes} of {len(body)} bytes (--max-bytes)"


def hexdump(data: bytes, width: int = 16) -> str:
    lines = []
    for start in range(0, len(data), width):
        chunk = data[start:start + width]
        ascii_ = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{start:08x}  {chunk.hex(' '):<{width * 3 - 1}}  {ascii_}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ reading


class EndTracker:
    """When a read of every partition is complete.

    A partition is done on librdkafka's EOF event, or once its next offset reached the reported
    high watermark and it has been quiet for `settle_s` (a broker that under-reports the watermark
    still sends the rest of its last batch within that moment). The whole read is also over after
    `idle_s` without any record or event, whatever the watermarks say."""

    def __init__(self, starts: dict[int, int], highs: dict[int, int], *, settle_s: float, idle_s: float, now: float) -> None:
        self.next = dict(starts)  # partition -> next offset to read
        self.highs = highs
        self.done: set[int] = set()
        self.last_activity = {p: now for p in starts}
        self.settle_s = settle_s
        self.idle_s = idle_s
        self.idle_since = now

    def on_record(self, partition: int, offset: int, now: float) -> None:
        self.next[partition] = offset + 1
        self.done.discard(partition)  # more came after an end: keep reading it
        self.last_activity[partition] = self.idle_since = now

    def on_eof(self, partition: int, offset: int, now: float) -> None:
        self.next[partition] = max(self.next.get(partition, -1), offset)
        self.done.add(partition)
        self.idle_since = now

    def finished(self, now: float) -> bool:
        if now - self.idle_since >= self.idle_s:
            return True
        for p, nxt in self.next.items():
            if p in self.done:
                continue
            if nxt >= 0 and nxt >= self.highs.get(p, 0) and now - self.last_activity[p] >= self.settle_s:
                continue
            return False
        return True


def _consumer(settings: Settings) -> Any:
    from confluent_kafka import Consumer

    return Consumer({
        "bootstrap.servers": settings.require_kafka(),
        # required by the client; never joined (partitions are assigned) and nothing is committed
        "group.id": f"alertstream-dlq-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "receive.message.max.bytes": 200 * 1024 * 1024,
        "fetch.max.bytes": 100 * 1024 * 1024,
    })


def _partitions(consumer: Any, topic: str, timeout_s: float) -> list[int]:
    metadata = consumer.list_topics(topic, timeout=timeout_s).topics.get(topic)
    if metadata is None or metadata.error is not None:
        return []
    return sorted(metadata.partitions)


def _watermarks(consumer: Any, tp: Any, timeout_s: float) -> tuple[int, int]:
    """A partition's (low, high) offsets; a partition whose leader is still being elected (a topic
    just created, a broker restarting) is asked again until `timeout_s`."""
    from confluent_kafka import KafkaError, KafkaException

    electing = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART}
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return consumer.get_watermark_offsets(tp, timeout=max(0.1, deadline - time.monotonic()))
        except KafkaException as exc:
            error = exc.args[0]
            if not (error.retriable() or error.code() in electing) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def read_topic(settings: Settings, topic: str | None = None, *, since_ms: int | None = None,
               idle_s: float = 10.0, settle_s: float = 1.0, timeout_s: float = 30.0,
               clock: Callable[[], float] = time.monotonic) -> Iterator[DeadLetterRecord]:
    """Every record of `topic` (default: the DLQ topic), partition by partition in offset order
    (partitions interleaved), from the start or from the first offsets at `since_ms`, up to the
    end of every partition. Close the iterator (or exhaust it) to close the consumer."""
    from confluent_kafka import OFFSET_BEGINNING, KafkaError, KafkaException, TopicPartition

    topic = topic or settings.topic_dlq
    consumer = _consumer(settings)
    try:
        partitions = _partitions(consumer, topic, timeout_s)
        if not partitions:
            return
        starts = {p: OFFSET_BEGINNING for p in partitions}
        if since_ms is not None:
            # a broker that ignores the time (Tansu answers offset 0) only costs a longer read: times are filtered anyway
            found = consumer.offsets_for_times([TopicPartition(topic, p, since_ms) for p in partitions], timeout=timeout_s)
            for tp in found:
                if tp.error is None:
                    starts[tp.partition] = tp.offset  # -1: no record at or after that time
        assigned = {p: o for p, o in starts.items() if o != -1}
        if not assigned:
            return
        watermarks = {p: _watermarks(consumer, TopicPartition(topic, p), timeout_s) for p in assigned}
        consumer.assign([TopicPartition(topic, p, o) for p, o in assigned.items()])
        tracker = EndTracker({p: (o if o >= 0 else watermarks[p][0]) for p, o in assigned.items()},
                             {p: high for p, (_, high) in watermarks.items()},
                             settle_s=settle_s, idle_s=idle_s, now=clock())
        while not tracker.finished(clock()):
            for m in consumer.consume(num_messages=500, timeout=0.2):
                error = m.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        tracker.on_eof(m.partition(), m.offset(), clock())
                        continue
                    if error.fatal() or error.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
                        raise KafkaException(error)
                    continue  # transient: the client retries
                tracker.on_record(m.partition(), m.offset(), clock())
                yield DeadLetterRecord(
                    topic=m.topic(), partition=m.partition(), offset=m.offset(),
                    timestamp_ms=m.timestamp()[1], key=m.key(), value=m.value() or b"",
                    headers=list(m.headers() or ()),
                )
    finally:
        consumer.close()


def read_selected(settings: Settings, selection: Selection, topic: str | None = None, **read: Any) -> Iterator[DeadLetterRecord]:
    records = read_topic(settings, topic, since_ms=selection.since_ms, **read)
    try:
        yield from select(records, selection)
    finally:
        records.close()  # stop the consumer as soon as the limit is reached


def fetch_one(settings: Settings, partition: int, offset: int, topic: str | None = None,
              timeout_s: float = 15.0, idle_s: float = 3.0) -> DeadLetterRecord | None:
    """The record at partition@offset, or None if there is none (past the end, removed by retention)."""
    from confluent_kafka import KafkaError, TopicPartition

    topic = topic or settings.topic_dlq
    consumer = _consumer(settings)
    try:
        if partition not in _partitions(consumer, topic, timeout_s):
            return None
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
        if offset < low or high <= low:
            return None
        # at or past the reported end it may still be in the last batch (under-reported end): read up to it
        consumer.assign([TopicPartition(topic, partition, offset if offset < high else high - 1)])
        deadline = time.monotonic() + timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - quiet_since < idle_s:
            m = consumer.poll(0.2)
            if m is None:
                continue
            quiet_since = time.monotonic()
            if m.error() is not None:
                if m.error().code() == KafkaError._PARTITION_EOF:
                    return None
                continue
            if m.offset() < offset:
                continue
            if m.offset() > offset:
                return None  # that offset is gone (compacted, or a transaction marker)
            return DeadLetterRecord(topic=m.topic(), partition=m.partition(), offset=m.offset(),
                                    timestamp_ms=m.timestamp()[1], key=m.key(), value=m.value() or b"",
                                    headers=list(m.headers() or ()))
        return None
    finally:
        consumer.close()


# ------------------------------------------------------------------------------------------ replay


def parse_header_assignment(text: str) -> tuple[str, str]:
    """`name=value` of `--set-header`."""
    name, sep, value = text.partition("=")
    name = name.strip()
    if not sep or not name:
        raise ValueError(f"expected NAME=VALUE, got {text!r}")
    if name.startswith(DLQ_PREFIX):
        raise ValueError(f"{name!r}: dlq_* headers are managed by the replay itself")
    return name, value


def replay_headers(record: DeadLetterRecord, set_headers: dict[str, str] | None = None,
                   drop_headers: Iterable[str] = ()) -> list[Header]:
    """The original headers (the failure's dlq_* ones removed, its first-failure time kept), with
    `set_headers` replacing or adding headers, `drop_headers` removed, and `dlq_replayed_from`
    (this DLQ position) and `dlq_attempts` (one more than the DLQ record's) added."""
    set_headers = set_headers or {}
    removed = set(drop_headers) | set(set_headers)
    out: list[Header] = [
        (k, v) for k, v in record.headers
        if k not in removed and (not k.startswith(DLQ_PREFIX) or k in KEPT_ON_REPLAY)
    ]
    out.extend((k, v.encode()) for k, v in set_headers.items())
    out.append((REPLAYED_FROM, record.position.encode()))
    out.append((ATTEMPTS, str(record.attempts + 1).encode()))
    return out


@dataclass
class ReplayReport:
    replayed: Counter[str] = field(default_factory=Counter)  # reason -> records delivered (or selected, dry run)
    failed: Counter[str] = field(default_factory=Counter)  # reason -> records not delivered
    targets: Counter[str] = field(default_factory=Counter)  # topic -> records sent there
    errors: list[str] = field(default_factory=list)  # the first few failures, for the operator

    def fail(self, record: DeadLetterRecord, message: str) -> None:
        self.failed[record.reason] += 1
        if len(self.errors) < 20:
            self.errors.append(f"{record.position}: {message}")

    @property
    def ok(self) -> bool:
        return not self.failed


def replay(settings: Settings, records: Iterable[DeadLetterRecord], *, to: str | None = None,
           set_headers: dict[str, str] | None = None, drop_headers: Iterable[str] = (),
           dry_run: bool = False, on_record: Callable[[DeadLetterRecord, str, list[Header]], None] | None = None,
           flush_timeout_s: float = 60.0) -> ReplayReport:
    """Re-produce each record's original key, value and headers (see `replay_headers`) to `to`,
    or to the topic it came from (its `dlq_topic` header); acks=all, every delivery checked.
    At-least-once: a record may be delivered twice, which the pipeline's dedup absorbs."""
    from confluent_kafka import KafkaException, Producer

    drop_headers = tuple(drop_headers)
    if to is not None and to == settings.topic_dlq:
        raise ValueError(f"refusing to replay into the dead-letter topic {to!r} itself")
    report = ReplayReport()
    producer = None if dry_run else Producer({
        "bootstrap.servers": settings.require_kafka(), "acks": "all", "linger.ms": 5,
        "message.max.bytes": 200 * 1024 * 1024,  # a record is as large as it was; the broker decides
        "enable.idempotence": False,  # local broker: no InitProducerId (INFRA.md); at-least-once
    })
    known_topics: dict[str, bool] = {}

    def topic_exists(name: str) -> bool:
        if name not in known_topics:  # all topics: asking for one by name may auto-create it
            metadata = producer.list_topics(timeout=15).topics.get(name) if producer else None
            known_topics[name] = producer is None or (metadata is not None and metadata.error is None)
        return known_topics[name]

    for record in records:
        target = to or record.header(SOURCE_TOPIC)
        if not target:
            report.fail(record, "no dlq_topic header: pass --to")
            continue
        if target == settings.topic_dlq:
            report.fail(record, f"its dlq_topic is the dead-letter topic {target!r}: pass --to")
            continue
        headers = replay_headers(record, set_headers, drop_headers)
        if on_record is not None:
            on_record(record, target, headers)
        if producer is None:
            report.replayed[record.reason] += 1
            report.targets[target] += 1
            continue
        if not topic_exists(target):
            report.fail(record, f"topic {target!r} does not exist")
            continue

        def delivered(err: Any, _msg: Any, record: DeadLetterRecord = record, target: str = target) -> None:
            if err is not None:
                report.fail(record, f"not delivered to {target}: {err}")
            else:
                report.replayed[record.reason] += 1
                report.targets[target] += 1

        while True:
            try:
                producer.produce(target, value=record.value, key=record.key, headers=headers, on_delivery=delivered)
                break
            except BufferError:  # local queue full: let deliveries drain
                producer.poll(0.5)
            except KafkaException as exc:
                report.fail(record, f"not produced to {target}: {exc}")
                break
        producer.poll(0)
    if producer is not None:
        remaining = producer.flush(flush_timeout_s)
        if remaining:
            report.failed["(unconfirmed)"] += remaining
            report.errors.append(f"{remaining} records not confirmed by the broker within {flush_timeout_s:.0f}s")
    return report
