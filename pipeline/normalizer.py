"""Stage 1: provider payloads → canonical alerts, repartitioned by identity.

Stateless but for a cache. Each input record is decoded once, normalized,
fingerprinted and given a row id derived from its position. What a record's
bytes build is kept (`ResendCache`, bounded in bytes): a re-send of the same
bytes is only given its own position and time, not normalized again. Alerts are then packed, many to a
record, onto the internal topic's partition that owns their (tenant,
fingerprint): one identity, one partition, one dedup state, whatever key the
producer chose. A record that cannot be processed goes to the DLQ instead.

Every record is bounded (`NormalizeLimits`, schemas/normalizers/base.py): alerts
per record, labels per alert, nesting, CPU time, and output relative to its
input size. Over a bound it goes to the DLQ with the reason (too_many_alerts,
over_budget, too_deep, output_too_large), so one hostile record costs a bounded
amount and never stalls its partition. `iter_process_records` hands a batch
over in chunks bounded in wall time and output bytes, so that the caller can
give the event loop a turn (heartbeats, other tasks) and send each chunk before
the next one exists.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from operator import attrgetter
from typing import TYPE_CHECKING, Iterator

import msgspec

from core.errors import DEFAULT_PROVIDER, EXPIRED, INTERNAL_ERROR, PROVIDER, PROVIDER_ID, TENANT, Classifier, permanent
from core.records import DeadLetter, RawRecord
from pipeline.resend_cache import ResendCache, digest
from schemas.alert import WIRE_VERSION, AlertHead, LegacyBatch, NormalizedAlert, PackedAlert, PackedBatch, encode_alert_json
from schemas.normalizers import InvalidPayload, NormalizeContext, normalize
from schemas.normalizers.base import DEFAULT_LIMITS, RECEIVED_SLOT, Budget, CpuAnchor, NormalizeLimits, check_alert_document, encode_and_check
from schemas.rules import DEFAULT_RULES, RuleSet

if TYPE_CHECKING:
    from pipeline.throttle import ConsumerThrottle

log = logging.getLogger(__name__)

MAX_ALERTS_PER_RECORD = 0xFFFF  # positions pack the index into 16 bits (see core.records.Sighting); limits stay under it
# what a packed alert holds beyond its JSON (`document`), apart from the free-form strings counted as they are:
# row id, content hash, received time, source position, and the head's short fields (status, severity,
# provider type, lastReceived); 200 before the JSON carried lastReceived too (22 bytes more than null)
_ITEM_OVERHEAD = 178
# Postgres cannot store these; a sink write that fails on them would be retried forever, so they go to the DLQ.
MAX_IDENTITY_BYTES = 2048  # tenant + fingerprint are btree keys: an index row holds at most ~2.7 KB
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")  # an escaped NUL (not an escaped backslash + "u0000")


# the stage's failures (core/errors.py): what the normalizers refuse goes to the DLQ with their
# reason; anything else is a bug, dead-lettered as `internal_error` so the partition keeps going
CLASSIFIER = Classifier((permanent(InvalidPayload, attrgetter("reason"), attrgetter("detail")),), otherwise=INTERNAL_ERROR)


@dataclass(slots=True)
class StageOneResult:
    by_partition: dict[int, list[PackedAlert]] = field(default_factory=lambda: defaultdict(list))
    critical_by_partition: dict[int, list[PackedAlert]] = field(default_factory=lambda: defaultdict(list))
    dead_letters: list[DeadLetter] = field(default_factory=list)
    throttled: list[RawRecord] = field(default_factory=list)  # over their provider's rate: parked on the first retry tier
    alerts: int = 0
    records: list[RawRecord] = field(default_factory=list)  # the input records this result accounts for
    output_bytes: int = 0  # size of its alerts, packed (see output_cap)


def partition_for(tenant: str, fingerprint: str, partitions: int) -> int:
    return zlib.crc32(f"{tenant}\x00{fingerprint}".encode()) % partitions


@lru_cache(maxsize=1024)
def _iso_second(second: int) -> str:
    return datetime.fromtimestamp(second, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def iso_utc(ms: int) -> str:
    """ISO 8601 UTC with milliseconds; the second's prefix is cached (records of a batch share it)."""
    second, millis = divmod(ms, 1000)
    return f"{_iso_second(second)}.{millis:03d}Z"


