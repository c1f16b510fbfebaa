"""Stage 1 (pipeline/normalizer.py): records → canonical alerts by partition, or dead letters."""

from __future__ import annotations

import copy
import uuid
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from pipeline.normalizer import (
    MAX_ALERTS_PER_RECORD,
    MAX_IDENTITY_BYTES,
    normalize_record,
    pack,
    partition_for,
    process_records,
    unpack,
)
from core.errors import ErrorRouter
from core.records import DeadLetter, RawRecord
from schemas.alert import WIRE_VERSION, LegacyBatch, NormalizedAlert, PackedBatch, encode_alert_json
from schemas.fingerprint import content_hash

EXAMPLES = Path(schemas.__file__).parent / "examples"
GENERIC = orjson.loads((EXAMPLES / "keep_generic_alertdto.json").read_bytes())
WEBHOOK = orjson.loads((EXAMPLES / "prometheus_alertmanager_webhook.json").read_bytes())
PARTITIONS = 8
LIMIT = 64 * 1024



def _decoded(blob: bytes) -> list[NormalizedAlert]:
    return [item.normalized() for item in unpack(blob)]


def generic(**changes: Any) -> bytes:
    alert = copy.deepcopy(GENERIC)
    alert.update(changes)
    return orjson.dumps(alert)


def raw(value: bytes | None, offset: int = 0, *, partition: int = 0, headers: dict[str, bytes] | None = None,
        topic: str = "alerts", timestamp_ms: int = 1_736_935_560_000, key: bytes | None = b"k") -> RawRecord:
    return RawRecord(topic, partition, offset, timestamp_ms, key, value, headers if headers is not None else {})


def run(records: list[RawRecord], max_payload_bytes: int = LIMIT):
    return process_records(records, partitions=PARTITIONS, default_tenant="default", max_payload_bytes=max_payload_bytes)


def all_alerts(result) -> list[NormalizedAlert]:  # noqa: ANN001
    """The result's alerts, their bodies decoded (`PackedAlert.normalized`), as a reader of the topic gets them."""
    return [a.normalized() for alerts in result.by_partition.values() for a in alerts]


# ---------------------------------------------------------------- dead letters

