"""Provider normalizers: golden files, provider quirks, invalid input, and a property test.

Goldens: every file in schemas/examples/ is normalized with CTX and compared to
tests/golden/<stem>.json. After a deliberate change, regenerate with
`UPDATE_GOLDEN=1 pytest tests/unit/schemas/test_normalizers.py -k golden` and review
the diff by eye before keeping it.

Keep corpus: tests/golden/keep_corpus/*.json, payloads shaped like the ones Keep's
providers receive, each with its expected canonical fields, the fingerprint and name
Keep 0.54.2 gives it (`keep_reference`, written from Keep's documented rules), whether
alertstream's identity is Keep's, and for one case per provider the event Keep stores
for it (`keepStored`), from which `migrate-from-keep` must derive the identity the
payload gets here. `UPDATE_GOLDEN=1` rewrites the expected fields only.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import socket
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import schemas
from schemas.alert import SEVERITIES, STATUSES, Alert
from schemas.fingerprint import canonical_json, fingerprint_of, sha256_hex
from schemas.normalizers import PROVIDER_MODULES, InvalidPayload, NormalizeContext, normalize, normalizer_for
from schemas.normalizers.base import CANONICAL_TIME
from schemas.normalizers.datadog import keep_fingerprint, title_name
from sinks.keep_import import alertstream_fingerprint, keep_event_to_alert

CTX = NormalizeContext(tenant="acme", received_at="2025-01-15T10:06:00.000Z", provider_id="prov-1")
EXAMPLES = Path(schemas.__file__).parent / "examples"
GOLDEN = Path(__file__).resolve().parents[2] / "golden"
EXAMPLE_FILES = sorted(EXAMPLES.glob("*.json"))
# examples that must be rejected, with the reason, instead of having a golden file
REJECTED = {"cloudwatch_sns_subscription_confirmation": "sns_subscription_confirmation"}


def provider_of(path: Path) -> str:
    """The example's provider is the first word of its file name (cloudwatch_..., keep_..., prometheus_...)."""
    return path.stem.split("_", 1)[0]


def example(stem: str) -> dict[str, Any]:
    return orjson.loads((EXAMPLES / f"{stem}.json").read_bytes())


def run(provider: str, payload: Any) -> list[Alert]:
    return normalize(provider, orjson.dumps(payload), CTX)


def one(provider: str, payload: Any) -> Alert:
    alerts = run(provider, payload)
    assert len(alerts) == 1
    return alerts[0]


def reason_of(provider: str, payload: Any) -> str:
    with pytest.raises(InvalidPayload) as info:
        run(provider, payload)
    return info.value.reason


def check_alert(alert: Alert) -> None:
    """What every normalized alert must satisfy, whatever came in."""
    assert isinstance(alert, Alert)
    assert isinstance(alert.name, str) and alert.name
    assert alert.status in STATUSES
    assert alert.severity in SEVERITIES
    assert isinstance(alert.fingerprint, str)
    assert isinstance(alert.last_received, str) and CANONICAL_TIME.fullmatch(alert.last_received)  # ISO 8601 UTC
    assert alert.firing_start_time is None or CANONICAL_TIME.fullmatch(alert.firing_start_time)
    assert alert.tenant == CTX.tenant
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in alert.labels.items())
    assert all(isinstance(s, str) for s in alert.source)
    for field in ("id", "service", "message", "description", "url", "image_url", "firing_start_time", "provider_id"):
        assert getattr(alert, field) is None or isinstance(getattr(alert, field), str), field
    assert isinstance(alert.extra, dict)
    msgspec.json.decode(msgspec.json.encode(alert), type=Alert)  # serializable, and round-trips


# ---------------------------------------------------------------------- goldens

def test_every_example_has_a_known_provider() -> None:
    assert EXAMPLE_FILES
    for path in EXAMPLE_FILES:
        assert provider_of(path) in PROVIDER_MODULES, path.name
    for provider in ("grafana", "datadog", "pagerduty", "cloudwatch", "sentry", "zabbix", "keep", "prometheus"):
        assert any(provider_of(p) == provider for p in EXAMPLE_FILES), provider


@pytest.mark.parametrize("path", EXAMPLE_FILES, ids=lambda p: p.stem)
def test_golden(path: Path) -> None:
    provider = provider_of(path)
    if path.stem in REJECTED:
        with pytest.raises(InvalidPayload) as info:
            normalize(provider, path.read_bytes(), CTX)
        assert info.value.reason == REJECTED[path.stem]
        assert not (GOLDEN / f"{path.stem}.json").exists()
        return
    alerts = normalize(provider, path.read_bytes(), CTX)
    for alert in alerts:
        check_alert(alert)
        assert alert.fingerprint, "every provider normalizer sets the fingerprint explicitly"
    got = msgspec.to_builtins(alerts)
    golden = GOLDEN / f"{path.stem}.json"
    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(parents=True, exist_ok=True)
        golden.write_bytes(orjson.dumps(got, option=orjson.OPT_INDENT_2) + b"\n")
    assert golden.exists(), f"no golden file {golden}; generate with UPDATE_GOLDEN=1 and review it"
    assert got == orjson.loads(golden.read_bytes())


def test_no_orphan_goldens() -> None:
    stems = {p.stem for p in EXAMPLE_FILES}
    assert {p.stem for p in GOLDEN.glob("*.json")} <= stems


# ----------------------------------------------------------------- Keep corpus

CORPUS = GOLDEN / "keep_corpus"
CORPUS_FILES = sorted(CORPUS.glob("*.json"))
CORPUS_FIELDS = ("name", "status", "severity", "fingerprint", "lastReceived", "firingStartTime", "environment",
                 "service", "id", "url", "labels")