def source_position(offset: int, index: int) -> int:
    """One number ordering the alerts of a source partition: the record's offset, then the index in it
    (at most 0xFFFF alerts per record, `NormalizeLimits.max_alerts_per_record`)."""
    return (offset << 16) | index


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


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def output_cap(input_bytes: int, alerts: int, limits: NormalizeLimits = DEFAULT_LIMITS) -> int:
    """Bytes a record of `input_bytes` with `alerts` alerts may become: a multiple of its input, plus
    a fixed allowance per alert (row id, hashes, Keep's default fields and the group's small fields,
    which a 30-byte alert of a large group legitimately carries). Measured as the packed alerts: their
    JSON (what Postgres and the search store hold) and the head fields carried beside it."""
    return int(limits.max_output_ratio * input_bytes) + limits.output_allowance_per_alert * alerts


def normalize_record(record: RawRecord, *, default_tenant: str, max_payload_bytes: int,
                     rules: RuleSet = DEFAULT_RULES, limits: NormalizeLimits = DEFAULT_LIMITS) -> list[PackedAlert]:
    """One input record → its canonical alerts, packed; raises InvalidPayload for the DLQ."""
    return _normalize_record(record, default_tenant, max_payload_bytes, rules, limits, CpuAnchor.read(), None)[0]


# While a record's alerts are built, its receive time stands in them as RECEIVED_SLOT, which no
# payload's time can be: a slot in `lastReceived` is the record's time, not the payload's.
# `_instantiate` writes each record's own time into it, so what is built from a record's bytes is the
# same for every re-send of them, and is kept (ResendCache).
_SLOT = RECEIVED_SLOT.encode()
_SLOT_AFTER = b',"lastReceived":"'  # the top-level key, the last of its name in sorted-key JSON (schemas/fingerprint.py)

# One alert as built from a record's bytes: its content hash, head, and JSON split where the record's
# time goes (suffix None: the payload had its own time and the JSON is whole, in `prefix`).
Built = tuple[str, AlertHead, bytes, "bytes | None"]
# What a record's bytes build: its alerts and their size (see output_cap); what ResendCache keeps.
RecordTemplate = tuple[list[Built], int]
# Bytes a kept alert holds beyond its JSON and head strings: the head, the content hash, the tuple,
# the two bytes objects (measured with tracemalloc: tests/unit/pipeline/test_resend_cache.py).
_KEPT_ALERT_OVERHEAD = 480


def _normalize_record(record: RawRecord, default_tenant: str, max_payload_bytes: int, rules: RuleSet,
                      limits: NormalizeLimits, anchor: CpuAnchor,
                      cache: ResendCache[RecordTemplate] | None) -> tuple[list[PackedAlert], int]:
    """The alerts of one record and their size (see output_cap): built once per distinct bytes
    (with `cache`), then given the record's position and time."""
    if not record.value:
        raise InvalidPayload("empty", "record has no value")
    if len(record.value) > max_payload_bytes:
        raise InvalidPayload("too_large", f"{len(record.value)} bytes > limit {max_payload_bytes}")
    received_at = iso_utc(record.timestamp_ms)
    if len(received_at) == len(RECEIVED_SLOT):  # else a time before the year 1000: built with it, below
        key = None
        if cache is not None:
            headers = record.headers
            key = (record.topic, headers.get(TENANT), headers.get(PROVIDER), headers.get(PROVIDER_ID), digest(record.value))
            kept = cache.get(key)
            if kept is not None:
                return _instantiate(kept[0], record, received_at), kept[1]
        built, total = _build(record, default_tenant, rules, limits, anchor, RECEIVED_SLOT)
        template = _template(built)
        if template is not None:
            if cache is not None:
                cache.put(key, (template, total), sum(len(prefix) + len(suffix or b"") + len(head.name) + len(head.fingerprint)
                                                      + len(head.tenant) + len(head.provider_id or "") + _KEPT_ALERT_OVERHEAD
                                                      for _, head, prefix, suffix in template))
            return _instantiate(template, record, received_at), total
        # else the record's time went beyond lastReceived (or the payload holds the slot's text)
    built, total = _build(record, default_tenant, rules, limits, anchor, received_at)
    return _instantiate(_whole(built), record, received_at), total


