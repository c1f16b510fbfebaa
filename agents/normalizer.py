"""Stage 1: provider payloads → canonical alerts, repartitioned by identity.

Stateless. Each input record is decoded once, normalized, fingerprinted and
given a row id derived from its position. Alerts are then packed, many to a
record, onto the internal topic's partition that owns their (tenant,
fingerprint): one identity, one partition, one dedup state, whatever key the
producer chose. A record that cannot be processed goes to the DLQ instead.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from typing import TYPE_CHECKING

import msgspec

from schemas.alert import NormalizedAlert, NormalizedBatch
from schemas.normalizers import DEFAULT_PROVIDER, InvalidPayload, NormalizeContext, normalize
from schemas.rules import DEFAULT_RULES, RuleSet

if TYPE_CHECKING:
    from agents.throttle import ConsumerThrottle

log = logging.getLogger(__name__)

_encode_batch = msgspec.msgpack.Encoder().encode
MAX_ALERTS_PER_RECORD = 0xFFFF  # positions pack the index into 16 bits (see sinks.base.Sighting)
# Postgres cannot store these; a sink write that fails on them would be retried forever, so they go to the DLQ.
MAX_IDENTITY_BYTES = 2048  # tenant + fingerprint are btree keys: an index row holds at most ~2.7 KB
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")  # an escaped NUL (not an escaped backslash + "u0000")


@dataclass(slots=True)
class RawRecord:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


@dataclass(slots=True)
class DeadLetter:
    record: RawRecord
    reason: str
    detail: str


@dataclass(slots=True)
class StageOneResult:
    by_partition: dict[int, list[NormalizedAlert]] = field(default_factory=lambda: defaultdict(list))
    critical_by_partition: dict[int, list[NormalizedAlert]] = field(default_factory=lambda: defaultdict(list))
    dead_letters: list[DeadLetter] = field(default_factory=list)
    throttled: list[RawRecord] = field(default_factory=list)  # over their provider's rate: parked on the first retry tier
    alerts: int = 0


def partition_for(tenant: str, fingerprint: str, partitions: int) -> int:
    return zlib.crc32(f"{tenant}\x00{fingerprint}".encode()) % partitions


@lru_cache(maxsize=1024)
def _iso_second(second: int) -> str:
    return datetime.fromtimestamp(second, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def iso_utc(ms: int) -> str:
    """ISO 8601 UTC with milliseconds; the second's prefix is cached (records of a batch share it)."""
    second, millis = divmod(ms, 1000)
    return f"{_iso_second(second)}.{millis:03d}Z"


def row_uid(topic: str, partition: int, offset: int, index: int) -> str:
    """A UUID-shaped id derived from the source position: a replay yields the same id.

    blake2b rather than uuid5: the same determinism at a fifth of the cost.
    """
    h = hashlib.blake2b(f"{topic}/{partition}/{offset}/{index}".encode(), digest_size=16).hexdigest()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _header(record: RawRecord, name: str) -> str | None:
    value = record.headers.get(name)
    if value is None:
        return None
    try:
        text = value.decode()
    except UnicodeDecodeError:
        raise InvalidPayload("invalid_header", f"header {name!r} is not UTF-8") from None
    if "\x00" in text:
        raise InvalidPayload("invalid_header", f"header {name!r} contains a NUL character")
    return text or None


def normalize_record(record: RawRecord, *, default_tenant: str, max_payload_bytes: int,
                     rules: RuleSet = DEFAULT_RULES) -> list[NormalizedAlert]:
    """One input record → its canonical alerts; raises InvalidPayload for the DLQ."""
    if not record.value:
        raise InvalidPayload("empty", "record has no value")
    if len(record.value) > max_payload_bytes:
        raise InvalidPayload("too_large", f"{len(record.value)} bytes > limit {max_payload_bytes}")
    if b"\\u0000" in record.value and _JSON_NUL.search(record.value):
        raise InvalidPayload("invalid_field", "the payload contains a NUL character (\\u0000), which PostgreSQL cannot store")
    provider = _header(record, "provider") or DEFAULT_PROVIDER
    tenant = _header(record, "tenant") or default_tenant
    ctx = NormalizeContext(tenant=tenant, received_at=iso_utc(record.timestamp_ms), provider_id=_header(record, "provider_id"))
    alerts = normalize(provider, record.value, ctx)
    if len(alerts) > MAX_ALERTS_PER_RECORD:
        raise InvalidPayload("too_many_alerts", f"{len(alerts)} alerts in one record > {MAX_ALERTS_PER_RECORD}")
    out = []
    for index, alert in enumerate(alerts):
        chash = rules.apply(alert)  # sets the fingerprint under the tenant's and provider's rule
        identity_bytes = len(alert.tenant.encode()) + len(alert.fingerprint.encode())
        if identity_bytes > MAX_IDENTITY_BYTES:
            raise InvalidPayload("invalid_field", f"tenant + fingerprint are {identity_bytes} bytes > limit {MAX_IDENTITY_BYTES}")
        uid = row_uid(record.topic, record.partition, record.offset, index)
        out.append(NormalizedAlert(uid, record.timestamp_ms, chash, alert))
    return out