KEEP_PROVIDERS = ("prometheus", "grafana", "datadog", "pagerduty", "cloudwatch", "sentry", "zabbix", "keep")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def keep_reference(provider: str, payload: Any) -> list[tuple[str, str]]:
    """(fingerprint, name) of each alert as Keep 0.54.2 forms them (KEEP.md, /work/shared/payloads/README.md,
    the providers' `_format_alert`), written independently of alertstream's normalizers."""
    if provider == "prometheus":  # Alertmanager's fingerprint, else AlertDto's default sha256(name)
        return [(a.get("fingerprint") or _sha(a["labels"]["alertname"]), a["labels"]["alertname"])
                for a in payload.get("alerts", [payload])]
    if provider == "grafana":  # alert fingerprint → labels.fingerprint → sha256(json.dumps(labels)); the group title
        return [(a.get("fingerprint") or a["labels"].get("fingerprint") or _sha(json.dumps(a["labels"])),
                 payload["title"]) for a in payload["alerts"]]
    if provider == "datadog":  # FINGERPRINT_FIELDS groups + monitor_id; the whole title
        groups = payload["scopes"].split(",") if payload.get("scopes") else ["*"]
        return [(_sha(json.dumps(groups) + str(payload["monitor_id"])), payload["title"])]
    if provider == "pagerduty":  # v3 → _format_alert_old: no fingerprint, so sha256(title)
        title = payload["event"]["data"]["title"]
        return [(_sha(title), title)]
    if provider == "cloudwatch":  # no fingerprint: sha256(AlarmName)
        alarm = json.loads(payload["Message"]) if "Message" in payload else payload
        return [(_sha(alarm["AlarmName"]), alarm["AlarmName"])]
    if provider == "sentry":  # the top-level issue id; the integration platform has none: sha256(title)
        title = (payload.get("event") or payload.get("data", {}).get("event"))["title"]
        return [(str(payload["id"]) if "id" in payload else _sha(title), title)]
    if provider == "zabbix":  # no fingerprint: sha256(name)
        return [(_sha(payload["name"]), payload["name"])]
    if provider == "keep":
        return [(a.get("fingerprint") or _sha(a["name"]), a["name"]) for a in (payload if isinstance(payload, list) else [payload])]
    raise AssertionError(provider)


def test_keep_corpus_covers_every_keep_provider() -> None:
    cases = [orjson.loads(p.read_bytes()) for p in CORPUS_FILES]
    assert len(cases) >= 30
    assert {c["provider"] for c in cases} == set(KEEP_PROVIDERS)
    stored = sorted(c["provider"] for c in cases if "keepStored" in c)
    assert set(stored) == set(KEEP_PROVIDERS)  # one event as Keep stores it, per provider (the continuity tests)


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.stem)
def test_keep_corpus(path: Path) -> None:
    case = orjson.loads(path.read_bytes())
    provider, payload = case["provider"], case["payload"]
    alerts = normalize(provider, orjson.dumps(payload), CTX)
    identities = [fingerprint_of(a) for a in alerts]  # the identity: the normalizer's, else sha256(name)
    documents = [msgspec.to_builtins(a) | {"fingerprint": fp} for a, fp in zip(alerts, identities)]
    got = [{field: doc.get(field) for field in CORPUS_FIELDS} for doc in documents]
    for alert in alerts:
        check_alert(alert)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        case["expected"] = got
        path.write_text(json.dumps(case, indent=2, ensure_ascii=False) + "\n")
    assert got == case["expected"]

    keep = keep_reference(provider, payload)
    assert case["keep"]["fingerprints"] == [fp for fp, _ in keep]
    assert case["keep"]["names"] == [name for _, name in keep]
    for identity, (keep_fp, _) in zip(identities, keep, strict=True):
        if case["keep"]["sameIdentity"]:
            assert identity == keep_fp, "alertstream promises Keep's identity here"
        else:
            assert identity != keep_fp, "a deliberate difference (docs/dedup.md)"
    if provider == "datadog":  # stable across transitions, unlike Keep's
        assert not alerts[0].name.startswith(("[P", "[Triggered", "[Recovered", "[Warn", "[No Data", "[Muted", "[Re-"))

    if "keepStored" in case:  # migrate-from-keep derives, from what Keep stored, the identity the payload gets here
        stored = case["keepStored"]
        assert stored["event"]["fingerprint"] == keep[0][0]
        assert alertstream_fingerprint(stored["providerType"], stored["event"], keep[0][0]) == identities[0]
        imported = keep_event_to_alert(json.dumps(stored["event"]), tenant=CTX.tenant, provider_type=stored["providerType"],
                                       provider_id=None, fingerprint=keep[0][0],
                                       received_at=datetime(2025, 3, 10, tzinfo=timezone.utc))
        check_alert(imported)
        assert imported.fingerprint == identities[0]


# ---------------------------------------------------------------------- grafana

def grafana(*alerts: dict[str, Any], status: str = "firing") -> dict[str, Any]:
    return {"receiver": "keep", "status": status, "title": "[FIRING:2] group", "alerts": list(alerts)}


def g_alert(status: str = "firing", **over: Any) -> dict[str, Any]:
    base = {"status": status, "labels": {"alertname": "Disk full", "instance": "a", "severity": "warning"},
            "annotations": {"summary": "disk full"}, "startsAt": "2025-01-15T10:00:00Z",
            "endsAt": "0001-01-01T00:00:00Z"}
    base.update(over)
    return base


def test_grafana_status_is_per_alert_not_group() -> None:
    alerts = run("grafana", grafana(g_alert("firing"), g_alert("resolved", endsAt="2025-01-15T10:04:00Z"),
                                    status="firing"))
    assert [a.status for a in alerts] == ["firing", "resolved"]
    assert "endsAt" not in alerts[0].extra  # Go zero time means "not ended"
    assert alerts[1].extra["endsAt"] == "2025-01-15T10:04:00Z"


