"""Fingerprint/dedup rules: the file format, its errors, resolution, and the hashes they produce."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.alert import STATUSES, Alert
from schemas.fingerprint import DEFAULT_IGNORE_FIELDS, content_hash, fingerprint_from_fields, fingerprint_of
from schemas.normalizers import NormalizeContext, normalize
from schemas.rules import (
    RuleSet,
    RulesError,
    dump_rules,
    load_rules,
    parse_rules,
)
from tests.conftest import REPO

EXAMPLE = REPO / "deploy" / "config" / "fingerprint-rules.example.yaml"
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def errors_of(text: str) -> list[str]:
    with pytest.raises(RulesError) as info:
        RuleSet.from_yaml(text, source="rules.yaml")
    return info.value.problems


def alert(**kw: Any) -> Alert:
    base: dict[str, Any] = dict(name="HighCPU", last_received="2025-01-15T10:05:04.512Z", tenant="default",
                                provider_type="prometheus", fingerprint="abc123",
                                labels={"instance": "10.0.0.1:8080", "job": "node"}, extra={"monitor_id": 42})
    base.update(kw)
    return Alert(**base)


# ------------------------------------------------------------------------------------------ defaults

def test_no_file_is_keeps_default_rule_and_the_normalizer_hashes() -> None:
    rules = load_rules(None)
    a = alert()
    rule = rules.for_("default", "prometheus")
    assert rule.origin == "built-in default" and rule.dedup_enabled
    assert rule.ignore_fields is DEFAULT_IGNORE_FIELDS  # the identity that content_hash's fast path checks
    assert rule.fingerprint(a) == fingerprint_of(a) == "abc123"
    assert rule.content_hash(a) == content_hash(a)
    assert rule.fingerprint(alert(fingerprint="")) == fingerprint_of(alert(fingerprint=""))


def test_empty_file_and_loader(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    assert not RuleSet.load(empty).rules
    assert not load_rules(None).rules and not load_rules("").rules
    assert load_rules(EXAMPLE).rules
    with pytest.raises(RulesError, match="cannot read"):
        load_rules(tmp_path / "missing.yaml")


def test_the_example_file_loads_and_round_trips() -> None:
    rules = RuleSet.load(EXAMPLE)
    assert rules.rules
    again = RuleSet.from_yaml(dump_rules(rules.rules))
    assert again.rules == rules.rules


# ------------------------------------------------------------------------------------------ resolution

RESOLUTION = """
version: 1
rules:
  - {tenant: "*", provider: "*", ignore_fields: [extra.a]}
  - {tenant: "*", provider: zabbix, ignore_fields: [extra.b]}
  - {tenant: acme, provider: "*", ignore_fields: [extra.c]}
  - {tenant: acme, provider: zabbix, ignore_fields: [extra.d]}
