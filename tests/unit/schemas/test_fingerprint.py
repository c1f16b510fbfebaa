"""Fingerprint and content hash: properties over generated alerts."""

from __future__ import annotations

import copy
import json
import hashlib
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.alert import STATUSES, Alert, encode_alert_json
from schemas.fingerprint import DEFAULT_IGNORE_FIELDS, content_hash, content_hash_and_document, fingerprint_from_fields, fingerprint_of

settings.register_profile("fingerprint", max_examples=60, deadline=None)
settings.load_profile("fingerprint")

text = st.text(min_size=1, max_size=12)
label_maps = st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=6)
json_scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
extra_maps = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


@st.composite
def alerts(draw: st.DrawFn) -> Alert:
    return Alert(
        name=draw(text),
        status=draw(st.sampled_from(STATUSES)),
        severity=draw(st.sampled_from(("critical", "high", "warning", "info", "low"))),
        last_received=draw(st.sampled_from(("2025-01-15T10:05:04.512Z", "2025-01-15T10:06:00.000Z"))),
        fingerprint=draw(st.text(max_size=12)),
        tenant=draw(st.sampled_from(("default", "acme"))),
        labels=draw(label_maps),
        extra=draw(extra_maps),
    )


def reorder(value: Any, rng: st.DataObject) -> Any:
    """The same data with every dict's keys in a drawn order, at every depth."""
    if isinstance(value, dict):
        keys = rng.draw(st.permutations(list(value)))
        return {k: reorder(value[k], rng) for k in keys}
    if isinstance(value, list):
        return [reorder(v, rng) for v in value]
    return value


def with_(alert: Alert, **changes: Any) -> Alert:
    return msgspec.structs.replace(copy.deepcopy(alert), **changes)


# ---------------------------------------------------------------- content_hash


@given(alerts(), st.data())
def test_content_hash_ignores_key_order_of_labels_and_extra(alert: Alert, data: st.DataObject) -> None:
    shuffled = with_(alert, labels=reorder(alert.labels, data), extra=reorder(alert.extra, data))
    assert content_hash(shuffled) == content_hash(alert)


def test_content_hash_key_order_explicit() -> None:
    a = Alert(name="x", last_received="t", labels={"a": "1", "b": "2"}, extra={"n": {"x": 1, "y": [{"p": 1, "q": 2}]}, "m": 2})
    b = Alert(name="x", last_received="t", labels={"b": "2", "a": "1"}, extra={"m": 2, "n": {"y": [{"q": 2, "p": 1}], "x": 1}})
    assert list(a.labels) != list(b.labels)
    assert content_hash(a) == content_hash(b)


@given(alerts(), st.text(max_size=30))
def test_content_hash_ignores_last_received_by_default(alert: Alert, other_time: str) -> None:
    assert DEFAULT_IGNORE_FIELDS == ("lastReceived",)
    assert content_hash(with_(alert, last_received=other_time)) == content_hash(alert)


@given(alerts(), st.text(max_size=8), st.text(max_size=8))
def test_content_hash_ignores_custom_dotted_paths(alert: Alert, pod_a: str, pod_b: str) -> None:
    ignore = ("lastReceived", "labels.pod", "extra.lag")
    a = with_(alert, labels={**alert.labels, "pod": pod_a}, extra={**alert.extra, "lag": 1})
    b = with_(alert, labels={**alert.labels, "pod": pod_b}, extra={**alert.extra, "lag": {"deep": [pod_b]}})
    assert content_hash(a, ignore) == content_hash(b, ignore)
    # the ignored path present or absent: the same hash
    c = with_(alert, labels={k: v for k, v in alert.labels.items() if k != "pod"},
              extra={k: v for k, v in alert.extra.items() if k != "lag"})
    assert content_hash(c, ignore) == content_hash(a, ignore)
    # without the rule, the pod counts
    if pod_a != pod_b:
        assert content_hash(a) != content_hash(b)


def test_content_hash_ignore_paths_that_do_not_exist_are_harmless() -> None:
    alert = Alert(name="x", last_received="t", labels={"a": "1"})
    assert content_hash(alert, ("lastReceived", "nope.deeper.still", "labels.missing", "name.not_a_dict")) == content_hash(alert)
    assert content_hash(alert, ()) != content_hash(alert)  # lastReceived counts when not ignored


def test_content_hash_does_not_mutate_the_alert() -> None:
    alert = Alert(name="x", last_received="t", labels={"pod": "p1"}, extra={"lag": 5})
    content_hash(alert, ("labels.pod", "extra.lag"))
    assert alert.labels == {"pod": "p1"} and alert.extra == {"lag": 5}


@given(alerts(), text)
def test_content_hash_changes_with_the_name(alert: Alert, name: str) -> None:
    if name != alert.name:
        assert content_hash(with_(alert, name=name)) != content_hash(alert)


