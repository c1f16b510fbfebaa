"""Issue 14, normalizer side: what one record may cost, and what reaches the canonical alert.

Each test here failed on the code before the fix (see the comment on each): quadratic
multi-valued labels, group fields copied into every alert, NUL inside nested JSON,
RecursionError on deep nesting, unparsed dates, no per-record budget.
"""

from __future__ import annotations

import copy
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

import schemas
from core.records import RawRecord
from pipeline.normalizer import iter_process_records, output_cap, pack, process_records
from schemas.normalizers import InvalidPayload, NormalizeContext, normalize
from schemas.rules import RuleSet
from schemas.normalizers.base import (
    CANONICAL_TIME,
    DEFAULT_LIMITS,
    GROUP_INLINE_TOTAL_BYTES,
    Budget,
    Labels,
    NormalizeLimits,
    group_fields_per_alert,
)

EXAMPLES = Path(schemas.__file__).parent / "examples"
CTX = NormalizeContext(tenant="acme", received_at="2025-01-15T10:06:00.000Z")
LIMIT = 1 << 20


def example(stem: str) -> dict[str, Any]:
    return orjson.loads((EXAMPLES / f"{stem}.json").read_bytes())


def record(body: bytes, provider: str = "keep", offset: int = 0) -> RawRecord:
    return RawRecord("alerts", 0, offset, 1_736_935_560_000, b"k", body, {"provider": provider.encode(), "tenant": b"acme"})


def run(records: list[RawRecord], **kw: Any):  # noqa: ANN201
    return process_records(records, partitions=8, default_tenant="default", max_payload_bytes=LIMIT, **kw)


def packed_bytes(result) -> int:  # noqa: ANN001
    return sum(len(blob) for parts in (result.by_partition, result.critical_by_partition)
               for alerts in parts.values() for blob in pack(alerts, 512 * 1024))


@contextmanager
def cpu_deadline(seconds: float) -> Iterator[None]:
    """Fail (TimeoutError) once the process has used `seconds` of CPU: a quadratic regression fails
    in about that long instead of running for minutes. CPU time, so a loaded machine does not fail it."""
    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"more than {seconds} s of CPU")

    previous = signal.signal(signal.SIGPROF, expired)
    signal.setitimer(signal.ITIMER_PROF, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, previous)


# ------------------------------------------------------------------ finding 1: linear labels


def test_datadog_12000_tags_of_one_key_normalize_in_linear_time() -> None:
    # Before: add_label re-split the joined value on every repeat: ~20-45 s of CPU for this body.
    tags = ",".join(f"team:t{i}" for i in range(12_000))
    body = orjson.dumps({"title": "CPU high", "tags": tags + ",team:t7,monitor"})
    started = time.thread_time()
    with cpu_deadline(5.0):
        (alert,) = normalize("datadog", body, CTX)
    assert time.thread_time() - started < 0.5
    values = alert.labels["team"].split(",")
    assert len(values) == 12_000 and values[:2] == ["t0", "t1"] and values[-1] == "t11999"  # repeat kept once


@pytest.mark.parametrize("provider, body", [
    ("zabbix", {"name": "n", "tags": orjson.dumps([{"tag": "svc", "value": f"v{i}"} for i in range(12_000)]).decode()}),
    ("sentry", {"id": "1", "event": {"title": "t", "tags": [["k", f"v{i}"] for i in range(12_000)]}}),
    ("pagerduty", {"event": {"event_type": "incident.triggered", "data": {
        "type": "incident", "id": "P1", "title": "t", "teams": [{"summary": f"team-{i}"} for i in range(12_000)]}}}),
])
def test_every_multi_valued_label_path_is_linear(provider: str, body: dict[str, Any]) -> None:
    # Before: the same quadratic add_label behind Zabbix tags, Sentry tags and PagerDuty teams.
    started = time.thread_time()
    with cpu_deadline(5.0):
        (alert,) = normalize(provider, orjson.dumps(body), CTX)
    assert time.thread_time() - started < 0.5
    assert max(len(v.split(",")) for v in alert.labels.values()) == 12_000