"""


@pytest.mark.parametrize(("tenant", "provider", "ignored"), [
    ("acme", "zabbix", "extra.d"),        # tenant + provider
    ("acme", "datadog", "extra.c"),       # tenant + *
    ("other", "zabbix", "extra.b"),       # * + provider
    ("other", "datadog", "extra.a"),      # * + *
])
def test_most_specific_rule_wins_whole(tenant: str, provider: str, ignored: str) -> None:
    rule = RuleSet.from_yaml(RESOLUTION).for_(tenant, provider)
    assert rule.ignore_fields == ("lastReceived", ignored)  # the default ignore field is inherited, nothing else


def test_resolution_is_cached_and_shared_per_scope() -> None:
    rules = RuleSet.from_yaml(RESOLUTION)
    assert rules.for_("x", "datadog") is rules.for_("x", "datadog") is rules.for_("y", "sentry")


def test_alertmanager_is_the_prometheus_provider() -> None:
    rules = RuleSet.from_yaml("rules: [{provider: alertmanager, fingerprint_fields: [labels.instance]}]")
    assert rules.rules[0].provider == "prometheus"
    assert rules.for_("t", "prometheus").fingerprint_fields == ("labels.instance",)
    assert rules.for_("t", "alertmanager").fingerprint_fields == ("labels.instance",)


def test_without_a_catch_all_rule_other_scopes_get_the_built_in_default() -> None:
    rules = RuleSet.from_yaml("rules: [{tenant: acme, provider: zabbix, mode: none}]")
    assert not rules.for_("acme", "zabbix").dedup_enabled
    assert rules.for_("acme", "sentry").dedup_enabled
    assert rules.for_("acme", "sentry").origin == "built-in default"


# ------------------------------------------------------------------------------------------ fingerprints

def test_custom_fields_are_sha256_over_their_values() -> None:
    rules = RuleSet.from_yaml("rules: [{provider: prometheus, fingerprint_fields: [name, labels.instance, extra.monitor_id]}]")
    a = alert()
    expected = fingerprint_from_fields(msgspec.to_builtins(a), ["name", "labels.instance", "extra.monitor_id"])
    assert rules.for_("default", "prometheus").fingerprint(a) == expected
    assert rules.for_("default", "grafana").fingerprint(a) == "abc123"  # other providers: untouched


def test_fingerprint_field_alone_is_the_providers_identity_verbatim() -> None:
    rules = RuleSet.from_yaml("rules: [{fingerprint_fields: [fingerprint]}]")  # keephq/keep#2312
    assert rules.for_("t", "grafana").fingerprint(alert()) == "abc123"


def test_an_alert_with_none_of_the_fields_keeps_its_default_identity() -> None:
    rules = RuleSet.from_yaml("rules: [{fingerprint_fields: [labels.instnace]}]")  # a typo must not merge everything
    rule = rules.for_("t", "prometheus")
    assert rule.fingerprint(alert(fingerprint="one")) == "one"
    assert rule.fingerprint(alert(fingerprint="two")) == "two"
    assert rule.fallbacks == 2


def test_rules_apply_to_keeps_generic_event_with_its_own_fingerprint() -> None:
    """keephq/keep#6793: a custom rule was ignored on /alerts/event. Here one call fingerprints every alert."""
    payload = orjson.dumps([{"name": "disk full", "fingerprint": "from-the-payload", "labels": {"host": h}} for h in ("a", "b")])
    rules = RuleSet.from_yaml("rules: [{provider: keep, fingerprint_fields: [name, labels.host]}]")
    alerts = normalize("keep", payload, NormalizeContext(tenant="default", received_at="2025-01-15T10:05:00.000Z"))
    hashes = [rules.apply(a) for a in alerts]
    assert alerts[0].fingerprint != alerts[1].fingerprint  # the rule, not the payload's fingerprint
    assert alerts[0].fingerprint == fingerprint_from_fields({"name": "disk full", "labels": {"host": "a"}}, ["name", "labels.host"])
    assert hashes[0] == content_hash(alerts[0])  # the hash covers the rule's fingerprint


def test_apply_hashes_after_fingerprinting() -> None:
    rules = RuleSet.default()
    a = alert(fingerprint="")
    h = rules.apply(a)
    assert a.fingerprint == fingerprint_of(alert(fingerprint=""))
    assert h == content_hash(a)


# ------------------------------------------------------------------------------------------ content hash and mode

def test_custom_ignore_fields_extend_the_default() -> None:
    rules = RuleSet.from_yaml("rules: [{provider: prometheus, ignore_fields: [extra.monitor_id, labels.job, description]}]")
    rule = rules.for_("t", "prometheus")
    assert rule.ignore_fields == ("lastReceived", "extra.monitor_id", "labels.job", "description")
    a, b = alert(), alert(extra={"monitor_id": 7}, labels={"instance": "10.0.0.1:8080", "job": "other"},
                          description="new", last_received="2026-01-01T00:00:00.000Z")
    assert rule.content_hash(a) == rule.content_hash(b)
    assert content_hash(a) != content_hash(b)
    assert rule.content_hash(a) != rule.content_hash(alert(status="resolved"))


def test_ignore_fields_listing_last_received_again_keep_the_fast_path() -> None:
    rule = RuleSet.from_yaml("rules: [{ignore_fields: [lastReceived]}]").for_("t", "keep")
    assert rule.ignore_fields is DEFAULT_IGNORE_FIELDS


def test_mode_none_turns_dedup_off() -> None:
    rules = RuleSet.from_yaml("rules: [{tenant: audit, mode: none}]")
    assert not rules.for_("audit", "keep").dedup_enabled
    assert rules.for_("default", "keep").dedup_enabled


# ------------------------------------------------------------------------------------------ file errors

def test_unknown_top_level_key_is_rejected_with_its_line() -> None:
    problems = errors_of("version: 1\nrules: []\nrulez: []\n")
    assert problems == ["rules.yaml:3: rulez: unknown key; allowed: version, rules"]