@given(alerts(), st.sampled_from(STATUSES))
def test_content_hash_changes_with_the_status(alert: Alert, status: str) -> None:
    if status != alert.status:
        assert content_hash(with_(alert, status=status)) != content_hash(alert)


def test_content_hash_firing_to_resolved() -> None:
    firing = Alert(name="disk full", status="firing", last_received="t1")
    resolved = Alert(name="disk full", status="resolved", last_received="t2")
    assert content_hash(firing) != content_hash(resolved)


@given(alerts(), st.text(max_size=8), st.text(max_size=8), st.text(max_size=8))
def test_content_hash_changes_with_a_label_value(alert: Alert, key: str, old: str, new: str) -> None:
    if old != new:
        a = with_(alert, labels={**alert.labels, key: old})
        b = with_(alert, labels={**alert.labels, key: new})
        assert content_hash(a) != content_hash(b)
        # ignoring a *different* label does not hide the change
        assert content_hash(a, ("lastReceived", f"labels.{key}x")) != content_hash(b, ("lastReceived", f"labels.{key}x"))


@given(alerts())
def test_content_hash_is_32_hex(alert: Alert) -> None:
    h = content_hash(alert)
    assert len(h) == 32 and int(h, 16) >= 0


# ---------------------------------------------------------------- fingerprint_from_fields

documents = st.fixed_dictionaries({
    "name": text,
    "labels": st.fixed_dictionaries({"host": text, "job": text}, optional={"pod": text}),
    "extra": extra_maps,
})
PATHS = ("name", "labels.host", "labels.job")


@given(documents, st.data())
def test_fingerprint_from_fields_ignores_key_order(document: dict[str, Any], data: st.DataObject) -> None:
    assert fingerprint_from_fields(reorder(document, data), PATHS) == fingerprint_from_fields(document, PATHS)


@given(documents, st.sampled_from(PATHS), text)
def test_fingerprint_from_fields_changes_with_a_named_field(document: dict[str, Any], path: str, value: str) -> None:
    changed = copy.deepcopy(document)
    *parents, leaf = path.split(".")
    node = changed
    for part in parents:
        node = node[part]
    if node[leaf] == value:
        return
    node[leaf] = value
    assert fingerprint_from_fields(changed, PATHS) != fingerprint_from_fields(document, PATHS)


@given(documents, text, extra_maps)
def test_fingerprint_from_fields_ignores_other_fields(document: dict[str, Any], pod: str, extra: dict[str, Any]) -> None:
    changed = copy.deepcopy(document)
    changed["labels"]["pod"] = pod
    changed["extra"] = extra
    assert fingerprint_from_fields(changed, PATHS) == fingerprint_from_fields(document, PATHS)


def test_fingerprint_from_fields_nested_values_and_missing_paths() -> None:
    a = {"labels": {"x": {"p": 1, "q": [1, {"r": 2, "s": 3}]}}}
    b = {"labels": {"x": {"q": [1, {"s": 3, "r": 2}], "p": 1}}}
    assert fingerprint_from_fields(a, ["labels.x"]) == fingerprint_from_fields(b, ["labels.x"])
    # a missing path reads as null, deterministically
    assert fingerprint_from_fields(a, ["labels.nope"]) == fingerprint_from_fields({}, ["labels.nope"])
    assert len(fingerprint_from_fields(a, ["labels.x"])) == 64


# ---------------------------------------------------------------- fingerprint_of


@given(text)
def test_fingerprint_of_falls_back_to_sha256_of_the_name(name: str) -> None:
    alert = Alert(name=name, last_received="t")
    assert fingerprint_of(alert) == hashlib.sha256(name.encode()).hexdigest()


@given(text, text)
def test_fingerprint_of_keeps_the_providers_fingerprint(name: str, fingerprint: str) -> None:
    assert fingerprint_of(Alert(name=name, last_received="t", fingerprint=fingerprint)) == fingerprint


def test_fingerprint_of_keep_value() -> None:
    # Keep: AlertDto.fingerprint defaults to hashlib.sha256(name.encode()).hexdigest()
    assert fingerprint_of(Alert(name="abc", last_received="t")) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_an_ignored_only_label_hashes_like_no_labels() -> None:
    """Regression: empty labels/extra are omitted (omit_defaults), so a map emptied by an
    ignore path must be omitted too, or `{"pod": "a"}` and `{}` differ while they agree otherwise."""
    ignore = ("lastReceived", "labels.pod", "extra.lag")
    bare = Alert(name="x", last_received="t")
    assert content_hash(Alert(name="x", last_received="t", labels={"pod": "a"}, extra={"lag": 1}), ignore) == content_hash(bare, ignore)
    # a nested map emptied by the rule still differs from a missing one: that is real content
    assert content_hash(Alert(name="x", last_received="t", extra={"a": {"b": 1}}), ("extra.a.b",)) != content_hash(
        Alert(name="x", last_received="t"), ("extra.a.b",))