def _template(built: list[tuple[str, AlertHead, bytes]]) -> list[Built] | None:
    """Each alert's JSON cut where the slot is, if the slot is in `lastReceived` and nowhere else
    (else None: the normalizer put the record's time in another field too, and the record is built
    with its own time instead)."""
    out: list[Built] = []
    for chash, head, document in built:
        at = document.find(_SLOT)
        if head.last_received != RECEIVED_SLOT:
            if at >= 0:
                return None
            out.append((chash, head, document, None))
        elif at != document.rfind(_SLOT) or document[at - len(_SLOT_AFTER):at] != _SLOT_AFTER:
            return None
        else:
            out.append((chash, head, document[:at], document[at + len(_SLOT):]))
    return out


def _whole(built: list[tuple[str, AlertHead, bytes]]) -> list[Built]:
    return [(chash, head, document, None) for chash, head, document in built]


def _instantiate(template: list[Built], record: RawRecord, received_at: str) -> list[PackedAlert]:
    """The record's alerts: what its bytes built, with its own position (row id, source position)
    and its time where the slot was."""
    time_bytes = received_at.encode()
    topic, partition, offset, timestamp_ms = record.topic, record.partition, record.offset, record.timestamp_ms
    out = []
    for index, (chash, head, document, suffix) in enumerate(template):
        if suffix is not None:
            document = document + time_bytes + suffix
            head = AlertHead(head.name, head.status, head.severity, received_at, head.fingerprint, head.tenant,
                             head.provider_type, head.provider_id)
        out.append(PackedAlert(row_uid(topic, partition, offset, index), timestamp_ms, chash, head, document,
                               topic, partition, source_position(offset, index)))
    return out


def _build(record: RawRecord, default_tenant: str, rules: RuleSet, limits: NormalizeLimits, anchor: CpuAnchor,
           received_at: str) -> tuple[list[tuple[str, AlertHead, bytes]], int]:
    """Normalize one record: each alert's content hash, head and JSON, and their size (see output_cap)."""
    if b"\\u0000" in record.value and _JSON_NUL.search(record.value):
        raise InvalidPayload("invalid_field", "the payload contains a NUL character (\\u0000), which PostgreSQL cannot store")
    budget = Budget(limits, anchor=anchor)  # the record's CPU budget starts before parsing
    provider = _header(record, PROVIDER) or DEFAULT_PROVIDER
    tenant = _header(record, TENANT) or default_tenant
    ctx = NormalizeContext(tenant=tenant, received_at=received_at, provider_id=_header(record, PROVIDER_ID),
                           budget=budget, check_content=False)
    alerts = normalize(provider, record.value, ctx)
    cap = output_cap(len(record.value), len(alerts), limits)
    topic_bytes = _utf8_len(record.topic)  # each packed alert names its source topic
    out = []
    total = 0
    for index, alert in enumerate(alerts):
        # NUL and depth (normalize() left them to us: check_content=False), then the fingerprint
        # under the tenant's and provider's rule, and the content hash; `document` is the alert's
        # JSON, the packed alert's body: its size is the alert's share of the record's output
        rule = rules.for_(alert.tenant, alert.provider_type)
        if rule.hashes_whole_alert:
            try:
                alert.fingerprint = rule.fingerprint(alert)
                chash, document = rule.content_hash_and_document(alert)
            except RecursionError:  # past what the encoder can nest; shallower depths are refused below
                raise InvalidPayload("too_deep", f"extra is nested more than {limits.max_depth} levels deep") from None
            if document is None:  # never under the default ignore fields; a guard, not a path
                document = encode_and_check(alert, limits)
            else:
                check_alert_document(alert, document, limits)  # on the JSON just hashed: no second encoding
        else:  # a custom rule reads fields or leaves some out of the hash: check the whole alert first
            encode_and_check(alert, limits)
            alert.fingerprint = rule.fingerprint(alert)
            chash = rule.content_hash(alert)
            document = encode_alert_json(alert)  # with the rule's fingerprint
        identity_bytes = _utf8_len(alert.tenant) + _utf8_len(alert.fingerprint)
        if identity_bytes > MAX_IDENTITY_BYTES:
            raise InvalidPayload("invalid_field", f"tenant + fingerprint are {identity_bytes} bytes > limit {MAX_IDENTITY_BYTES}")
        # measured as it grows, so a record over its cap stops here, before all of it is built; the
        # head's free-form strings are counted twice: a packed alert carries them beside its JSON
        total += len(document) + _ITEM_OVERHEAD + topic_bytes + identity_bytes + _utf8_len(alert.name) \
            + _utf8_len(alert.provider_id or "")
        if total > cap:
            raise InvalidPayload("output_too_large", f"{len(alerts)} alerts would be more than {cap} bytes "
                                 f"(limit {limits.max_output_ratio:g} × {len(record.value)} input bytes + "
                                 f"{limits.output_allowance_per_alert} per alert); over it at alert {index}")
        out.append((chash, AlertHead.of(alert), document))
        budget.tick()  # normalize() checked the budget at its end; this covers a long list of alerts
    return out, total


