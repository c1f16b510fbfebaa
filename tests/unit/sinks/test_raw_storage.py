"""The raw storage policy: modes, resolution, field filters, deterministic sampling, the rows."""

from __future__ import annotations

import orjson
import pytest

from core.records import DeadLetter, RawRecord
from sinks.raw_storage import RAW_COLUMNS, RawPolicy, RawPolicyError, raw_identity, raw_rows_for

POLICY = """
version: 1
default: errors
rules:
  - tenant: acme
    provider: prometheus
    mode: all
    deny: [alerts.annotations.secret, commonLabels.token]
  - tenant: acme
    mode: "off"
  - provider: datadog
    mode: sample:0.25
    allow: [title, tags, alert.id]
  - tenant: quiet
    provider: alertmanager
    mode: errors
"""


def record(offset: int, value: bytes, *, provider: str | None = None, tenant: str | None = None) -> RawRecord:
    headers = {}
    if provider:
        headers["provider"] = provider.encode()
    if tenant:
        headers["tenant"] = tenant.encode()
    return RawRecord("alerts", 1, offset, 1_763_800_000_000 + offset, None, value, headers)


def test_resolution_most_specific_rule_wins_whole() -> None:
    policy = RawPolicy.from_yaml(POLICY)
    assert policy.for_("acme", "prometheus").mode == "all"
    assert policy.for_("acme", "alertmanager").mode == "all"  # the header alias of prometheus
    assert policy.for_("acme", "grafana").mode == "off"  # tenant+* beats *+provider
    assert policy.for_("acme", "datadog").mode == "off"
    assert policy.for_("other", "datadog").mode == "sample" and policy.for_("other", "datadog").rate == 0.25
    assert policy.for_("other", "zabbix").mode == "errors"  # the default
    assert RawPolicy().for_("any", "keep").mode == "errors"  # no file: errors only, as Keep


@pytest.mark.parametrize("bad, problem", [
    ("default: sometimes", "mode must be"),
    ("rules: [{mode: 'sample:0'}]", "(0, 1]"),
    ("rules: [{mode: 'sample:x'}]", "must be a number"),
    ("rules: [{mode: all, allow: [a], deny: [b]}]", "not both"),
    ("rules: [{mode: all, provider: nagios}]", "unknown provider"),
    ("rules: [{mode: all, allow: name}]", "list of dotted paths"),
    ("rules: [{mode: all, allow: ['a..b']}]", "not a dotted path"),
    ("rules: [{mode: all}, {mode: 'off'}]", "both apply"),
    ("colour: blue", "colour"),
])
def test_invalid_policies_say_what_is_wrong(bad: str, problem: str) -> None:
    with pytest.raises(RawPolicyError) as err:
        RawPolicy.from_yaml(bad, "policy.yaml")
    assert problem in str(err.value) and "policy.yaml" in str(err.value)


def test_deny_removes_paths_through_lists_and_allow_keeps_only_paths() -> None:
    policy = RawPolicy.from_yaml(POLICY)
    webhook = {"alerts": [{"labels": {"a": "1"}, "annotations": {"summary": "s", "secret": "x"}},
                          {"annotations": {"secret": "y"}}, "not-an-object"],
               "commonLabels": {"token": "t", "team": "core"}, "status": "firing"}
    kept = orjson.loads(policy.for_("acme", "prometheus").filter(orjson.dumps(webhook)))
    assert kept == {"alerts": [{"labels": {"a": "1"}, "annotations": {"summary": "s"}}, {"annotations": {}}, "not-an-object"],
                    "commonLabels": {"team": "core"}, "status": "firing"}

    event = {"title": "t", "tags": ["a:b"], "alert": {"id": 7, "body": "secret"}, "body": "big"}
    assert orjson.loads(policy.for_("x", "datadog").filter(orjson.dumps(event))) == {"title": "t", "tags": ["a:b"], "alert": {"id": 7}}
    # without a field list the bytes are stored as they came, even if not JSON
    assert policy.for_("x", "zabbix").filter(b"\xff not json") == b"\xff not json"
    # with one, a payload that is not JSON is withheld rather than stored unfiltered
    assert policy.for_("acme", "prometheus").filter(b"{broken") is None


def test_sampling_is_deterministic_by_position_and_close_to_the_rate() -> None:
    draws = [raw_identity("alerts", 0, offset)[1] for offset in range(20_000)]
    assert draws == [raw_identity("alerts", 0, offset)[1] for offset in range(20_000)]
    assert 0.23 < sum(d < 0.25 for d in draws) / len(draws) < 0.27
    assert raw_identity("alerts", 0, 1)[0] != raw_identity("alerts", 1, 1)[0]


def test_rows_by_mode_errors_always_kept_unless_off() -> None:
    policy = RawPolicy.from_yaml(POLICY)
    records = [
        record(0, b'{"alerts": []}', provider="prometheus", tenant="acme"),  # all
        record(1, b'{"x": 1}', provider="grafana", tenant="acme"),  # off
        record(2, b'{bad json', provider="grafana", tenant="acme"),  # off, even as an error
        record(3, b'{"name": "n"}'),  # keep, default tenant: default mode errors, processed → no
        record(4, b'{"name": ', tenant="beta"),  # error under the default → kept
        *[record(100 + i, b'{"title": "t", "body": "b"}', provider="datadog") for i in range(400)],  # sampled
    ]
    letters = [DeadLetter(records[2], "malformed_json", "x"), DeadLetter(records[4], "malformed_json", "unexpected end\x00")]
    rows = raw_rows_for(records, letters, policy, default_tenant="default")
    by_offset = {int(r[RAW_COLUMNS.index("source")].rsplit("/", 1)[1]): dict(zip(RAW_COLUMNS, r)) for r in rows}
    assert {0, 4} <= set(by_offset) and not {1, 2, 3} & set(by_offset)
    assert by_offset[0]["tenant"] == "acme" and by_offset[0]["provider_type"] == "prometheus" and by_offset[0]["error"] is None
    assert by_offset[4] | {"id": None, "received_at": None} == {
        "id": None, "received_at": None, "tenant": "beta", "provider_type": "keep", "source": "alerts/1/4",
        "raw": b'{"name": ', "error": "malformed_json: unexpected end\ufffd"}
    sampled = [r for o, r in by_offset.items() if o >= 100]
    assert 60 < len(sampled) < 140  # ~25% of 400
    assert all(orjson.loads(r["raw"]) == {"title": "t"} for r in sampled)
    # the same batch again gives the same rows (ids and choices): a replay writes nothing new
    assert raw_rows_for(records, letters, policy, default_tenant="default") == rows


def test_oversized_payloads_are_recorded_without_their_bytes() -> None:
    policy = RawPolicy.from_yaml("default: all\nmax_raw_bytes: 10")
    (row,) = raw_rows_for([record(0, b'{"name": "0123456789"}')], [], policy, default_tenant="d")
    assert row[RAW_COLUMNS.index("raw")] is None
    assert RawPolicy.from_yaml("default: 'off'").stores_nothing
    assert RawPolicy.from_yaml("default: off").stores_nothing  # YAML's bare off (a boolean) too


def test_header_keys_are_bounded_and_nul_free() -> None:
    rec = RawRecord("alerts", 0, 1, 0, None, b"{", {"tenant": b"t\x00" + b"x" * 5000})
    (row,) = raw_rows_for([rec], [DeadLetter(rec, "invalid_header", "NUL")], RawPolicy(), default_tenant="d")
    tenant = row[RAW_COLUMNS.index("tenant")]
    assert len(tenant) == 256 and "\x00" not in tenant