def test_labels_keep_each_distinct_value_once_in_arrival_order() -> None:
    labels = Labels()
    for key, value in [("a", "1"), ("a", "2"), ("a", "1"), ("b", 3), ("a", "2,1"), ("a", "3,4"), ("c", None),
                       ("", "x"), ("d", {"no": 1}), ("b", "3"), ("e", True)]:
        labels.add(key, value)
    assert "a" in labels and "c" not in labels
    assert labels.build() == {"a": "1,2,3,4", "b": "3", "e": "True"}


# ------------------------------------------------------------ finding 2: group fields, output cap


def hostile_alertmanager(group_bytes: int, alerts: int) -> bytes:
    alert = b'{"labels":{"alertname":"a"}}'
    return (b'{"receiver":"r","groupKey":"' + b"g" * group_bytes + b'","externalURL":"http://am",'
            b'"alerts":[' + b",".join([alert] * alerts) + b"]}")


def test_hostile_alertmanager_group_is_carried_once() -> None:
    # Before: the 30 KB groupKey was copied into each of the 1,000 alerts: 30 MB packed from 60 KB.
    body = hostile_alertmanager(30_000, 1_000)
    result = run([record(body, "prometheus")])
    assert not result.dead_letters and result.alerts == 1_000
    assert packed_bytes(result) < 16 * len(body)
    items = sorted((a.normalized() for alerts in result.by_partition.values() for a in alerts), key=lambda a: a.uid)
    with_key = [a for a in items if "groupKey" in a.alert.extra]
    assert len(with_key) == 1 and len(with_key[0].alert.extra["groupKey"]) == 30_000
    assert all(a.alert.extra["receiver"] == "r" and a.alert.extra["externalURL"] == "http://am" for a in items)


def test_grafana_message_is_on_the_first_alert_only() -> None:
    # Before: every alert repeated the group's `message`, which renders all of the group's alerts.
    doc = example("grafana_alerting_webhook")
    second = copy.deepcopy(doc["alerts"][0])
    second["labels"]["region"], second["fingerprint"] = "us-east-1", "d2b48f1e03c56e7b"
    doc["alerts"].append(second)
    first, other = normalize("grafana", orjson.dumps(doc), CTX)
    assert first.extra["groupMessage"] == doc["message"] and "groupMessage" not in other.extra
    small = {"receiver", "groupKey", "externalURL", "orgId", "groupTitle", "groupStatus", "groupState",
             "truncatedAlerts", "version"}
    assert small <= set(other.extra) and small | {"groupMessage"} <= set(first.extra)


def test_group_fields_per_alert_keep_small_scalars_within_the_allowance() -> None:
    group = {"receiver": "keep", "groupKey": "k" * 300, "message": "m", "orgId": 1, "nested": {"a": 1},
             **{f"f{i}": "x" * 100 for i in range(10)}}
    inline = group_fields_per_alert(group, never=frozenset({"message"}))
    assert inline["receiver"] == "keep" and inline["orgId"] == 1
    assert "groupKey" not in inline and "message" not in inline and "nested" not in inline
    assert sum(len(k) + (len(v) if isinstance(v, str) else 24) for k, v in inline.items()) <= GROUP_INLINE_TOTAL_BYTES
    assert inline == group_fields_per_alert(group, never=frozenset({"message"}))  # deterministic


def test_output_over_its_cap_goes_to_the_dlq_with_a_reason() -> None:
    # Grafana alerts without an alertname are named after the group title (Keep's choice): a
    # 100 KB title on 2,000 alerts would be 200 MB. Before: no cap, all of it was packed.
    alerts = [{"labels": {"i": str(i)}} for i in range(2_000)]
    body = orjson.dumps({"title": "t" * 100_000, "alerts": alerts})
    with cpu_deadline(10.0):
        result = run([record(body, "grafana"), record(orjson.dumps({"name": "fine"}), offset=1)])
    assert [d.reason for d in result.dead_letters] == ["output_too_large"]
    assert "input bytes" in result.dead_letters[0].detail and result.alerts == 1  # the next record still flows