def test_grafana_group_status_is_only_a_fallback() -> None:
    item = g_alert()
    del item["status"]
    assert one("grafana", grafana(item, status="resolved")).status == "resolved"


def test_grafana_fingerprint_fallbacks() -> None:
    assert one("grafana", grafana(g_alert(fingerprint="abc"))).fingerprint == "abc"
    labelled = g_alert()
    labelled["labels"] = {**labelled["labels"], "fingerprint": "from-label"}
    assert one("grafana", grafana(labelled)).fingerprint == "from-label"
    plain = one("grafana", grafana(g_alert()))
    assert plain.fingerprint == sha256_hex(canonical_json(g_alert()["labels"]))
    reordered = g_alert(labels=dict(reversed(list(g_alert()["labels"].items()))))
    assert one("grafana", grafana(reordered)).fingerprint == plain.fingerprint  # key order does not matter
    other = g_alert(labels={**g_alert()["labels"], "instance": "b"})
    assert one("grafana", grafana(other)).fingerprint != plain.fingerprint


def test_grafana_name_and_times() -> None:
    alert = one("grafana", grafana(g_alert()))
    assert alert.name == "Disk full"  # not the group title, which changes with the count
    assert alert.extra["groupTitle"] == "[FIRING:2] group"
    assert alert.firing_start_time == "2025-01-15T10:00:00.000Z"
    assert alert.last_received == CTX.received_at
    bad = one("grafana", grafana(g_alert(startsAt="yesterday")))
    assert bad.firing_start_time is None and bad.extra["startsAt"] == "yesterday"


@pytest.mark.parametrize("payload, reason", [
    ([], "invalid_shape"),
    ({"alerts": []}, "missing_field"),
    ({"status": "firing"}, "missing_field"),
    ({"alerts": ["x"]}, "invalid_shape"),
    ({"alerts": [{"status": "firing", "labels": {}}]}, "missing_field"),
    ({"alerts": [g_alert(status="exploded")]}, "invalid_field"),
    ({"alerts": [g_alert(labels={"alertname": {"nested": 1}})]}, "invalid_field"),
    ({"alerts": [g_alert(labels=["alertname"])]}, "invalid_shape"),
    ({"evalMatches": [], "ruleId": 1, "ruleName": "legacy", "state": "alerting"}, "unsupported_format"),
])
def test_grafana_invalid(payload: Any, reason: str) -> None:
    assert reason_of("grafana", payload) == reason


# ---------------------------------------------------------------------- datadog

def test_datadog_without_monitor_tag_does_not_fail() -> None:
    payload = example("datadog_webhook")
    payload["tags"] = "env:production,service:checkout"
    alert = one("datadog", payload)
    assert alert.labels == {"env": "production", "service": "checkout"}
    assert alert.service == "checkout" and alert.environment == "production"


def test_datadog_tags_parsing() -> None:
    payload = example("datadog_webhook")
    payload["tags"] = "monitor, url:https://x.example/a:b ,team:a,team:b,,bare"
    alert = one("datadog", payload)
    assert alert.labels == {"url": "https://x.example/a:b", "team": "a,b", "bare": ""}
    payload["tags"] = ["env:staging", "monitor"]
    assert one("datadog", payload).labels == {"env": "staging"}
    payload["tags"] = None
    assert one("datadog", payload).labels == {}


@pytest.mark.parametrize("transition, status", [
    ("Triggered", "firing"), ("Re-Triggered", "firing"), ("Recovered", "resolved"), ("Muted", "suppressed"),
    ("Warn", "firing"), ("No Data", "firing"), ("something new", "firing"), (None, "firing"),
])
def test_datadog_transition(transition: str | None, status: str) -> None:
    payload = example("datadog_webhook")
    payload["alert_transition"] = transition
    alert = one("datadog", payload)
    assert alert.status == status
    assert alert.extra["alert_transition"] == transition


@pytest.mark.parametrize("severity, alert_type, expected", [
    ("P1", "error", "critical"), ("P2", "error", "high"), ("P3", "error", "warning"), ("P4", "error", "info"),
    ("p5", "error", "low"), (None, "error", "high"), ("", "warning", "warning"), (None, "success", "info"),
    ("weird", None, "info"),
])
def test_datadog_severity(severity: str | None, alert_type: str | None, expected: str) -> None:
    payload = example("datadog_webhook")
    payload["severity"], payload["alert_type"] = severity, alert_type
    assert one("datadog", payload).severity == expected


def test_datadog_last_updated_epoch_ms() -> None:
    payload = example("datadog_webhook")
    assert one("datadog", payload).last_received == "2025-01-15T10:05:00.000Z"
    payload["last_updated"] = 1736935500123  # a number works too
    assert one("datadog", payload).last_received == "2025-01-15T10:05:00.123Z"
    payload["last_updated"], payload["date"] = "soon", "nope"
    alert = one("datadog", payload)
    assert alert.last_received == CTX.received_at and alert.extra["last_updated"] == "soon"


def test_datadog_fingerprint_is_keeps_groups_and_monitor() -> None:
    triggered = example("datadog_webhook")
    recovered = dict(triggered, alert_transition="Recovered", id="999",
                     title="[Recovered on {host:ip-10-0-4-21}] High CPU on checkout hosts")
    a, b = one("datadog", triggered), one("datadog", recovered)
    # Keep: sha256(json.dumps(["host:ip-10-0-4-21"]) + "98765432"); before: sha256 of alertstream's canonical JSON
    assert a.fingerprint == b.fingerprint == sha256_hex(b'["host:ip-10-0-4-21"]98765432')
    assert a.fingerprint != sha256_hex(canonical_json([["host:ip-10-0-4-21"], "98765432"]))
    assert a.name == b.name == "High CPU on checkout hosts"
    other_host = one("datadog", dict(triggered, scopes="host:ip-10-0-4-22"))
    assert other_host.fingerprint != a.fingerprint
    numeric = one("datadog", dict(triggered, monitor_id=98765432))
    assert numeric.fingerprint == a.fingerprint  # Keep hashes str(monitor_id)
    ungrouped = one("datadog", dict(triggered, scopes=""))
    assert ungrouped.fingerprint == sha256_hex(b'["*"]98765432') and ungrouped.extra["groups"] == ["*"]
    no_monitor = {k: v for k, v in triggered.items() if k != "monitor_id"}
    assert one("datadog", no_monitor).fingerprint == sha256_hex(b'["host:ip-10-0-4-21"]High CPU on checkout hosts')