BAD = {
    "empty": raw(b"", 1),
    "empty_none": raw(None, 2),
    "too_large": raw(b"x" * (LIMIT + 1), 3),
    "malformed_json": raw(b'{"name": "cut off", "status": ', 4),
    "invalid_utf8": raw(b'{"name": "caf\xe9"}', 5),
    "unknown_provider": raw(generic(), 6, headers={"provider": b"nagios-classic"}),
    "bad_provider_header": raw(generic(), 7, headers={"provider": b"\xff\xfe"}),
    "bad_tenant_header": raw(generic(), 8, headers={"tenant": b"caf\xe9"}),
    "nameless": raw(orjson.dumps({"status": "firing", "severity": "high"}), 9),
    # what Postgres cannot store would stall the dedup stage (its writes are retried forever)
    "nul_in_payload": raw(generic(description="before\x00after"), 10),
    "nul_in_header": raw(generic(), 11, headers={"tenant": b"acme\x00"}),
    "huge_fingerprint": raw(generic(fingerprint="f" * (MAX_IDENTITY_BYTES + 1)), 12),
}
EXPECTED_REASON = {
    "empty": "empty",
    "empty_none": "empty",
    "too_large": "too_large",
    "malformed_json": "malformed_json",
    "invalid_utf8": "malformed_json",
    "unknown_provider": "unknown_provider",
    "bad_provider_header": "invalid_header",
    "bad_tenant_header": "invalid_header",
    "nameless": "missing_field",
    "nul_in_payload": "invalid_field",
    "nul_in_header": "invalid_header",
    "huge_fingerprint": "invalid_field",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_record_goes_to_dead_letters_with_its_reason(case: str) -> None:
    result = run([BAD[case]])
    assert result.alerts == 0 and not result.by_partition
    assert len(result.dead_letters) == 1
    letter = result.dead_letters[0]
    assert letter.record is BAD[case]
    assert letter.reason == EXPECTED_REASON[case]
    assert letter.detail


def test_dead_letter_details_name_the_problem() -> None:
    letters = {letter.record.offset: letter for letter in run(list(BAD.values())).dead_letters}
    assert str(LIMIT) in letters[3].detail
    assert "nagios-classic" in letters[6].detail
    assert "'provider'" in letters[7].detail and "'tenant'" in letters[8].detail
    assert "name" in letters[9].detail


def test_a_record_exactly_at_the_limit_is_accepted() -> None:
    value = generic()
    assert len(run([raw(value)], max_payload_bytes=len(value)).dead_letters) == 0
    assert run([raw(value)], max_payload_bytes=len(value) - 1).dead_letters[0].reason == "too_large"


def test_a_literal_backslash_u0000_is_not_a_nul() -> None:
    value = generic(description="a path like C:\\u0000 is fine", extra_note="\\\\u0000")
    assert b"\\u0000" in value
    result = run([raw(value)])
    assert not result.dead_letters and result.alerts == 1
    assert "\\u0000" in all_alerts(result)[0].alert.description


def test_identity_size_limit_is_inclusive() -> None:
    tenant = b"acme"
    fingerprint = "f" * (MAX_IDENTITY_BYTES - len(tenant))
    ok = run([raw(generic(fingerprint=fingerprint), headers={"tenant": tenant})])
    assert not ok.dead_letters and ok.alerts == 1
    too_long = run([raw(generic(fingerprint=fingerprint + "é"), headers={"tenant": tenant})])  # bytes, not chars
    assert [d.reason for d in too_long.dead_letters] == ["invalid_field"]


def test_good_records_in_the_same_batch_still_flow() -> None:
    good = [
        raw(generic(fingerprint="g-1"), 100),
        raw(orjson.dumps(WEBHOOK), 101, headers={"provider": b"prometheus", "tenant": b"acme"}),
        raw(generic(fingerprint="g-2"), 102),
    ]
    records = [good[0], *list(BAD.values())[:5], good[1], *list(BAD.values())[5:], good[2]]
    result = run(records)
    assert len(result.dead_letters) == len(BAD)
    assert [letter.reason for letter in result.dead_letters] == [EXPECTED_REASON[c] for c in BAD]
    webhook_alerts = len(WEBHOOK["alerts"])
    assert result.alerts == 2 + webhook_alerts == len(all_alerts(result))
    by_tenant: dict[str, int] = {}
    for item in all_alerts(result):
        by_tenant[item.alert.tenant] = by_tenant.get(item.alert.tenant, 0) + 1
    assert by_tenant == {"default": 2, "acme": webhook_alerts}


def test_a_normalizer_crash_is_parked_as_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.normalizer as stage

    def boom(*args: Any, **kwargs: Any) -> None:
        raise KeyError("bug")

    monkeypatch.setattr(stage, "normalize", boom)
    result = run([raw(generic())])
    assert [(d.reason, d.detail) for d in result.dead_letters] == [("internal_error", "KeyError: 'bug'")]


# ---------------------------------------------------------------- alerts: fingerprint, hash, uid


def test_alert_fields_from_the_record() -> None:
    record = raw(orjson.dumps(WEBHOOK), 42, partition=3, headers={"provider": b"prometheus", "tenant": b"acme",
                                                                  "provider_id": b"am-1"})
    items = normalize_record(record, default_tenant="default", max_payload_bytes=LIMIT)
    assert len(items) == len(WEBHOOK["alerts"])
    for item in items:
        assert item.received_at_ms == record.timestamp_ms
        assert item.alert.tenant == "acme" and item.alert.provider_id == "am-1"
        assert item.alert.last_received == "2025-01-15T10:06:00.000Z"
        assert item.alert.fingerprint  # set, from the provider or the name
        alert = item.normalized().alert  # the body decoded, as the sinks read it
        assert (alert.tenant, alert.fingerprint, alert.last_received) == (item.alert.tenant, item.alert.fingerprint,
                                                                          item.alert.last_received)
        assert item.content_hash == content_hash(alert)
        assert item.body == encode_alert_json(alert)  # one encoding: what was hashed is what is written


def test_the_generic_fingerprint_falls_back_to_the_name() -> None:
    import hashlib

    (item,) = normalize_record(raw(generic(fingerprint=None)), default_tenant="default", max_payload_bytes=LIMIT)
    assert item.alert.fingerprint == hashlib.sha256(GENERIC["name"].encode()).hexdigest()


def uids(offset: int, partition: int = 0, topic: str = "alerts") -> list[str]:
    record = raw(orjson.dumps(WEBHOOK), offset, partition=partition, topic=topic, headers={"provider": b"prometheus"})
    return [a.uid for a in normalize_record(record, default_tenant="default", max_payload_bytes=LIMIT)]


def test_uid_is_deterministic_from_the_position() -> None:
    first = uids(7)
    assert first == uids(7)
    assert len(set(first)) == len(first) == len(WEBHOOK["alerts"])  # index makes them differ within a record
    assert all(str(uuid.UUID(u)) == u for u in first)  # valid UUID text, as Postgres expects
    assert set(first).isdisjoint(uids(8))
    assert set(first).isdisjoint(uids(7, partition=1))
    assert set(first).isdisjoint(uids(7, topic="other"))


def test_uid_does_not_depend_on_the_content() -> None:
    a = normalize_record(raw(generic(), 9), default_tenant="default", max_payload_bytes=LIMIT)
    b = normalize_record(raw(generic(name="other", severity="low"), 9), default_tenant="default", max_payload_bytes=LIMIT)
    assert a[0].uid == b[0].uid and a[0].content_hash != b[0].content_hash


# ---------------------------------------------------------------- partitioning


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=20), st.text(max_size=40), st.integers(1, 256))
def test_partition_for_is_stable_and_in_range(tenant: str, fingerprint: str, partitions: int) -> None:
    p = partition_for(tenant, fingerprint, partitions)
    assert 0 <= p < partitions
    assert partition_for(tenant, fingerprint, partitions) == p