def test_every_example_is_far_below_its_cap() -> None:
    for path in sorted(EXAMPLES.glob("*.json")):
        if "subscription" in path.stem:
            continue
        provider = {"prometheus": "prometheus"}.get(path.stem.split("_")[0], path.stem.split("_")[0])
        body = orjson.dumps(orjson.loads(path.read_bytes()))
        result = run([record(body, provider)])
        assert result.alerts and packed_bytes(result) < 2 * len(body) < output_cap(len(body), result.alerts), path.stem
        assert result.output_bytes < output_cap(len(body), result.alerts), path.stem


# ------------------------------------------------------------------ finding 1: per-record budget


def test_alert_count_is_refused_before_any_alert_is_read() -> None:
    limits = NormalizeLimits(max_alerts_per_record=10)
    body = orjson.dumps([{"name": f"a{i}"} for i in range(11)])
    result = run([record(body)], limits=limits)
    assert [(d.reason, d.detail) for d in result.dead_letters] == [("too_many_alerts", "11 alerts in one record > limit 10")]
    assert not run([record(orjson.dumps([{"name": f"a{i}"} for i in range(10)]))], limits=limits).dead_letters


def test_cpu_budget_sends_the_record_to_the_dlq_and_the_batch_goes_on() -> None:
    limits = NormalizeLimits(record_cpu_budget_ms=0.001)  # any record of a few alerts is over it
    heavy = record(orjson.dumps([{"name": f"a{i}", "labels": {"k": "v" * 50}} for i in range(200)]))
    result = run([heavy], limits=limits)
    assert [d.reason for d in result.dead_letters] == ["over_budget"]
    assert "ms of CPU" in result.dead_letters[0].detail
    fine = run([heavy, record(orjson.dumps({"name": "x"}), offset=1)])
    assert not fine.dead_letters and fine.alerts == 201


def test_budget_reads_its_clock_only_every_few_steps() -> None:
    now = [0.0]
    budget = Budget(NormalizeLimits(record_cpu_budget_ms=10), clock=lambda: now[0])
    now[0] = 1.0  # far over, but not looked at yet
    for _ in range(Budget._EVERY - 1):
        budget.tick()
    with pytest.raises(InvalidPayload) as info:
        budget.tick()
    assert info.value.reason == "over_budget"


def test_too_many_labels_on_one_alert() -> None:
    tags = ",".join(f"k{i}:v" for i in range(DEFAULT_LIMITS.max_labels_per_alert + 1))
    result = run([record(orjson.dumps({"title": "t", "tags": tags}), "datadog")])
    assert [d.reason for d in result.dead_letters] == ["over_budget"]


def test_limits_are_checked_when_built() -> None:
    with pytest.raises(ValueError):
        NormalizeLimits(max_alerts_per_record=0x10000)  # positions keep the index in 16 bits
    with pytest.raises(ValueError):
        NormalizeLimits(max_output_ratio=0)