# Worked examples of Keep's rule, by hand: sha256 over the bytes of json.dumps(groups) (", " between
# items, non-ASCII as \\uXXXX) followed by str(monitor_id). The digests were computed outside Python,
# with `printf '%s' '<text>' | sha256sum`.
DATADOG_WORKED = [
    ("host:web-01", "12345678", '["host:web-01"]12345678',
     "7f69a32873b010a5cd455631d034b01bbb52b1cd648bfea0296b57ba3d7ce0aa"),
    ("env:prod,service:checkout", "34567890", '["env:prod", "service:checkout"]34567890',
     "b71ced5a5fc10eb137e601b8351d41ad5786b138a63dfedb4347b94addc345be"),
    ("availability-zone:us-east-1a, role:computing-node", "45678901",  # Keep does not trim the space
     '["availability-zone:us-east-1a", " role:computing-node"]45678901',
     "5f7dc5b329ce308f41e37ce4249d1bb91c534d76235213cfe9b2e16db04aeaa4"),
    ("", "56789012", '["*"]56789012', "9844d0b20cf37cdbb5e48de571e3509194389bff15b29189a05a940fe3c5ed42"),
    ("host:caf\u00e9-01", "89012345", r'["host:caf\u00e9-01"]89012345',
     "ae16567a5017c68ee112d0c35b8162d3ccd98772ea623b793a221731cb8d3110"),
]


@pytest.mark.parametrize("scopes, monitor_id, text, digest", DATADOG_WORKED)
def test_datadog_fingerprint_worked_examples(scopes: str, monitor_id: str, text: str, digest: str) -> None:
    assert hashlib.sha256(text.encode("ascii")).hexdigest() == digest
    payload = dict(example("datadog_webhook"), scopes=scopes, monitor_id=monitor_id)
    assert one("datadog", payload).fingerprint == digest
    assert keep_fingerprint(scopes.split(",") if scopes else ["*"], monitor_id) == digest


@pytest.mark.parametrize("title, name", [
    ("[P1] [Triggered on {host:web-01}] High CPU usage", "High CPU usage"),
    ("[P1] [Recovered on {host:web-01}] High CPU usage", "High CPU usage"),
    ("[Recovered on {host:web-01}] High CPU usage", "High CPU usage"),
    ("[P2] [Warn on {host:web-01}] High CPU usage", "High CPU usage"),
    ("[P2] [Warn] High CPU usage", "High CPU usage"),
    ("[P1] [Re-Triggered on {host:web-01}] High CPU usage", "High CPU usage"),
    ("[No Data on {host:db-3}] Disk usage", "Disk usage"),
    ("[P4] [Muted on {host:batch-7}] Batch lag", "Batch lag"),
    ("[Renotify] [P3] Error rate", "Error rate"),
    ("[Triggered] Synthetic check failed", "Synthetic check failed"),
    ("High CPU usage", "High CPU usage"),
    ("[prod] High CPU usage", "[prod] High CPU usage"),  # not a Datadog marker: part of the name
    ("[P1] [Triggered on {host:web-01}] [prod] CPU", "[prod] CPU"),
    ("[P1] [Triggered]", "[P1] [Triggered]"),  # nothing left: the title itself
])
def test_datadog_name_has_no_transition_or_priority_markers(title: str, name: str) -> None:
    # Before: only the first bracket was stripped ("[Triggered on {host:web-01}] High CPU usage")
    alert = one("datadog", dict(example("datadog_webhook"), title=title))
    assert alert.name == name == title_name(title)
    assert alert.extra["title"] == title


def test_datadog_name_and_fingerprint_do_not_change_across_transitions() -> None:
    base = example("datadog_webhook")
    seen = set()
    for transition, title in [
        ("Triggered", "[P1] [Triggered on {host:ip-10-0-4-21}] High CPU on checkout hosts"),
        ("Warn", "[P2] [Warn on {host:ip-10-0-4-21}] High CPU on checkout hosts"),
        ("Re-Triggered", "[P1] [Re-Triggered on {host:ip-10-0-4-21}] High CPU on checkout hosts"),
        ("Recovered", "[P1] [Recovered on {host:ip-10-0-4-21}] High CPU on checkout hosts"),
    ]:
        alert = one("datadog", dict(base, alert_transition=transition, title=title))
        seen.add((alert.name, alert.fingerprint))
    assert seen == {("High CPU on checkout hosts", sha256_hex(b'["host:ip-10-0-4-21"]98765432'))}


@pytest.mark.parametrize("payload, reason", [
    ("text", "invalid_shape"),
    ({}, "missing_field"),
    ({"title": ""}, "missing_field"),
    ({"title": ["x"]}, "invalid_field"),
    ({"title": "t", "tags": 5}, "invalid_field"),
    ({"title": "t", "tags": [1, 2]}, "invalid_field"),
    ({"title": "t", "scopes": {"a": 1}}, "invalid_field"),
    ({"title": "t", "body": {"a": 1}}, "invalid_field"),
])
def test_datadog_invalid(payload: Any, reason: str) -> None:
    assert reason_of("datadog", payload) == reason


