"""Alertmanager's two paths give one result (schemas/normalizers/alertmanager.py).

`normalize_bytes` decodes a well-formed webhook into typed structs; `normalize` works on parsed
JSON and judges everything else. Wherever the typed path answers, its alerts (or its refusal)
must be exactly the general path's; where it cannot, it must say so (None), never guess.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import schemas.normalizers as normalizers
from schemas.normalizers import InvalidPayload, NormalizeContext, normalize
from schemas.normalizers import alertmanager
from schemas.normalizers.base import Budget, NormalizeLimits

EXAMPLE = Path(__file__).resolve().parents[3] / "schemas" / "examples" / "prometheus_alertmanager_webhook.json"


def ctx(limits: NormalizeLimits | None = None) -> NormalizeContext:
    return NormalizeContext(tenant="t1", received_at="2025-01-15T10:05:00.000Z", provider_id="am-1",
                            budget=Budget(limits) if limits else None)


def outcome(fn: Any, payload: Any, context: NormalizeContext) -> Any:
    try:
        return fn(payload, context)
    except InvalidPayload as exc:
        return ("refused", exc.reason, exc.detail)


def general(raw: bytes, context: NormalizeContext) -> Any:
    try:
        parsed = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return ("refused", "malformed_json")
    return outcome(alertmanager.normalize, parsed, context)


def test_the_example_webhook_takes_the_typed_path_and_matches_the_general_one() -> None:
    raw = EXAMPLE.read_bytes()
    typed = outcome(alertmanager.normalize_bytes, raw, ctx())
    assert isinstance(typed, list) and len(typed) == len(json.loads(raw)["alerts"])
    assert typed == general(raw, ctx())
    assert normalize("prometheus", raw, ctx()) == typed  # the entry point takes it


@pytest.mark.parametrize("raw", [
    b'{"status": "firing", "labels": {"alertname": "a"}}',  # a bare alert
    b'{"alerts": [{"labels": {"alertname": "a", "code": 500}}]}',  # a number where strings belong
    b'{"alerts": [{"labels": {"alertname": "a", "gone": null}}]}',
    b'{"alerts": [{"labels": {"alertname": "a"}, "status": null, "fingerprint": 7}]}',
    b'{"alerts": [{"labels": {"alertname": "a"}}], "receiver": null}',
    b'{"alerts": []}',
    b'{"alerts": {"labels": {}}}',
    b'[{"labels": {"alertname": "a"}}]',
    b'{"alerts": [{"labels": {"alertname": "a"}}], "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",  # deeper than JSON parsers go
    b'{"alerts": [{"labels": {"alertname": "\\ud800"}}]}',  # a lone surrogate
    b'{"alerts": [{"labels": {"alertname": "a"}}]} trailing',
    b'\xef\xbb\xbf{"alerts": [{"labels": {"alertname": "a"}}]}',
])
def test_what_only_the_general_path_can_judge_is_left_to_it(raw: bytes) -> None:
    assert alertmanager.normalize_bytes(raw, ctx()) is None


def test_a_count_over_the_limit_is_refused_by_the_general_path_with_its_reason() -> None:
    raw = orjson.dumps({"alerts": [{"labels": {"alertname": f"a{i}"}} for i in range(5)]})
    limits = NormalizeLimits(max_alerts_per_record=4)
    assert alertmanager.normalize_bytes(raw, ctx(limits)) is None
    with pytest.raises(InvalidPayload) as refused:
        normalize("prometheus", raw, ctx(limits))
    assert refused.value.reason == "too_many_alerts"


def test_the_typed_path_refuses_as_the_general_one_does() -> None:
    for raw in (b'{"alerts": [{"labels": {"alertname": "a"}}, {"labels": {"job": "x"}}]}',
                b'{"alerts": [{"labels": {"alertname": "a"}, "status": "pending"}]}'):
        typed = outcome(alertmanager.normalize_bytes, raw, ctx())
        assert typed[0] == "refused" and typed == general(raw, ctx())


def test_duplicate_keys_keep_the_last_value_on_both_paths() -> None:
    raw = (b'{"alerts": [{"labels": {"alertname": "a", "alertname": "b"}, "status": "resolved", "status": "firing"}],'
           b' "receiver": "r1", "receiver": "r2"}')
    typed = alertmanager.normalize_bytes(raw, ctx())
    assert typed is not None and typed == general(raw, ctx())
    assert (typed[0].name, typed[0].status, typed[0].extra["receiver"]) == ("b", "firing", "r2")


# Values as webhooks send them, and as they should not: strings mostly, then what only the general
# path accepts (numbers, booleans, nulls) or refuses (objects, lists).
_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
_odd = st.one_of(st.none(), st.integers(-5, 5), st.booleans(), st.floats(allow_nan=False, allow_infinity=False),
                 st.lists(_text, max_size=2), st.dictionaries(_text, _text, max_size=2))
_value = st.one_of(_text, _text, _text, _text, _text, _text, _odd)
_times = st.sampled_from(["2025-01-15T10:04:00.123456789Z", "2025-01-15T11:04:00+01:00", "0001-01-01T00:00:00Z",
                          "yesterday", "", "2025-01-15T10:04:00.000Z"])
_labels = st.dictionaries(st.sampled_from(["alertname", "severity", "env", "environment", "service", "job", "x"]),
                          st.one_of(st.sampled_from(["a", "critical", "warning", "P1", "prod", ""]), _value),
                          max_size=6)
_alert = st.fixed_dictionaries({}, optional={
    "labels": st.one_of(_labels, _labels, _labels, _labels, _labels, _odd),
    "annotations": st.one_of(st.dictionaries(st.sampled_from(["summary", "description", "runbook"]), _value, max_size=3), _odd),
    "status": st.one_of(st.sampled_from(["firing", "resolved", "pending", ""]), _odd),
    "startsAt": st.one_of(_times, _odd),
    "endsAt": st.one_of(_times, _odd),
    "generatorURL": _value,
    "fingerprint": st.one_of(st.sampled_from(["f1", "f2", ""]), _odd),
    "unknown": _odd,
})
_webhook = st.fixed_dictionaries({}, optional={
    "alerts": st.one_of(st.lists(_alert, min_size=1, max_size=4), st.lists(_alert, max_size=4), _odd),
    "receiver": _value, "groupKey": _value, "externalURL": _value,
    "commonLabels": _labels, "groupLabels": _odd, "version": _value,
})


_clean_alert = st.fixed_dictionaries(
    {"labels": st.fixed_dictionaries({"alertname": st.sampled_from(["a", "HighLatency"])},
                                     optional={"severity": st.sampled_from(["critical", "warning", "P3"]), "job": _text,
                                               "env": _text})},
    optional={"annotations": st.dictionaries(st.sampled_from(["summary", "description"]), _text, max_size=2),
              "status": st.sampled_from(["firing", "resolved"]), "startsAt": _times, "endsAt": _times,
              "generatorURL": _text, "fingerprint": _text, "unknown": _odd})
_clean_webhook = st.fixed_dictionaries({"alerts": st.lists(_clean_alert, min_size=1, max_size=4)},
                                       optional={"receiver": _text, "groupKey": st.one_of(_text, st.text(min_size=257, max_size=400)), "externalURL": _text,
                                                 "commonLabels": _labels, "groupLabels": _odd, "version": _value})


def without_the_typed_path(raw: bytes) -> Any:
    """What the entry point answered before the typed path existed."""
    saved = normalizers._loaded.get("prometheus")
    normalizers._loaded["prometheus"] = (alertmanager.normalize, None)
    try:
        return outcome(lambda r, c: normalize("prometheus", r, c), raw, ctx())
    finally:
        normalizers._loaded.pop("prometheus")
        if saved is not None:
            normalizers._loaded["prometheus"] = saved


@settings(max_examples=200, deadline=None)
@given(_clean_webhook)
def test_a_well_formed_webhook_takes_the_typed_path(webhook: dict[str, Any]) -> None:
    raw = orjson.dumps(webhook)
    typed = alertmanager.normalize_bytes(raw, ctx())
    assert typed is not None
    assert typed == general(raw, ctx())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_webhook)
def test_the_typed_path_answers_only_what_the_general_path_would(webhook: dict[str, Any]) -> None:
    raw = orjson.dumps(webhook)
    typed = outcome(alertmanager.normalize_bytes, raw, ctx())
    event("typed" if typed is not None else "general")
    if typed is not None:
        assert typed == general(raw, ctx())
    assert outcome(lambda r, c: normalize("prometheus", r, c), raw, ctx()) == without_the_typed_path(raw)