# ------------------------------------------- identities carried over from Keep (migrate-from-keep)
# sinks.keep_import.alertstream_fingerprint: from the event Keep stored (its AlertDto dict) and Keep's
# fingerprint, the identity alertstream's normalizer gives the payload the event came from. The Keep
# corpus (tests/golden/keep_corpus, test_normalizers.py) checks it on one stored event per provider.

from datetime import datetime, timezone  # noqa: E402

from schemas.normalizers import cloudwatch, grafana, zabbix  # noqa: E402
from sinks.keep_import import alertstream_fingerprint, keep_event_to_alert  # noqa: E402


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


ZABBIX_STORED = {"name": "Free disk space is less than 10% on /var", "status": "firing", "severity": "warning",
                 "lastReceived": "2025-03-10T09:33:10.000Z", "triggerId": "44120",
                 "host_name": "app-stg-01.example.net", "service": "app-stg-01"}


def test_zabbix_identity_is_recomputed_from_what_keep_stored() -> None:
    keep_fp = sha(ZABBIX_STORED["name"])
    expected = zabbix.identity("44120", "app-stg-01.example.net")
    assert alertstream_fingerprint("zabbix", ZABBIX_STORED, keep_fp) == expected
    # Keep's formatter of some versions read hostName: the same host, the same identity
    keep_style = {k: v for k, v in ZABBIX_STORED.items() if k != "host_name"} | {"hostName": "app-stg-01.example.net"}
    assert alertstream_fingerprint("zabbix", keep_style, keep_fp) == expected
    # a fingerprint Keep's default rule did not make (a custom dedup rule): kept verbatim
    assert alertstream_fingerprint("zabbix", ZABBIX_STORED, "custom-rule-fp") == "custom-rule-fp"


def test_cloudwatch_identity_adds_account_and_region_from_the_stored_alarm() -> None:
    alarm = {"name": "cpu-high", "AlarmName": "cpu-high", "status": "firing", "severity": "info",
             "lastReceived": "2025-03-10T09:30:04.871Z", "AWSAccountId": "210987654321", "Region": "US East (Ohio)",
             "AlarmArn": "arn:aws:cloudwatch:us-east-2:210987654321:alarm:cpu-high"}
    assert alertstream_fingerprint("cloudwatch", alarm, sha("cpu-high")) == cloudwatch.identity(
        "cpu-high", "210987654321", "us-east-2")


def test_pagerduty_identity_is_the_incident_id_keep_spread_into_its_alert() -> None:
    stored = {"id": "Q2LEDGER7311", "type": "incident", "name": "Replication lag", "status": "firing",
              "severity": "info", "lastReceived": "2025-03-10T09:20:55.000Z"}
    assert alertstream_fingerprint("pagerduty", stored, sha("Replication lag")) == "Q2LEDGER7311"
    pulled = {**stored, "type": "incident_reference"}  # not a v3 incident: nothing to recompute from
    assert alertstream_fingerprint("pagerduty", pulled, sha("Replication lag")) == sha("Replication lag")
    assert alertstream_fingerprint("pagerduty", stored, "dedup-key-1") == "dedup-key-1"  # Keep's alert_key: kept


def test_grafana_identity_whichever_rule_keep_used() -> None:
    labels = {"alertname": "Queue depth", "queue": "orders"}
    stored = {"id": "9e4d2c7b1a0f3e58", "name": "[FIRING:1] group", "labels": labels}
    # Keep versions differ: the alert's fingerprint, or sha256(json.dumps(labels)): both land on Grafana's fingerprint
    assert alertstream_fingerprint("grafana", stored, "9e4d2c7b1a0f3e58") == "9e4d2c7b1a0f3e58"
    assert alertstream_fingerprint("grafana", stored, sha(json.dumps(labels))) == "9e4d2c7b1a0f3e58"
    # no Grafana fingerprint (the id is AlertDto's own uuid4): alertstream's canonical labels
    no_fp = {**stored, "id": "0b7c4a52-9d31-4e88-a6f2-3c1d5e7f9a20"}
    assert alertstream_fingerprint("grafana", no_fp, sha(json.dumps(labels))) == grafana.identity(None, labels)
    assert alertstream_fingerprint("grafana", no_fp, "custom") == "custom"


def test_providers_whose_identity_is_keeps_are_left_alone() -> None:
    event = {"name": "n", "status": "firing", "severity": "info", "lastReceived": "2025-03-10T09:00:00.000Z"}
    for provider in ("prometheus", "datadog", "keep", "sentry", None):
        assert alertstream_fingerprint(provider, {**event, "url": "https://x/issues/1/"}, "fp-1") == "fp-1"
    # a field of an unexpected type never fails the import: Keep's identity stays
    assert alertstream_fingerprint("zabbix", {**event, "host_name": {"a": 1}}, sha("n")) == sha("n")