# -------------------------------------------------------------------- pagerduty

def pd_v3(incident_id: str = "Q1", title: str = "CPU high", status: str = "triggered",
          event_type: str = "incident.triggered") -> dict[str, Any]:
    return {"event": {"id": "E1", "event_type": event_type, "resource_type": "incident",
                      "occurred_at": "2025-01-15T10:05:12Z",
                      "data": {"id": incident_id, "type": "incident", "title": title, "status": status,
                               "created_at": "2025-01-15T10:00:00Z", "urgency": "low"}}}


def test_pagerduty_v3_fingerprint_is_incident_id_not_title() -> None:
    a, b = one("pagerduty", pd_v3("Q1", "CPU high")), one("pagerduty", pd_v3("Q2", "CPU high"))
    assert a.fingerprint == "Q1" and b.fingerprint == "Q2"  # Keep: both sha256("CPU high")
    resolved = one("pagerduty", pd_v3("Q1", "CPU high (retitled)", "resolved", "incident.resolved"))
    assert resolved.fingerprint == "Q1" and resolved.status == "resolved"


def test_pagerduty_v3_status_and_severity() -> None:
    assert one("pagerduty", pd_v3(status="acknowledged")).status == "acknowledged"
    no_status = pd_v3(event_type="incident.resolved")
    del no_status["event"]["data"]["status"]
    assert one("pagerduty", no_status).status == "resolved"
    alert = one("pagerduty", pd_v3())
    assert alert.severity == "low"  # no priority: urgency low
    assert alert.last_received == "2025-01-15T10:05:12.000Z"
    assert alert.firing_start_time == "2025-01-15T10:00:00.000Z"
    with_priority = pd_v3()
    with_priority["event"]["data"]["priority"] = {"summary": "P1"}
    assert one("pagerduty", with_priority).severity == "critical"


def test_pagerduty_v3_non_incident_events_are_not_alerts() -> None:
    note = {"event": {"id": "E2", "event_type": "incident.annotated", "resource_type": "incident",
                      "data": {"incident": {"id": "Q1", "type": "incident_reference"}, "content": "looking",
                               "type": "incident_note"}}}
    assert run("pagerduty", note) == []


def test_pagerduty_events_v2_dedup_key() -> None:
    trigger = example("pagerduty_events_v2")
    resolve = {"routing_key": trigger["routing_key"], "event_action": "resolve", "dedup_key": trigger["dedup_key"]}
    ack = dict(resolve, event_action="acknowledge")
    a, r, k = one("pagerduty", trigger), one("pagerduty", resolve), one("pagerduty", ack)
    assert a.fingerprint == r.fingerprint == k.fingerprint == trigger["dedup_key"]
    assert (a.status, k.status, r.status) == ("firing", "acknowledged", "resolved")
    assert a.severity == "critical"
    assert trigger["routing_key"] not in orjson.dumps(msgspec.to_builtins(a)).decode()


def test_pagerduty_events_v2_trigger_without_dedup_key() -> None:
    trigger = example("pagerduty_events_v2")
    del trigger["dedup_key"]
    a, b = one("pagerduty", trigger), one("pagerduty", copy.deepcopy(trigger))
    p = trigger["payload"]
    assert a.fingerprint == b.fingerprint == sha256_hex(canonical_json(
        [p["summary"], p["source"], p["component"], p["group"], p["class"]]))
    assert a.id is None


@pytest.mark.parametrize("payload, reason", [
    ([1], "invalid_shape"),
    ({"foo": 1}, "invalid_shape"),
    ({"event": "x"}, "invalid_shape"),
    ({"event": {"data": {"type": "incident", "title": "t"}}}, "missing_field"),
    ({"event": {"data": {"type": "incident", "id": "Q1"}}}, "missing_field"),
    ({"event": {"data": {"type": "incident", "id": "Q1", "title": "t", "priority": "P1"}}}, "invalid_field"),
    ({"event": {"data": "incident"}}, "invalid_field"),
    ({"event_action": "explode", "dedup_key": "k"}, "invalid_field"),
    ({"event_action": "resolve"}, "missing_field"),
    ({"event_action": "trigger", "payload": {"source": "x"}}, "missing_field"),
    ({"event_action": "trigger", "payload": "summary"}, "invalid_field"),
    ({"messages": []}, "unsupported_format"),
])
def test_pagerduty_invalid(payload: Any, reason: str) -> None:
    assert reason_of("pagerduty", payload) == reason


# ------------------------------------------------------------------- cloudwatch

def sns(alarm_changes: dict[str, Any] | None = None, **envelope: Any) -> dict[str, Any]:
    body = example("cloudwatch_sns_notification")
    alarm = orjson.loads(body["Message"])
    alarm.update(alarm_changes or {})
    body["Message"] = orjson.dumps(alarm).decode()
    body.update(envelope)
    return body