def test_every_problem_is_reported_with_its_line() -> None:
    text = """version: 1
rules:
  - tenant: acme
    provider: nagios
    fingerprint_fields:
      - labels.instance
      - last_received
    ignore_fields: [status]
    mode: partial
    colour: red
"""
    problems = errors_of(text)
    assert len(problems) == 5, problems
    by_loc = {p.split(": ")[1]: p for p in problems}
    assert by_loc["rules[0].provider"].startswith("rules.yaml:4:") and "unknown provider 'nagios'" in by_loc["rules[0].provider"]
    assert by_loc["rules[0].fingerprint_fields[1]"].startswith("rules.yaml:7:")
    assert "did you mean `lastReceived`" in by_loc["rules[0].fingerprint_fields[1]"]
    assert by_loc["rules[0].ignore_fields[0]"].startswith("rules.yaml:8:") and "status change" in by_loc["rules[0].ignore_fields[0]"]
    assert by_loc["rules[0].mode"].startswith("rules.yaml:9:") and "`partial` is not a mode" in by_loc["rules[0].mode"]
    assert by_loc["rules[0].colour"].startswith("rules.yaml:10:") and "unknown key" in by_loc["rules[0].colour"]


@pytest.mark.parametrize(("rule", "message"), [
    ("{fingerprint_fields: [labels.a.b]}", "labels is a flat map"),
    ("{fingerprint_fields: [name.first]}", "has no keys below it"),
    ("{fingerprint_fields: [lastReceived]}", "cannot be an identity field"),
    ("{fingerprint_fields: [status]}", "cannot be an identity field"),
    ("{fingerprint_fields: [name, name]}", "listed twice"),
    ("{fingerprint_fields: labels.instance}", "must be a list"),
    ("{fingerprint_fields: ['extra..x']}", "empty segment"),
    ("{ignore_fields: [fingerprint]}", "cannot be ignored"),
    ("{ignore_fields: [image_url]}", "did you mean `imageUrl`"),
    ("{fingerprint_fields: [name], ignore_fields: [name]}", "both an identity field and ignored"),
    ("{tenant: 3}", "valid string"),
    ("{mode: fuzzy}", "'full' or 'none'"),
])
def test_invalid_rules_say_what_is_wrong(rule: str, message: str) -> None:
    problems = errors_of(f"rules:\n  - {rule}\n")
    assert any(message in p for p in problems), problems
    assert all(p.startswith("rules.yaml:2:") for p in problems), problems


def test_two_rules_for_one_scope_are_rejected() -> None:
    problems = errors_of("rules:\n  - {tenant: acme, provider: prometheus}\n  - {tenant: acme, provider: alertmanager}\n")
    assert "rules[1] and rules[0] both apply" in problems[0]


def test_a_key_given_twice_is_rejected() -> None:
    problems = errors_of("rules:\n  - tenant: acme\n    tenant: beta\n")
    assert problems == ["rules.yaml:3: rules[0].tenant: key given twice"]


@pytest.mark.parametrize("text", ["rules: [", "- just\n- a list\n", "version: 2\n"])
def test_not_a_rules_file(text: str) -> None:
    assert errors_of(text)


def test_error_message_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("rules:\n  - {mode: partial}\n")
    with pytest.raises(RulesError) as info:
        RuleSet.load(path)
    assert f"{path}:2: rules[0].mode" in str(info.value)


def test_dump_rules_round_trips() -> None:
    rules = parse_rules(RESOLUTION).rules
    assert parse_rules(dump_rules(rules, header="hello\nworld")).rules == rules


# ------------------------------------------------------------------------------------------ properties

keys = st.text(alphabet=st.characters(whitelist_categories=("L", "N"), whitelist_characters="_-/:"), min_size=1, max_size=8)
label_maps = st.dictionaries(keys, st.text(max_size=8), max_size=6)
scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=8)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(keys, inner, max_size=3), max_leaves=8)
extra_maps = st.dictionaries(keys, json_values, max_size=5)


@st.composite
def alerts(draw: st.DrawFn) -> Alert:
    return Alert(name=draw(st.text(min_size=1, max_size=10)), status=draw(st.sampled_from(STATUSES)),
                 last_received=draw(st.sampled_from(("2025-01-15T10:05:04.512Z", "2025-01-16T00:00:00.000Z"))),
                 fingerprint=draw(st.text(max_size=10)), provider_type="zabbix",
                 labels=draw(label_maps), extra=draw(extra_maps), description=draw(st.none() | st.text(max_size=8)))