def process_records(records: list[RawRecord], *, partitions: int, default_tenant: str, max_payload_bytes: int,
                    rules: RuleSet = DEFAULT_RULES, max_age_ms: int = 0, now_ms: int | None = None,
                    throttle: ConsumerThrottle | None = None, clock_s: float = 0.0,
                    limits: NormalizeLimits = DEFAULT_LIMITS, cache: ResendCache[RecordTemplate] | None = None) -> StageOneResult:
    """The whole batch in one result (see `iter_process_records` for the chunked form)."""
    (result,) = iter_process_records(records, partitions=partitions, default_tenant=default_tenant,
                                     max_payload_bytes=max_payload_bytes, rules=rules, max_age_ms=max_age_ms,
                                     now_ms=now_ms, throttle=throttle, clock_s=clock_s, limits=limits, cache=cache)
    return result


def iter_process_records(records: list[RawRecord], *, partitions: int, default_tenant: str, max_payload_bytes: int,
                         rules: RuleSet = DEFAULT_RULES, max_age_ms: int = 0, now_ms: int | None = None,
                         throttle: ConsumerThrottle | None = None, clock_s: float = 0.0,
                         limits: NormalizeLimits = DEFAULT_LIMITS, chunk_max_ms: float | None = None,
                         chunk_max_output_bytes: int | None = None,
                         cache: ResendCache[RecordTemplate] | None = None) -> Iterator[StageOneResult]:
    """Stage 1 over `records`, in consecutive chunks: a chunk ends after the record that takes it
    past `chunk_max_ms` of wall time or `chunk_max_output_bytes` of alerts (`output_bytes`) (None: no bound;
    with neither, one result for the whole batch).

    The caller sends each chunk (and awaits, which gives the event loop its turn) before asking
    for the next: one batch then never holds the loop longer than a chunk plus one record, and
    never holds more than a chunk's output in memory. Each result names its input `records`;
    commit offsets only once every chunk of the batch is sent. Wall time here, not CPU time: it
    is about how long other tasks wait, and no record's fate depends on it.

    `cache`: what records' bytes built, kept for their re-sends; one cache per `rules`, `limits`,
    `default_tenant` and `max_payload_bytes` (a process's), as its keys do not name them.
    """
    result = StageOneResult()
    anchor = CpuAnchor.read()
    started = anchor.wall
    if max_age_ms:
        now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    last = len(records) - 1
    for position, record in enumerate(records):
        result.records.append(record)
        _stage_one_record(record, result, partitions, default_tenant, max_payload_bytes, rules, max_age_ms, now_ms,
                          throttle, clock_s, limits, anchor, cache)
        if position < last and (
                (chunk_max_output_bytes is not None and result.output_bytes >= chunk_max_output_bytes)
                or (chunk_max_ms is not None and (time.perf_counter() - started) * 1000 >= chunk_max_ms)):
            yield result
            result = StageOneResult()
            anchor = CpuAnchor.read()  # the caller may have run other tasks on this thread meanwhile
            started = anchor.wall  # and the time it spent sending is not this chunk's
    yield result