def test_sns_subscription_confirmation_never_does_network_io(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        raise AssertionError("network I/O attempted")

    monkeypatch.setattr(socket, "create_connection", forbidden)
    monkeypatch.setattr(socket, "getaddrinfo", forbidden)
    monkeypatch.setattr(socket.socket, "connect", forbidden)
    monkeypatch.setattr(urllib.request, "urlopen", forbidden)
    payload = example("cloudwatch_sns_subscription_confirmation")
    with pytest.raises(InvalidPayload) as info:
        run("cloudwatch", payload)
    assert info.value.reason == "sns_subscription_confirmation"
    assert payload["TopicArn"] in info.value.detail and payload["SubscribeURL"] in info.value.detail
    assert calls == []
    unsubscribe = dict(payload, Type="UnsubscribeConfirmation")
    assert reason_of("cloudwatch", unsubscribe) == "sns_unsubscribe_confirmation"
    assert calls == []


@pytest.mark.parametrize("state, status", [("ALARM", "firing"), ("OK", "resolved"),
                                           ("INSUFFICIENT_DATA", "pending")])
def test_cloudwatch_states(state: str, status: str) -> None:
    alert = one("cloudwatch", sns({"NewStateValue": state}))
    assert alert.status == status
    assert alert.last_received == "2025-01-15T10:05:04.512Z"  # "...+0000" parsed
    assert alert.firing_start_time == ("2025-01-15T10:05:04.512Z" if status == "firing" else None)


def test_cloudwatch_fingerprint_includes_account_and_region() -> None:
    base = one("cloudwatch", sns())
    assert base.fingerprint == sha256_hex(canonical_json(["prod-checkout-alb-5xx-high", "123456789012", "eu-west-1"]))
    assert one("cloudwatch", sns({"NewStateValue": "OK"})).fingerprint == base.fingerprint
    other_region = sns({"AlarmArn": "arn:aws:cloudwatch:us-east-1:123456789012:alarm:prod-checkout-alb-5xx-high"})
    other_account = sns({"AlarmArn": "arn:aws:cloudwatch:eu-west-1:210987654321:alarm:prod-checkout-alb-5xx-high",
                         "AWSAccountId": "210987654321"})
    fps = {base.fingerprint, one("cloudwatch", other_region).fingerprint, one("cloudwatch", other_account).fingerprint}
    assert len(fps) == 3


def test_cloudwatch_raw_message_delivery_and_envelope() -> None:
    alarm = orjson.loads(example("cloudwatch_sns_notification")["Message"])
    raw = one("cloudwatch", alarm)
    wrapped = one("cloudwatch", sns())
    assert raw.fingerprint == wrapped.fingerprint and raw.status == wrapped.status
    assert "sns" not in raw.extra
    text = orjson.dumps(msgspec.to_builtins(wrapped)).decode()
    assert "UnsubscribeURL" not in text and "Signature" not in text
    assert wrapped.extra["sns"]["TopicArn"] == "arn:aws:sns:eu-west-1:123456789012:keep-alerts"


@pytest.mark.parametrize("changes, expected", [
    ({}, "info"),
    ({"AlarmDescription": "severity: critical - checkout down"}, "critical"),
    ({"AlarmName": "api-latency-sev2"}, "high"),
    ({"AlarmName": "api-latency [P3]"}, "warning"),
    ({"AlarmDescription": "priority=low"}, "low"),
    ({"AlarmName": "disk-usage-high", "AlarmDescription": "disk usage is high"}, "info"),
])
def test_cloudwatch_severity_markers(changes: dict[str, Any], expected: str) -> None:
    assert one("cloudwatch", sns(changes)).severity == expected


def test_cloudwatch_unparseable_state_change_time() -> None:
    alert = one("cloudwatch", sns({"StateChangeTime": "15/01/25 10:04"}))
    assert alert.last_received == CTX.received_at
    assert alert.extra["StateChangeTime"] == "15/01/25 10:04"
    assert alert.firing_start_time is None


@pytest.mark.parametrize("payload, reason", [
    ("x", "invalid_shape"),
    ({"foo": "bar"}, "missing_field"),
    ({"Type": "Banana"}, "invalid_field"),
    ({"Type": "Notification"}, "missing_field"),
    ({"Type": "Notification", "Message": "not json at all"}, "invalid_field"),
    ({"Type": "Notification", "Message": "[1, 2]"}, "invalid_field"),
    ({"Type": "Notification", "Message": "{\"NewStateValue\": \"ALARM\"}"}, "missing_field"),
    ({"Type": "Notification", "Message": "{\"AlarmName\": \"a\"}"}, "missing_field"),
    ({"Type": "Notification", "Message": "{\"AlarmName\": \"a\", \"NewStateValue\": \"MAYBE\"}"}, "invalid_field"),
    ({"AlarmName": "a", "NewStateValue": "ALARM", "Trigger": []}, "invalid_field"),
])
def test_cloudwatch_invalid(payload: Any, reason: str) -> None:
    assert reason_of("cloudwatch", payload) == reason


# ----------------------------------------------------------------------- sentry

def test_sentry_issue_is_the_fingerprint_in_every_format() -> None:
    plugin = one("sentry", example("sentry_webhook_plugin"))
    integration = one("sentry", example("sentry_webhook_integration"))
    assert plugin.fingerprint == integration.fingerprint == "5837261940"
    assert plugin.id != integration.id  # the event ids
    resolved = {"action": "resolved", "data": {"issue": {
        "id": "5837261940", "title": "PaymentGatewayTimeout: upstream gateway did not respond within 10s",
        "status": "resolved", "level": "error", "project": {"slug": "checkout-api"},
        "firstSeen": "2025-01-15T10:05:04.118Z", "permalink": "https://acme.sentry.io/issues/5837261940/"}}}
    closed = one("sentry", resolved)
    assert closed.fingerprint == "5837261940" and closed.status == "resolved"
    assert closed.firing_start_time == "2025-01-15T10:05:04.118Z"
    ignored = one("sentry", dict(resolved, action="ignored"))
    assert ignored.status == "suppressed"


def test_sentry_integration_fingerprint_fallbacks() -> None:
    payload = example("sentry_webhook_integration")
    del payload["data"]["event"]["issue_id"]
    assert one("sentry", payload).fingerprint == "5837261940"  # from issue_url
    del payload["data"]["event"]["issue_url"]
    title = payload["data"]["event"]["title"]
    alert = one("sentry", payload)
    assert alert.fingerprint == sha256_hex(canonical_json([title]))
    assert alert.url == payload["data"]["event"]["web_url"]


def test_sentry_plugin_fields() -> None:
    alert = one("sentry", example("sentry_webhook_plugin"))
    assert alert.severity == "high" and alert.environment == "production"
    assert alert.service == "checkout-api" and alert.labels["server_name"] == "checkout-api-5c7f9d8b6-qx2lp"
    assert alert.last_received == "2025-01-15T10:05:04.402Z"
    assert alert.url == "https://acme.sentry.io/issues/5837261940/?referrer=webhooks_plugin"
    fatal = example("sentry_webhook_plugin")
    fatal["level"] = "fatal"
    assert one("sentry", fatal).severity == "critical"


@pytest.mark.parametrize("payload, reason", [
    (None, "invalid_shape"),
    ({"foo": 1}, "invalid_shape"),
    ({"id": "", "event": {"title": "t"}}, "missing_field"),
    ({"id": "1", "event": {}}, "missing_field"),
    ({"id": "1", "event": "boom"}, "invalid_field"),
    ({"id": "1", "event": {"title": "t", "tags": "a=b"}}, "invalid_field"),
    ({"action": "triggered", "data": []}, "invalid_shape"),
    ({"action": "triggered", "data": {"event": {}}}, "missing_field"),
    ({"action": "critical", "data": {"metric_alert": {}}}, "unsupported_format"),
    ({"action": "resolved", "data": {"issue": {"title": "t"}}}, "missing_field"),
])
def test_sentry_invalid(payload: Any, reason: str) -> None:
    assert reason_of("sentry", payload) == reason


# ----------------------------------------------------------------------- zabbix

def test_zabbix_two_hosts_same_trigger_two_fingerprints() -> None:
    a = example("zabbix_webhook")
    b = dict(a, id="48213378", host_name="db-prod-04.dc1.example.com", service="db-prod-04", host_ip="10.20.3.42")
    fa, fb = one("zabbix", a).fingerprint, one("zabbix", b).fingerprint
    assert fa != fb
    again = dict(a, id="48299999", lastReceived="2025.01.15 11:00:00")
    assert one("zabbix", again).fingerprint == fa  # same trigger, same host: one alert
    assert fa == sha256_hex(canonical_json(["31057", "db-prod-03.dc1.example.com"]))


def test_zabbix_host_spellings() -> None:
    script = example("zabbix_webhook")
    keep_style = {k: v for k, v in script.items() if k not in ("host_name", "host_ip")}
    keep_style.update(hostName=script["host_name"], hostIp=script["host_ip"])
    old_params = {k: v for k, v in script.items() if k not in ("host_name", "host_ip")}
    old_params.update({"HOST.NAME": script["host_name"], "HOST.IP": script["host_ip"]})
    alerts = [one("zabbix", p) for p in (script, keep_style, old_params)]
    assert len({a.fingerprint for a in alerts}) == 1
    assert all(a.labels["host"] == script["host_name"] and a.labels["host_ip"] == script["host_ip"] for a in alerts)
    unexpanded = dict(script, host_name="{HOST.NAME}")
    assert one("zabbix", unexpanded).labels["host"] == "db-prod-03"  # falls back to service ({HOST.HOST})


def test_zabbix_time_tags_status() -> None:
    alert = one("zabbix", example("zabbix_webhook"))
    assert alert.last_received == "2025-01-15T10:05:04.000Z"
    assert alert.environment == "prod" and alert.labels["team"] == "platform"
    assert alert.status == "firing"
    assert one("zabbix", dict(example("zabbix_webhook"), status="OK")).status == "resolved"
    assert one("zabbix", dict(example("zabbix_webhook"), event_ack="Yes")).status == "acknowledged"
    bad_time = one("zabbix", dict(example("zabbix_webhook"), lastReceived="15/01/2025"))
    assert bad_time.last_received == CTX.received_at and bad_time.extra["lastReceived"] == "15/01/2025"


def test_zabbix_bad_tags_keep_the_alert() -> None:
    alert = one("zabbix", dict(example("zabbix_webhook"), tags="[{not json"))
    assert alert.extra["tags"] == "[{not json" and "tagsError" in alert.extra
    assert one("zabbix", dict(example("zabbix_webhook"), tags="{EVENT.TAGSJSON}")).labels["host"]
    parsed = one("zabbix", dict(example("zabbix_webhook"), tags=[{"tag": "a", "value": "1"}, {"tag": "a", "value": 2}]))
    assert parsed.labels["a"] == "1,2"


@pytest.mark.parametrize("severity, expected", [
    ("Not classified", "low"), ("Information", "info"), ("Warning", "warning"), ("Average", "warning"),
    ("High", "high"), ("Disaster", "critical"), ("0", "low"), ("1", "info"), ("2", "warning"), ("3", "warning"),
    (4, "high"), ("5", "critical"), ("bogus", "info"),
])
def test_zabbix_severity(severity: Any, expected: str) -> None:
    assert one("zabbix", dict(example("zabbix_webhook"), severity=severity)).severity == expected


@pytest.mark.parametrize("payload, reason", [
    ("[]", "invalid_shape"),
    ({}, "missing_field"),
    ({"name": "{EVENT.NAME}"}, "missing_field"),
    ({"name": ["x"]}, "invalid_field"),
    ({"name": "n", "host_name": {"a": 1}}, "invalid_field"),
    ({"name": "n", "severity": [5]}, "invalid_field"),
])
def test_zabbix_invalid(payload: Any, reason: str) -> None:
    assert reason_of("zabbix", payload) == reason


# ------------------------------------------------------------------ Keep parity

def test_a_bare_prometheus_alert_is_one_alert() -> None:
    # Keep reads event.get("alerts", [event]); before, alertstream dead-lettered it (missing_field)
    hook = example("prometheus_alertmanager_webhook")
    bare = hook["alerts"][0]
    alert = one("prometheus", bare)
    wrapped = run("prometheus", {"alerts": [bare]})[0]
    assert alert.fingerprint == wrapped.fingerprint == bare["fingerprint"]
    assert (alert.name, alert.status, alert.labels) == (wrapped.name, wrapped.status, wrapped.labels)
    assert one("alertmanager", bare).fingerprint == bare["fingerprint"]
    no_fp = {k: v for k, v in bare.items() if k != "fingerprint"}
    assert one("prometheus", no_fp).fingerprint == ""  # then sha256(name), as Keep, at fingerprinting
    assert reason_of("prometheus", {"status": "firing"}) == "missing_field"  # not an alert: no alertname
    assert reason_of("prometheus", {"alerts": []}) == "missing_field"
    assert reason_of("prometheus", {"alerts": {"labels": {}}}) == "missing_field"


@pytest.mark.parametrize("given, stored", [
    ("2025-03-10T14:05:00+05:30", "2025-03-10T08:35:00.000Z"),
    ("2025-03-09T21:30:00.250-05:00", "2025-03-10T02:30:00.250Z"),  # the UTC day is the next one
    ("2025-03-10T08:35:00+0000", "2025-03-10T08:35:00.000Z"),
    ("2025-03-10T08:35:00.123456789+01:00", "2025-03-10T07:35:00.123Z"),
])
def test_generic_last_received_with_an_offset_is_stored_in_utc(given: str, stored: str) -> None:
    # Already so since the normalizer hardening (d5f9858); before it, the string was stored as given
    alert = one("keep", {"name": "n", "lastReceived": given, "firingStartTime": given})
    assert alert.last_received == stored and alert.firing_start_time == stored
    assert "lastReceived" not in alert.extra


@pytest.mark.parametrize("priority, urgency, expected", [
    ("P1", "low", "critical"), ("P2", "low", "high"), ("P3", "high", "warning"), ("P4", "high", "info"),
    ("P5", "high", "low"), (None, "high", "high"), (None, "low", "low"), ("Sev-Custom", "high", "high"),
    (None, None, "info"),
])
def test_pagerduty_v3_severity_priority_before_urgency(priority: str | None, urgency: str | None, expected: str) -> None:
    # docs/decisions.md "Keep parity (issue 16)": the incident's priority, when it is a known word, decides;
    # urgency (PagerDuty's high/low notification switch) only when there is no such priority
    payload = pd_v3()
    data = payload["event"]["data"]
    data["urgency"] = urgency
    if priority is not None:
        data["priority"] = {"summary": priority}
    alert = one("pagerduty", payload)
    assert alert.severity == expected
    assert alert.labels.get("urgency") == urgency and alert.labels.get("priority") == priority


# --------------------------------------------------------------- property tests

JSON_SCALARS = (st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=12))
JSON = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=16,
)
PROVIDERS = sorted(PROVIDER_MODULES)
# NORMALIZER_EXAMPLES=3000 for a longer hunt; the default keeps the unit run short
PROPERTY = settings(max_examples=int(os.environ.get("NORMALIZER_EXAMPLES", "80")), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _normalize_or_reject(provider: str, value: Any) -> None:
    try:
        raw = orjson.dumps(value)
    except orjson.JSONEncodeError:  # e.g. nesting deeper than JSON allows; nothing to test
        return
    try:
        alerts = normalize(provider, raw, CTX)
    except InvalidPayload as exc:
        assert isinstance(exc.reason, str) and exc.reason and isinstance(exc.detail, str)
        return
    assert isinstance(alerts, list)
    for alert in alerts:
        check_alert(alert)


@pytest.mark.parametrize("provider", PROVIDERS)
@PROPERTY
@given(value=JSON)
def test_arbitrary_json_only_raises_invalid_payload(provider: str, value: Any) -> None:
    _normalize_or_reject(provider, value)


# Mutations of the real examples reach far deeper than random documents: one
# value anywhere in the payload (including inside the JSON strings CloudWatch's
# `Message` and Zabbix's `tags` carry) is replaced by arbitrary JSON, or deleted.
EMBEDDED = "<json>"


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path below `doc` (not `doc` itself); JSON text in a string is entered via EMBEDDED."""
    out: list[tuple[Any, ...]] = []
    if isinstance(doc, dict):
        children: list[tuple[Any, Any]] = list(doc.items())
    elif isinstance(doc, list):
        children = list(enumerate(doc))
    elif isinstance(doc, str) and doc[:1] in "[{":
        try:
            return _paths(orjson.loads(doc), prefix + (EMBEDDED,))
        except orjson.JSONDecodeError:
            return out
    else:
        return out
    for key, value in children:
        out.append(prefix + (key,))
        out += _paths(value, prefix + (key,))
    return out


def _mutate(doc: Any, path: tuple[Any, ...], new: Any, delete: bool) -> Any:
    head, rest = path[0], path[1:]
    if head == EMBEDDED:
        return orjson.dumps(_mutate(orjson.loads(doc), rest, new, delete)).decode()
    doc = copy.copy(doc)
    if not rest:
        if delete:
            del doc[head]
        else:
            doc[head] = new
        return doc
    doc[head] = _mutate(doc[head], rest, new, delete)
    return doc


MUTABLE = [(provider_of(p), p.stem) for p in EXAMPLE_FILES]


@pytest.mark.parametrize("provider, stem", MUTABLE, ids=[s for _, s in MUTABLE])
@PROPERTY
@given(data=st.data())
def test_mutated_examples_only_raise_invalid_payload(provider: str, stem: str, data: st.DataObject) -> None:
    doc = example(stem)
    path = data.draw(st.sampled_from(_paths(doc)), label="path")
    delete = data.draw(st.booleans(), label="delete")
    new = None if delete else data.draw(JSON, label="value")
    _normalize_or_reject(provider, _mutate(doc, path, new, delete))


def test_every_normalizer_is_importable() -> None:
    for provider in PROVIDERS:
        assert callable(normalizer_for(provider))