def reorder(value: Any, data: st.DataObject) -> Any:
    if isinstance(value, dict):
        return {k: reorder(value[k], data) for k in data.draw(st.permutations(list(value)))}
    if isinstance(value, list):
        return [reorder(v, data) for v in value]
    return value


@st.composite
def paths_into(draw: st.DrawFn, a: Alert) -> list[str]:
    """Dotted paths, many of which exist in `a` (labels, nested extra), some not."""
    candidates = ["name", "severity", "description", "source", "fingerprint", "labels", "extra.nothing", "labels.nothing"]
    candidates += [f"labels.{k}" for k in a.labels]
    for k, v in a.extra.items():
        candidates.append(f"extra.{k}")
        if isinstance(v, dict):
            candidates += [f"extra.{k}.{k2}" for k2 in v]
    return draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=4, unique=True))


RULE_TEMPLATE = "rules: [{{provider: zabbix, fingerprint_fields: {fields}, ignore_fields: {ignore}}}]"


def rule_for(fields: list[str], ignore: list[str] = ()) -> Any:
    text = RULE_TEMPLATE.format(fields=orjson.dumps(list(fields)).decode(), ignore=orjson.dumps(list(ignore)).decode())
    return RuleSet.from_yaml(text).for_("default", "zabbix")


def lookup(document: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(document, dict) or part not in document:
            return None
        document = document[part]
    return document


@PROPS
@given(st.data())
def test_fingerprint_equals_fingerprint_from_fields_on_the_document(data: st.DataObject) -> None:
    a = data.draw(alerts())
    fields = data.draw(paths_into(a))
    rule = rule_for(fields)
    # the field `fingerprint` reads the default identity (the provider's fingerprint, else sha256(name))
    document = msgspec.to_builtins(msgspec.structs.replace(a, fingerprint=fingerprint_of(a)))
    if fields == ["fingerprint"] or all(lookup(document, f) is None for f in fields):
        assert rule.fingerprint(a) == fingerprint_of(a)
    else:
        assert rule.fingerprint(a) == fingerprint_from_fields(document, fields)


@PROPS
@given(st.data())
def test_fingerprint_is_stable_under_key_order_and_ignored_fields(data: st.DataObject) -> None:
    a = data.draw(alerts())
    fields = data.draw(paths_into(a))
    free = [p for p in ("description", "extra.noise") if not any(f == p or f.startswith(p + ".") for f in fields)]
    rule = rule_for(fields, free)
    shuffled = msgspec.structs.replace(copy.deepcopy(a), labels=reorder(a.labels, data), extra=reorder(a.extra, data))
    noisy = msgspec.structs.replace(copy.deepcopy(shuffled), last_received="2030-01-01T00:00:00.000Z")
    if "description" in free:
        noisy.description = data.draw(st.none() | st.text(max_size=5))
    if "extra.noise" in free:
        noisy.extra = {**noisy.extra, "noise": data.draw(json_values)}
    assert rule.fingerprint(a) == rule.fingerprint(shuffled) == rule.fingerprint(noisy)
    assert rule.content_hash(a) == rule.content_hash(shuffled) == rule.content_hash(noisy)


@PROPS
@given(st.data())
def test_fingerprint_changes_with_an_identity_field(data: st.DataObject) -> None:
    a = data.draw(alerts())
    label = data.draw(keys)
    rule = rule_for(["name", f"labels.{label}"])
    one = msgspec.structs.replace(copy.deepcopy(a), labels={**a.labels, label: "one"})
    two = msgspec.structs.replace(copy.deepcopy(a), labels={**a.labels, label: "two"})
    renamed = msgspec.structs.replace(copy.deepcopy(one), name=one.name + "!")
    assert len({rule.fingerprint(one), rule.fingerprint(two), rule.fingerprint(renamed)}) == 3


@PROPS
@given(st.data())
def test_content_hash_changes_with_a_field_that_is_not_ignored(data: st.DataObject) -> None:
    a = data.draw(alerts())
    rule = rule_for(["name"], ["extra.noise", "description"])
    other_status = data.draw(st.sampled_from([s for s in STATUSES if s != a.status]))
    assert rule.content_hash(a) != rule.content_hash(msgspec.structs.replace(copy.deepcopy(a), status=other_status))
    assert rule.content_hash(a) != rule.content_hash(msgspec.structs.replace(copy.deepcopy(a), labels={**a.labels, "new.key": "v"}))