def process_records(records: list[RawRecord], *, partitions: int, default_tenant: str, max_payload_bytes: int,
                    rules: RuleSet = DEFAULT_RULES, max_age_ms: int = 0, now_ms: int | None = None,
                    throttle: ConsumerThrottle | None = None, clock_s: float = 0.0) -> StageOneResult:
    result = StageOneResult()
    if max_age_ms:
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    for record in records:
        if max_age_ms and now_ms - record.timestamp_ms > max_age_ms:
            result.dead_letters.append(DeadLetter(record, "expired", f"{(now_ms - record.timestamp_ms) / 1000:.0f}s old > limit {max_age_ms / 1000:.0f}s"))
            continue
        try:
            alerts = normalize_record(record, default_tenant=default_tenant, max_payload_bytes=max_payload_bytes, rules=rules)
        except InvalidPayload as exc:
            result.dead_letters.append(DeadLetter(record, exc.reason, exc.detail))
            continue
        except Exception as exc:  # a bug must not stall the partition: park the record, keep going
            log.exception("normalizer crashed on %s/%d@%d", record.topic, record.partition, record.offset)
            result.dead_letters.append(DeadLetter(record, "internal_error", f"{type(exc).__name__}: {exc}"))
            continue
        if throttle and not throttle.admit(_header(record, "tenant") or default_tenant, _header(record, "provider") or DEFAULT_PROVIDER,
                                           len(alerts), clock_s):
            result.throttled.append(record)  # consumer-side throttling (docs/gateway.md): delayed, not dropped
            continue
        result.alerts += len(alerts)
        for item in alerts:
            # critical alerts travel on their own internal topic and agent, past any backlog
            target = result.critical_by_partition if item.alert.severity == "critical" else result.by_partition
            target[partition_for(item.alert.tenant, item.alert.fingerprint, partitions)].append(item)
    return result


def pack(alerts: list[NormalizedAlert], max_bytes: int) -> list[bytes]:
    """Encode alerts into as few records as fit under `max_bytes` each."""
    if len(alerts) > MAX_ALERTS_PER_RECORD:
        half = len(alerts) // 2
        return pack(alerts[:half], max_bytes) + pack(alerts[half:], max_bytes)
    encoded = _encode_batch(NormalizedBatch(alerts))
    if len(encoded) <= max_bytes or len(alerts) == 1:
        return [encoded]
    half = len(alerts) // 2
    return pack(alerts[:half], max_bytes) + pack(alerts[half:], max_bytes)


_decode_batch = msgspec.msgpack.Decoder(NormalizedBatch).decode


def unpack(blob: bytes) -> list[NormalizedAlert]:
    return _decode_batch(blob).alerts


def dead_letter_headers(letter: DeadLetter, now_ms: int) -> dict[str, bytes]:
    """The original headers plus what an operator needs to understand and replay the record."""
    record = letter.record
    headers = dict(record.headers)
    headers.update({
        "dlq_reason": letter.reason.encode(),
        "dlq_detail": letter.detail[:2000].encode(),
        "dlq_topic": record.topic.encode(),
        "dlq_partition": str(record.partition).encode(),
        "dlq_offset": str(record.offset).encode(),
        # a replayed record that fails again keeps its first failure time and counts its attempts
        "dlq_first_failure_ms": record.headers.get("dlq_first_failure_ms") or str(now_ms).encode(),
        "dlq_attempts": record.headers.get("dlq_attempts") or b"1",
    })
    return headers
