"""Fuzzing the normalizer stage (issue 14): every provider, through `process_records`.

For every generated record:
(a) nothing but InvalidPayload escapes a normalizer: the stage never parks a record as
    `internal_error`, and what it does produce is storable (no NUL at any depth, bounded
    nesting, ISO 8601 UTC dates);
(b) the record costs less than RECORD_CPU_BOUND_S of CPU, and growing an input tenfold
    grows its cost less than LINEAR_FACTOR-fold (a quadratic path grows it ~100-fold);
(c) its packed output stays under `output_cap(input bytes, alerts)`.

Inputs: the real examples with amplifying mutations (a list repeated, a string made long, NUL
or JSON text put in, a value buried deep, any value replaced or deleted; inside the JSON that
CloudWatch's `Message` and Zabbix's `tags` carry too), and each provider's known amplifiers
(repeated tag keys, large groups) at sizes hypothesis chooses.

Bounded for the unit run (< 60 s on a loaded 2-core machine): FUZZ_EXAMPLES (default 40) per
test, no hypothesis deadline (the CPU bound above is the assertion, in CPU time so that a
busy machine does not fail it). FUZZ_EXAMPLES=2000 for a longer hunt.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schemas
from core.records import RawRecord
from pipeline.normalizer import output_cap, pack, process_records
from schemas.alert import Alert
from schemas.normalizers.base import CANONICAL_TIME, DEFAULT_LIMITS
from tests.unit.schemas.test_normalizers import EMBEDDED, _mutate, _paths

EXAMPLES = Path(schemas.__file__).parent / "examples"
STEMS = [p.stem for p in sorted(EXAMPLES.glob("*.json"))]
LIMIT = 1 << 20
RECORD_CPU_BOUND_S = 1.0  # generated records are ≤ ~200 KB: a linear normalizer needs a few ms (0.3 s seen on a loaded CI machine); quadratic code took seconds
LINEAR_FACTOR = 30  # 10x the input may cost at most this many times as much
FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "40")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


def provider_of(stem: str) -> str:
    return stem.split("_", 1)[0]


def example(stem: str) -> Any:
    return orjson.loads((EXAMPLES / f"{stem}.json").read_bytes())


# ---------------------------------------------------------------------------------- the check


def _storable(value: Any, depth: int, where: str) -> None:
    """An independent walk (not the code under test): no NUL, nesting within the limit."""
    assert depth <= DEFAULT_LIMITS.max_depth, f"{where} nested {depth} deep"
    if isinstance(value, str):
        assert "\x00" not in value, where
    elif isinstance(value, dict):
        for key, item in value.items():
            assert "\x00" not in str(key), where
            _storable(item, depth + 1 if isinstance(item, (dict, list)) else depth, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _storable(item, depth + 1 if isinstance(item, (dict, list)) else depth, f"{where}[{index}]")


def check_alert(alert: Alert) -> None:
    assert CANONICAL_TIME.fullmatch(alert.last_received), alert.last_received
    assert alert.firing_start_time is None or CANONICAL_TIME.fullmatch(alert.firing_start_time)
    for field in ("name", "status", "severity", "fingerprint", "tenant", "provider_type", "provider_id", "id",
                  "environment", "service", "message", "description", "url", "image_url"):
        _storable(getattr(alert, field), 0, field)
    _storable(alert.source, 1, "source")
    _storable(alert.labels, 1, "labels")
    assert len(alert.labels) <= DEFAULT_LIMITS.max_labels_per_alert
    _storable(alert.extra, 1, "extra")


def check_record(provider: str, body: bytes) -> None:
    record = RawRecord("alerts", 0, 0, 1_736_935_560_000, b"k", body, {"provider": provider.encode(), "tenant": b"t"})
    started = time.thread_time()
    result = process_records([record], partitions=4, default_tenant="d", max_payload_bytes=LIMIT)
    blobs = [b for parts in (result.by_partition, result.critical_by_partition) for alerts in parts.values()
             for b in pack(alerts, 512 * 1024)]
    cpu = time.thread_time() - started
    assert cpu < RECORD_CPU_BOUND_S, f"{provider}: {len(body)} bytes took {cpu:.3f} s of CPU"  # (b)
    assert [d.detail for d in result.dead_letters if d.reason == "internal_error"] == []  # (a)
    if result.alerts:
        items = [a for parts in (result.by_partition, result.critical_by_partition) for alerts in parts.values()
                 for a in alerts]
        cap = output_cap(len(body), result.alerts)
        assert result.output_bytes <= cap  # (c) as the stage measures it
        assert sum(map(len, blobs)) <= cap + 6 * len(blobs)  # and as packed, plus each packed record's header
        for item in items:
            check_alert(item.normalized().alert)  # the body as the dedup stage and the sinks read it


def check_document(provider: str, doc: Any) -> None:
    try:
        body = orjson.dumps(doc)
    except orjson.JSONEncodeError:  # deeper than orjson writes (255): not a payload anyone can send us
        return
    check_record(provider, body)


# ------------------------------------------------------------------------ amplifying mutations

NASTY_TEXT = st.sampled_from([
    "\x00", "a\x00b", "\\u0000", "\\\\u0000", "2025-01-15T12:05:04+02:00", "2025-01-15T10:02:31.482617429Z",
    "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999Z", "+002025-01-15", "1736935560000", "yesterday", "",
    " ", "monitor", "k:v,k:w,k:v,bare", '{"a":{"b":[1,{"c":"\\u0000"}]}}', "[1,2,3]", "é" * 20, "P1", "sev1",
    "{HOST.NAME}", "*UNKNOWN*", "ALARM", "resolved",
])
SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=16) | NASTY_TEXT)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8) | NASTY_TEXT, children, max_size=4),
    max_leaves=12,
)


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = orjson.loads(doc) if part == EMBEDDED else doc[part]
    return doc


def _bury(value: Any, depth: int) -> Any:
    for _ in range(depth):
        value = {"d": value}
    return value


@st.composite
def mutated(draw: st.DrawFn, stem: str) -> Any:
    doc = example(stem)
    for _ in range(draw(st.integers(1, 3), label="mutations")):
        paths = _paths(doc)
        if not paths:
            break
        path = draw(st.sampled_from(paths), label="path")
        current = _get(doc, path)
        kind = draw(st.sampled_from(["replace", "delete", "repeat", "long", "nasty", "bury"]), label="kind")
        if kind == "delete":
            doc = _mutate(doc, path, None, True)
            continue
        # sizes stay bounded however the mutations stack: at most ~3,000 list items, 20,000 characters
        if kind == "repeat" and isinstance(current, list) and current:
            new: Any = current * min(draw(st.integers(2, 300), label="times"), max(1, 3000 // len(current)))
        elif kind == "long" and isinstance(current, str):
            new = ((current or "x") * draw(st.integers(2, 2000), label="times"))[:20_000]
        elif kind == "nasty":
            new = draw(NASTY_TEXT, label="nasty")
        elif kind == "bury":
            new = _bury(current, draw(st.integers(1, 120), label="depth"))
        else:
            new = draw(JSON_VALUES, label="value")
        try:
            doc = _mutate(doc, path, new, False)
        except orjson.JSONEncodeError:  # buried past what orjson writes (255) inside a JSON string: skip it
            continue
    return doc


@pytest.mark.parametrize("stem", STEMS)
@FUZZ
@given(data=st.data())
def test_mutated_examples(stem: str, data: st.DataObject) -> None:
    check_document(provider_of(stem), data.draw(mutated(stem), label="document"))


@pytest.mark.parametrize("provider", sorted({provider_of(s) for s in STEMS}))
@FUZZ
@given(value=JSON_VALUES)
def test_arbitrary_json(provider: str, value: Any) -> None:
    check_document(provider, value)


# ------------------------------------------------------------------- each provider's amplifiers
# Shapes that once cost quadratic time or output, parameterised by size: `n` items of the
# repeated thing, `width` bytes of the group-level thing.


def datadog_tags(n: int, width: int) -> Any:
    return {"title": "t", "tags": ",".join(f"k{i % 7}:{'v' * (width % 50)}{i}" for i in range(n))}


def zabbix_tags(n: int, width: int) -> Any:
    tags = [{"tag": f"k{i % 5}", "value": f"{'v' * (width % 50)}{i}"} for i in range(n)]
    return {"name": "n", "host_name": "h", "tags": orjson.dumps(tags).decode()}


def sentry_tags(n: int, width: int) -> Any:
    return {"id": "1", "event": {"title": "t", "tags": [[f"k{i % 3}", f"{'v' * (width % 50)}{i}"] for i in range(n)]}}


def pagerduty_teams(n: int, width: int) -> Any:
    data = {"type": "incident", "id": "P1", "title": "t" * max(1, width),
            "teams": [{"summary": f"team-{i}"} for i in range(n)]}
    return {"event": {"event_type": "incident.triggered", "data": data}}


def cloudwatch_dimensions(n: int, width: int) -> Any:
    alarm = {"AlarmName": "a" * max(1, width), "NewStateValue": "ALARM",
             "Trigger": {"Dimensions": [{"name": f"d{i % 9}", "value": str(i)} for i in range(n)]}}
    return {"Type": "Notification", "Message": orjson.dumps(alarm).decode()}


def alertmanager_group(n: int, width: int) -> Any:
    return {"receiver": "r" * width, "groupKey": "g" * width, "externalURL": "u" * width,
            "alerts": [{"labels": {"alertname": "a", "i": str(i)}} for i in range(n)]}


def grafana_group(n: int, width: int) -> Any:
    return {"receiver": "r", "title": "t" * width, "message": "m" * width, "groupKey": "g" * width,
            "alerts": [{"labels": {"alertname": "a", "i": str(i)}} for i in range(n)]}


def generic_list(n: int, width: int) -> Any:
    return [{"name": f"a{i}", "payload": {"note": "x" * (width % 100)}} for i in range(n)]


AMPLIFIERS: dict[str, Callable[[int, int], Any]] = {
    "datadog": datadog_tags, "zabbix": zabbix_tags, "sentry": sentry_tags, "pagerduty": pagerduty_teams,
    "cloudwatch": cloudwatch_dimensions, "prometheus": alertmanager_group, "grafana": grafana_group,
    "keep": generic_list,
}


@pytest.mark.parametrize("provider", sorted(AMPLIFIERS))
@FUZZ
@given(n=st.integers(0, 3000), width=st.integers(0, 20_000))
def test_amplifiers_within_budget_and_cap(provider: str, n: int, width: int) -> None:
    check_document(provider, AMPLIFIERS[provider](n, width))


def _cpu(provider: str, body: bytes) -> float:
    record = RawRecord("alerts", 0, 0, 1_736_935_560_000, b"k", body, {"provider": provider.encode()})
    best = float("inf")
    for _ in range(3):  # the best of three: CPU time still moves with caches and GC
        started = time.thread_time()
        result = process_records([record], partitions=4, default_tenant="d", max_payload_bytes=LIMIT)
        for parts in (result.by_partition, result.critical_by_partition):
            for alerts in parts.values():
                pack(alerts, 512 * 1024)
        best = min(best, time.thread_time() - started)
    return best


# n alerts/tags for the small input; the large one is 10x (and 10x as wide where a group grows with it)
LINEAR_SIZES = {"datadog": 2000, "zabbix": 2000, "sentry": 2000, "pagerduty": 2000, "cloudwatch": 2000,
                "prometheus": 300, "grafana": 300, "keep": 300}


@pytest.mark.parametrize("provider", sorted(AMPLIFIERS))
def test_ten_times_the_input_costs_less_than_thirty_times_the_time(provider: str) -> None:
    n = LINEAR_SIZES[provider]
    small = orjson.dumps(AMPLIFIERS[provider](n, n * 4))
    large = orjson.dumps(AMPLIFIERS[provider](n * 10, n * 40))
    assert 8 * len(small) < len(large) < 12 * len(small)
    t_small, t_large = _cpu(provider, small), _cpu(provider, large)
    # the small input takes ~2-5 ms; 2 ms of slack for timer granularity on so short a run
    assert t_large < LINEAR_FACTOR * t_small + 0.002, f"{provider}: {t_small * 1000:.1f} ms → {t_large * 1000:.1f} ms"