def test_partition_for_spreads_identities() -> None:
    used = {partition_for("t", f"fp-{i}", PARTITIONS) for i in range(200)}
    assert used == set(range(PARTITIONS))


def test_one_identity_lands_on_one_partition_whatever_the_source() -> None:
    records = []
    for i in range(60):
        fingerprint = f"fp-{i % 6}"
        tenant = (b"t1", b"t2")[(i // 6) % 2]
        records.append(raw(generic(fingerprint=fingerprint, lag=i), offset=i, partition=i % 3,
                           key=f"key-{i}".encode(), headers={"tenant": tenant}))
    result = run(records)
    assert result.alerts == 60 and not result.dead_letters
    where: dict[tuple[str, str], set[int]] = {}
    for partition, items in result.by_partition.items():
        for item in items:
            where.setdefault((item.alert.tenant, item.alert.fingerprint), set()).add(partition)
    assert len(where) == 12
    for (tenant, fingerprint), partitions in where.items():
        assert partitions == {partition_for(tenant, fingerprint, PARTITIONS)}
    # within a partition, alerts keep their input order
    for items in result.by_partition.values():
        offsets = [int(item.normalized().alert.extra["lag"]) for item in items]
        assert offsets == sorted(offsets)


# ---------------------------------------------------------------- pack


def many_alerts(n: int) -> list[NormalizedAlert]:
    records = [raw(generic(fingerprint=f"fp-{i}", note="x" * (i % 50)), offset=i) for i in range(n)]
    result = run(records)
    assert result.alerts == n
    return sorted(all_alerts(result), key=lambda a: a.uid)


@pytest.mark.parametrize("max_bytes", [1, 600, 2_000, 10_000, 1 << 30])
def test_pack_splits_under_max_bytes_and_keeps_everything_in_order(max_bytes: int) -> None:
    alerts = many_alerts(40)
    blobs = pack(alerts, max_bytes)
    decoded = [_decoded(b) for b in blobs]
    assert [a for batch in decoded for a in batch] == alerts
    for blob, batch in zip(blobs, decoded):
        assert len(blob) <= max_bytes or len(batch) == 1  # one alert too big on its own still goes, alone
    if max_bytes == 1 << 30:
        assert len(blobs) == 1
    if max_bytes == 1:
        assert len(blobs) == len(alerts)


def test_pack_respects_the_index_limit() -> None:
    alerts = many_alerts(3)
    big = alerts * (MAX_ALERTS_PER_RECORD // 3 + 1)
    assert len(big) > MAX_ALERTS_PER_RECORD
    blobs = pack(big, 1 << 30)
    decoded = [_decoded(b) for b in blobs]
    assert len(blobs) == 2 and all(len(d) <= MAX_ALERTS_PER_RECORD for d in decoded)
    assert sum(len(d) for d in decoded) == len(big)


def test_pack_of_nothing() -> None:
    assert pack([], 1000) == []


@pytest.mark.parametrize("n", [1, 15, 16, 17, 300])
def test_a_packed_record_is_a_msgpack_batch_of_its_version(n: int) -> None:
    """`pack` frames alerts it encoded one by one: the frame must be what msgspec itself writes
    (a fixarray up to 15 alerts, an array 16 above)."""
    alerts = many_alerts(3) * 100
    (blob,) = pack(alerts[:n], 1 << 30)
    assert blob == msgspec.msgpack.encode(PackedBatch(WIRE_VERSION, [a.packed() for a in alerts[:n]]))


def test_a_record_written_before_the_packed_format_still_reads() -> None:
    """After an upgrade the internal topics still hold records of the previous format (alerts as
    msgpack maps): they read as the same alerts, JSON and all."""
    alerts = many_alerts(5)
    legacy = msgspec.msgpack.encode(LegacyBatch(alerts))
    assert unpack(legacy) == unpack(pack(alerts, 1 << 30)[0])


@pytest.mark.parametrize("n", [1, 16])
def test_format_1_is_what_versions_before_the_packed_format_read(n: int) -> None:
    """The first step of a rolling upgrade writes format 1 (`ALERTSTREAM_INTERNAL_RECORD_FORMAT=1`):
    byte for byte what the previous version wrote, so its workers still running can read it."""
    alerts = many_alerts(n)
    (blob,) = pack(alerts, 1 << 30, version=1)
    assert blob == msgspec.msgpack.encode(LegacyBatch(alerts))
    assert unpack(blob) == unpack(pack(alerts, 1 << 30)[0])


def test_a_record_of_another_format_version_is_refused() -> None:
    (blob,) = pack(many_alerts(1), 1 << 30)
    with pytest.raises(msgspec.DecodeError, match="format 3"):
        unpack(blob[:1] + b"\x03" + blob[2:])


# ---------------------------------------------------------------- DLQ headers


def dead_letter_headers(letter: DeadLetter, now_ms: int) -> dict[str, bytes]:
    """The headers the worker sends a dead letter with (the error router's, core/errors.py)."""
    return ErrorRouter("alerts.dlq", ("alerts.retry.1",)).dead_letter(letter.record, letter.reason, letter.detail, now_ms).headers


def test_dead_letter_headers() -> None:
    record = raw(b"{bad", 77, partition=5, topic="alerts", headers={"provider": b"keep", "tenant": b"acme", "x-trace": b"\x00\x01"})
    letter = DeadLetter(record, "malformed_json", "unexpected end" + "!" * 5000)
    headers = dead_letter_headers(letter, now_ms=1_700_000_000_123)
    assert headers["dlq_reason"] == b"malformed_json"
    assert headers["dlq_detail"].startswith(b"unexpected end") and len(headers["dlq_detail"]) == 2000
    assert headers["dlq_topic"] == b"alerts"
    assert headers["dlq_partition"] == b"5"
    assert headers["dlq_offset"] == b"77"
    assert headers["dlq_first_failure_ms"] == b"1700000000123"
    assert headers["dlq_attempts"] == b"1"
    for name, value in record.headers.items():
        assert headers[name] == value
    assert record.headers == {"provider": b"keep", "tenant": b"acme", "x-trace": b"\x00\x01"}  # not mutated
    assert all(isinstance(v, bytes) for v in headers.values())


def test_dead_letter_headers_of_a_real_dead_letter() -> None:
    letter = run([BAD["unknown_provider"]]).dead_letters[0]
    headers = dead_letter_headers(letter, now_ms=1)
    assert headers["dlq_reason"] == b"unknown_provider"
    assert headers["provider"] == b"nagios-classic"
    assert headers["dlq_offset"] == b"6" and headers["dlq_partition"] == b"0"


def test_records_older_than_the_queue_ttl_go_to_the_dlq_as_expired() -> None:
    fresh, stale = raw(generic(), 1), raw(generic(), 2)
    fresh.timestamp_ms, stale.timestamp_ms = 100_000, 10_000
    result = process_records([fresh, stale], partitions=4, default_tenant="default", max_payload_bytes=LIMIT,
                             max_age_ms=60_000, now_ms=120_000)
    assert [d.reason for d in result.dead_letters] == ["expired"]
    assert result.dead_letters[0].record is stale and "110s old" in result.dead_letters[0].detail
    assert result.alerts == 1


def test_critical_alerts_are_routed_to_their_own_partitions_map() -> None:
    result = run([raw(generic(severity="critical"), 1), raw(generic(severity="high", fingerprint="other"), 2)])
    assert sum(map(len, result.critical_by_partition.values())) == 1
    assert sum(map(len, result.by_partition.values())) == 1