def test_an_imported_alert_carries_the_new_identity_and_keeps_keeps() -> None:
    at = datetime(2025, 3, 10, 9, 33, 10, tzinfo=timezone.utc)
    keep_fp = sha(ZABBIX_STORED["name"])
    alert = keep_event_to_alert(json.dumps({**ZABBIX_STORED, "isFullDuplicate": False}), tenant="t",
                                provider_type="zabbix", provider_id=None, fingerprint=keep_fp, received_at=at)
    assert alert.fingerprint == zabbix.identity("44120", "app-stg-01.example.net")
    assert alert.extra["keepFingerprint"] == keep_fp
    title = "[P1] [Triggered on {host:web-01}] High CPU usage"
    dd = keep_event_to_alert({"name": title, "status": "firing", "severity": "critical", "lastReceived": "x",
                              "groups": ["host:web-01"], "monitor_id": "12345678"}, tenant="t", provider_type="datadog",
                             provider_id=None, fingerprint=sha('["host:web-01"]12345678'), received_at=at)
    assert (dd.name, dd.extra["title"]) == ("High CPU usage", title)  # the name the live webhook gets
    assert dd.fingerprint == sha('["host:web-01"]12345678') and "keepFingerprint" not in dd.extra


def test_keeps_non_scalar_labels_are_imported_as_text() -> None:
    # Keep's PagerDuty provider stores labels {"urgency": "high", "acknowledgers": [], ...}: before, the
    # generic normalizer refused the list and every Keep PagerDuty alert ended in alert_raw
    at = datetime(2025, 3, 10, 9, 20, 55, tzinfo=timezone.utc)
    event = {"id": "Q2", "type": "incident", "name": "Replication lag", "status": "firing", "severity": "info",
             "lastReceived": "2025-03-10T09:20:55.000Z",
             "labels": {"urgency": "high", "acknowledgers": [], "last_updated_by": None, "teams": ["a", "b"],
                        "owner": {"id": "P1"}}}
    alert = keep_event_to_alert(event, tenant="t", provider_type="pagerduty", provider_id=None,
                                fingerprint=sha("Replication lag"), received_at=at)
    assert alert.labels == {"urgency": "high", "teams": "a,b", "owner": '{"id":"P1"}'}
    assert alert.fingerprint == "Q2"


# ---------------------------------------------------------------- one encoding: the body and its hash

_sorted = msgspec.json.Encoder(order="sorted").encode
# text that looks like the key the hash is taken around, wherever a string or a key can hold it
decoys = st.sampled_from(("lastReceived", ',"lastReceived":"2025-01-15T10:05:04.512Z"', ',"lastReceived":null',
                          '"lastReceived":', "\\", '"')) | st.text(max_size=8)


@st.composite
def decoy_alerts(draw: st.DrawFn) -> Alert:
    alert = draw(alerts())
    return with_(alert, last_received=draw(decoys | st.sampled_from(("2025-01-15T10:05:04.512Z",))),
                 message=draw(st.none() | decoys), url=draw(st.none() | decoys), service=draw(st.none() | decoys),
                 source=draw(st.lists(decoys, max_size=3)),
                 labels={**alert.labels, **draw(st.dictionaries(decoys, decoys, max_size=3))},
                 extra={**alert.extra, **draw(st.dictionaries(decoys, decoys | json_values, max_size=3))})


@given(decoy_alerts())
def test_the_default_hash_is_taken_from_the_body_with_last_received_as_null(alert: Alert) -> None:
    # the definition every stored content hash was computed by: the sorted JSON of the alert with
    # lastReceived null; the fast path splices null into the body it returns instead of encoding twice
    definition = hashlib.sha256(_sorted(msgspec.structs.replace(alert, last_received=None))).hexdigest()[:32]
    chash, body = content_hash_and_document(alert)
    assert chash == definition
    assert body == encode_alert_json(alert) and msgspec.json.decode(body, type=Alert) == alert


def test_the_default_hash_of_a_fixed_alert_never_changes() -> None:
    # stored `last_alert.content_hash` values compare against it: a change would make every identity "changed" once
    alert = Alert(name="disk full", last_received="2025-01-15T10:05:04.512Z", fingerprint="fp", labels={"b": "2", "a": "1"},
                  extra={"lastReceived": "x", "n": [{"q": 1, "p": None}]}, message='m ,"lastReceived":"y"')
    assert content_hash(alert) == "90bcf0b4a327679d80c877988251b804"  # computed by the code before the fast path took it from the body