def test_chunks_are_bounded_and_cover_the_batch_in_order() -> None:
    records = [record(orjson.dumps([{"name": f"r{n}-{i}"} for i in range(20)]), offset=n) for n in range(10)]
    whole = run(records)
    chunks = list(iter_process_records(records, partitions=8, default_tenant="d", max_payload_bytes=LIMIT,
                                       chunk_max_output_bytes=whole.output_bytes // 4))
    assert 4 <= len(chunks) < 10
    assert [r.offset for c in chunks for r in c.records] == list(range(10))
    assert all(c.output_bytes < whole.output_bytes // 4 + whole.output_bytes // 10 + 1 for c in chunks)  # ≤ limit + one record
    assert sum(c.alerts for c in chunks) == whole.alerts == 200
    by_time = list(iter_process_records(records, partitions=8, default_tenant="d", max_payload_bytes=LIMIT,
                                        chunk_max_ms=0))
    assert [len(c.records) for c in by_time] == [1] * 10  # every record is past a zero budget: one each
    assert len(list(iter_process_records([], partitions=8, default_tenant="d", max_payload_bytes=LIMIT))) == 1


# ------------------------------------------------------------------ finding 9: NUL and depth


def cloudwatch_with(**alarm_changes: Any) -> bytes:
    doc = example("cloudwatch_sns_notification")
    alarm = orjson.loads(doc["Message"])
    alarm.update(alarm_changes)
    doc["Message"] = orjson.dumps(alarm).decode()
    return orjson.dumps(doc)


def test_nul_inside_the_sns_message_is_refused() -> None:
    # Before: the raw check saw only `\\u0000` (escaped once more), so the alarm became name='a\x00b'.
    body = cloudwatch_with(AlarmName="a\x00b")
    assert b"\\\\u0000" in body
    with pytest.raises(InvalidPayload) as info:
        normalize("cloudwatch", body, CTX)
    assert info.value.reason == "invalid_field" and "name" in info.value.detail and "NUL" in info.value.detail
    result = run([record(body, "cloudwatch")])
    assert [d.reason for d in result.dead_letters] == ["invalid_field"]


@pytest.mark.parametrize("where", ["key", "value", "deep value"])
def test_nul_anywhere_in_extra_is_refused(where: str) -> None:
    trigger = {"Dimensions": [], "Note\x00" if where == "key" else "Note": "x\x00" if where == "value" else "x",
               "Deep": [[{"n": "y\x00" if where == "deep value" else "y"}]]}
    with pytest.raises(InvalidPayload) as info:
        normalize("cloudwatch", cloudwatch_with(Trigger=trigger), CTX)
    assert info.value.reason == "invalid_field" and "extra.Trigger" in info.value.detail


def test_nul_in_zabbix_tags_json_is_refused() -> None:
    tags = orjson.dumps([{"tag": "svc", "value": "a\x00b"}]).decode()
    with pytest.raises(InvalidPayload) as info:
        normalize("zabbix", orjson.dumps({"name": "n", "tags": tags}), CTX)
    assert info.value.reason == "invalid_field" and "labels.svc" in info.value.detail


def test_an_escaped_backslash_before_u0000_is_text_not_nul() -> None:
    (alert,) = normalize("cloudwatch", cloudwatch_with(AlarmDescription="C:\\u0000 path"), CTX)
    assert alert.description == "C:\\u0000 path"


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"d": value}
    return value


def test_json_1000_deep_is_invalid_payload_not_recursion_error() -> None:
    # Before: RecursionError from the content hash, parked as internal_error. (orjson writes at most
    # 255 levels, so the body is written by hand; it reads up to 1,024.)
    body = b'{"name":"deep","payload":' + b'{"d":' * 1000 + b'"leaf"' + b"}" * 1000 + b"}"
    result = run([record(body)])
    assert [d.reason for d in result.dead_letters] == ["too_deep"]


def test_depth_limit_is_inclusive() -> None:
    limit = DEFAULT_LIMITS.max_depth  # extra itself is level 1, so `payload` holds limit - 1 levels
    ok = run([record(orjson.dumps({"name": "ok", "payload": nested(limit - 1)}))])
    assert not ok.dead_letters
    deep = run([record(orjson.dumps({"name": "deep", "payload": nested(limit)}))])
    assert [d.reason for d in deep.dead_letters] == ["too_deep"]
    assert "extra.payload.d" in deep.dead_letters[0].detail


def test_deep_json_inside_an_sns_message_is_refused() -> None:
    with pytest.raises(InvalidPayload) as info:
        normalize("cloudwatch", cloudwatch_with(Deep=nested(200)), CTX)
    assert info.value.reason == "too_deep"


# ------------------------------------------------------------------ finding 8: dates in UTC


@pytest.mark.parametrize("given, stored", [
    ("2025-01-15T12:05:04+02:00", "2025-01-15T10:05:04.000Z"),
    ("2025-01-15T10:05:04.512345Z", "2025-01-15T10:05:04.512Z"),
    ("2025-01-15 10:05:04", "2025-01-15T10:05:04.000Z"),  # naive means UTC
    ("2025-01-15T10:05:04.512Z", "2025-01-15T10:05:04.512Z"),
])
def test_generic_dates_are_stored_in_utc(given: str, stored: str) -> None:
    # Before: the string was stored as given and reached the search store's date fields.
    (alert,) = normalize("keep", orjson.dumps({"name": "n", "lastReceived": given, "firingStartTime": given}), CTX)
    assert alert.last_received == stored and alert.firing_start_time == stored


def test_unreadable_generic_dates_are_kept_in_extra_not_in_date_fields() -> None:
    (alert,) = normalize("keep", orjson.dumps({"name": "n", "lastReceived": "yesterday", "firingStartTime": 12}), CTX)
    assert alert.last_received == CTX.received_at and alert.firing_start_time is None
    assert alert.extra == {"lastReceived": "yesterday", "firingStartTime": 12}


def test_alertmanager_starts_at_with_nanoseconds_and_offset() -> None:
    doc = example("prometheus_alertmanager_webhook")
    doc["alerts"][0]["startsAt"] = "2025-01-15T12:02:31.482617429+02:00"
    doc["alerts"][1]["startsAt"] = "not a time"
    first, second = normalize("prometheus", orjson.dumps(doc), CTX)
    assert first.firing_start_time == "2025-01-15T10:02:31.482Z"
    assert first.extra["startsAt"] == "2025-01-15T12:02:31.482617429+02:00"  # the original, as sent
    assert second.firing_start_time is None and second.extra["startsAt"] == "not a time"


def test_every_example_has_canonical_dates() -> None:
    for path in sorted(EXAMPLES.glob("*.json")):
        if "subscription" in path.stem:
            continue
        for alert in normalize(path.stem.split("_")[0], path.read_bytes(), CTX):
            assert CANONICAL_TIME.fullmatch(alert.last_received), path.stem
            assert alert.firing_start_time is None or CANONICAL_TIME.fullmatch(alert.firing_start_time), path.stem


@pytest.mark.parametrize("rule", ["{provider: '*', fingerprint_fields: [extra.payload]}",
                                  "{provider: '*', ignore_fields: [extra.payload, extra.Trigger]}"])
def test_custom_rules_get_the_same_checks(rule: str) -> None:
    # A custom rule reads nested fields (orjson stops at 255 levels: it raised TypeError) or hashes
    # without them: its alerts are checked whole before the rule runs.
    rules = RuleSet.from_yaml(f"rules:\n  - {rule}\n")
    deep = b'{"name":"deep","payload":' + b'{"d":' * 300 + b'"leaf"' + b"}" * 300 + b"}"
    nul = cloudwatch_with(Trigger={"Dimensions": [], "Note": "x\x00"})
    result = run([record(deep), record(nul, "cloudwatch", offset=1), record(orjson.dumps({"name": "ok"}), offset=2)],
                 rules=rules)
    assert [d.reason for d in result.dead_letters] == ["too_deep", "invalid_field"] and result.alerts == 1


def test_a_full_garbage_collection_during_a_record_is_not_charged_to_it() -> None:
    """A collection of the whole heap can take longer than the budget in a big process; the record
    that happened to trigger it did not cause that work."""
    import gc

    from schemas.normalizers.base import Budget

    garbage = [[i] for i in range(300_000)]  # a heap a full collection takes a while to walk
    budget = Budget(NormalizeLimits(record_cpu_budget_ms=1))
    started = time.thread_time()
    while time.thread_time() - started < 0.02:  # a full collection or several: well over the 1 ms budget
        gc.collect()
    budget.check()  # no over_budget: the time was the collector's
    del garbage
    spent = Budget(NormalizeLimits(record_cpu_budget_ms=1))
    started = time.thread_time()
    while time.thread_time() - started < 0.02:
        pass  # the record's own work
    with pytest.raises(InvalidPayload, match="over_budget|CPU"):
        spent.check()


def _burn_cpu(seconds: float) -> None:
    started = time.thread_time()
    while time.thread_time() - started < seconds:
        pass


def test_a_budget_from_a_shared_anchor_charges_the_record_only_its_own_cpu() -> None:
    """The normalize stage reads the CPU clock once per chunk (`CpuAnchor`), not per record: a
    record's budget must neither include the records before it nor let it run past its own budget
    (beyond time the thread spent preempted, which only makes it more lenient)."""
    from schemas.normalizers.base import Budget, CpuAnchor

    anchor = CpuAnchor.read()
    _burn_cpu(0.03)  # the records before this one
    budget = Budget(NormalizeLimits(record_cpu_budget_ms=20), anchor=anchor)
    budget.check()  # the 30 ms before it are not its own
    _burn_cpu(0.06)  # 60 ms of its own against 20: over, with room for preemption on a busy machine
    with pytest.raises(InvalidPayload, match="over_budget|CPU"):
        budget.check()