def _stage_one_record(record: RawRecord, result: StageOneResult, partitions: int, default_tenant: str,
                      max_payload_bytes: int, rules: RuleSet, max_age_ms: int, now_ms: int | None,
                      throttle: ConsumerThrottle | None, clock_s: float, limits: NormalizeLimits,
                      anchor: CpuAnchor, cache: ResendCache[RecordTemplate] | None) -> None:
    if max_age_ms and now_ms - record.timestamp_ms > max_age_ms:
        result.dead_letters.append(DeadLetter(record, EXPIRED, f"{(now_ms - record.timestamp_ms) / 1000:.0f}s old > limit {max_age_ms / 1000:.0f}s"))
        return
    try:
        alerts, size = _normalize_record(record, default_tenant, max_payload_bytes, rules, limits, anchor, cache)
    except Exception as exc:  # every failure here is permanent: a bug must not stall the partition either
        verdict = CLASSIFIER.classify(exc)
        if verdict.reason == INTERNAL_ERROR:
            log.exception("normalizer crashed on %s/%d@%d", record.topic, record.partition, record.offset)
        result.dead_letters.append(DeadLetter(record, verdict.reason, verdict.detail))
        return
    if throttle and not throttle.admit(_header(record, TENANT) or default_tenant, _header(record, PROVIDER) or DEFAULT_PROVIDER,
                                       len(alerts), clock_s):
        result.throttled.append(record)  # consumer-side throttling (docs/gateway.md): delayed, not dropped
        return
    result.alerts += len(alerts)
    result.output_bytes += size
    for item in alerts:
        # critical alerts travel on their own internal topic and agent, past any backlog
        target = result.critical_by_partition if item.alert.severity == "critical" else result.by_partition
        target[partition_for(item.alert.tenant, item.alert.fingerprint, partitions)].append(item)


def pack(alerts: Sequence[NormalizedAlert | PackedAlert], max_bytes: int, version: int = WIRE_VERSION) -> list[bytes]:
    """Encode alerts into as few records as fit under `max_bytes` each (an alert bigger than that
    is a record of its own). Each alert is encoded once, in order; a `PackedAlert` as it was read.
    `version` 1: the format before WIRE_VERSION 2 (`LegacyBatch`), for a rolling upgrade's first step."""
    if version == WIRE_VERSION:
        encode, prefix = _encode_packed, bytes((0x92, WIRE_VERSION))  # PackedBatch: [version, alerts]
    elif version == 1:
        encode, prefix = _encode_legacy, b"\x91"  # LegacyBatch: [alerts]
    else:
        raise ValueError(f"unknown internal record format {version}")
    records: list[bytes] = []
    chunk: list[bytes] = []
    size = _FRAME_BYTES
    for item in alerts:
        encoded = encode(item)
        if chunk and (size + len(encoded) > max_bytes or len(chunk) == MAX_ALERTS_PER_RECORD):
            records.append(_frame(prefix, chunk))
            chunk, size = [], _FRAME_BYTES
        chunk.append(encoded)
        size += len(encoded)
    if chunk:
        records.append(_frame(prefix, chunk))
    return records


_FRAME_BYTES = 5  # the most `_frame` puts in front of the alerts


def _frame(prefix: bytes, encoded: list[bytes]) -> bytes:
    """A batch around alerts encoded one by one: its `prefix` (msgpack's array of the batch's fields,
    and the version), then the alerts' array header (a fixarray, or array 16: at most
    MAX_ALERTS_PER_RECORD)."""
    n = len(encoded)
    header = bytes((0x90 | n,)) if n < 16 else b"\xdc" + n.to_bytes(2, "big")
    return prefix + header + b"".join(encoded)


def _encode_packed(item: NormalizedAlert | PackedAlert) -> bytes:
    return _encode(item.packed())


def _encode_legacy(item: NormalizedAlert | PackedAlert) -> bytes:
    return _encode(item.normalized())


_encode = msgspec.msgpack.Encoder().encode
_decode_packed = msgspec.msgpack.Decoder(PackedBatch).decode
_decode_legacy = msgspec.msgpack.Decoder(LegacyBatch).decode


def unpack(blob: bytes) -> list[PackedAlert]:
    """The alerts of an internal record, their JSON left as bytes (`PackedAlert`). Raises
    msgspec.DecodeError for bytes that are not one."""
    if blob[:1] == b"\x91":  # an array of one: written before WIRE_VERSION 2 (`LegacyBatch`)
        return [item.packed() for item in _decode_legacy(blob).alerts]
    batch = _decode_packed(blob)
    if batch.version != WIRE_VERSION:
        raise msgspec.ValidationError(f"internal record format {batch.version}: this version reads {WIRE_VERSION}")
    return batch.alerts
