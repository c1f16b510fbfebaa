"""Adaptive fingerprinting: fields that vary within identities are suggested, identity fields never."""

from __future__ import annotations

from functools import lru_cache

import pytest

from benchmarks.payload_factory import PROVIDERS, LoadProfile, PayloadFactory
from schemas.adaptive import AdaptiveLearner, Suggestion, suggest_from_records, to_rules_yaml
from schemas.alert import Alert
from schemas.rules import RuleSet

# What the factory's partial duplicates change, as canonical fields (benchmarks/payload_factory.py,
# ProviderSpec.content_fields, through each normalizer).
CONTENT = {
    "keep": {"message", "description", "extra.lag"},
    "prometheus": {"description", "extra.annotations.description"},
    "grafana": {"description", "extra.annotations.description", "extra.values.A", "extra.valueString"},
    "datadog": {"message", "id", "url", "extra.date"},
    "pagerduty": {"description", "extra.body.details", "extra.event.id", "extra.event.occurred_at"},
    "cloudwatch": {"message", "extra.sns.MessageId", "extra.sns.Timestamp"},
    "sentry": {"id", "extra.event.timestamp", "extra.event.extra.detail"},
    "zabbix": {"message", "id", "description", "extra.time"},
}
# Fields that carry identity (or only change with the status): never suggested.
ALWAYS_KEPT = {"name", "fingerprint", "status", "tenant", "providerType", "lastReceived", "severity"}
IDENTITY = {
    "keep": {"service", "labels.topic", "labels.consumer_group", "url", "imageUrl"},
    "prometheus": {"id", "service", "labels.alertname", "labels.instance", "labels.pod", "labels.namespace", "extra.endsAt"},
    "grafana": {"id", "service", "labels.alertname", "labels.instance", "labels.service", "extra.endsAt"},
    "datadog": {"extra.monitor_id", "extra.scopes", "extra.groups", "labels.host", "extra.alert_transition"},
    "pagerduty": {"id", "url", "extra.incident_key", "extra.event.event_type"},
    "cloudwatch": {"id", "url", "extra.OldStateValue"},
    "sentry": {"url", "message"},
    "zabbix": {"service", "labels.host", "extra.host_name", "extra.triggerId", "extra.value"},
}


def profile(**kw: object) -> LoadProfile:
    base = dict(mix={p: 1.0 for p in PROVIDERS}, cardinality=25, full_dup_ratio=0.3, partial_dup_ratio=0.4,
                flap_ratio=0.1, alerts_per_webhook=3, mean_size_bytes=400, seed=11)
    base.update(kw)
    return LoadProfile(**base)  # type: ignore[arg-type]


@lru_cache(maxsize=4)
def records(seed: int = 11, n: int = 2000) -> tuple[tuple[str, str, bytes], ...]:
    return tuple((r.provider, r.tenant, r.value) for r in PayloadFactory(profile(seed=seed)).take(n))


@lru_cache(maxsize=1)
def default_suggestions() -> tuple[Suggestion, ...]:
    return tuple(suggest_from_records(records()))


def fields_of(suggestions: tuple[Suggestion, ...] | list[Suggestion], provider: str) -> set[str]:
    return {s.field for s in suggestions if s.provider == provider}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_content_fields_are_suggested(provider: str) -> None:
    suggested = fields_of(default_suggestions(), provider)
    assert CONTENT[provider] <= suggested, f"missing {CONTENT[provider] - suggested}"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_identity_fields_are_never_suggested(provider: str) -> None:
    suggested = fields_of(default_suggestions(), provider)
    assert not suggested & (ALWAYS_KEPT | IDENTITY[provider])
    assert not any(f.startswith("labels.") for f in suggested)  # the factory's labels are all identity


def test_suggestions_carry_their_evidence() -> None:
    for s in default_suggestions():
        assert 0.5 <= s.change_ratio <= 1 and s.identities >= 3 and s.changes <= s.transitions
        assert s.example_values and all(len(v) <= 80 for v in s.example_values)
        assert s.tenant == "default"


def test_thresholds_filter() -> None:
    learner = AdaptiveLearner()
    for provider, tenant, raw in records():
        learner.observe_record(provider, tenant, raw)
    loose = learner.suggestions(min_identities=1, min_change_ratio=0.01)
    strict = learner.suggestions(min_identities=1_000)
    assert len(loose) > len(learner.suggestions()) and strict == []


# Grafana's group-level fields: a sibling alert's flap changes them ("[FIRING:2]" → "[FIRING:1]")
# while this alert's own status stays: noise for this alert, rightly suggested.
GRAFANA_GROUP = {"extra.groupTitle", "extra.groupStatus", "extra.groupState", "extra.groupMessage"}


def test_exact_repeats_and_flaps_suggest_only_grafanas_group_fields() -> None:
    mix = {p: 1.0 for p in PROVIDERS if p != "sentry"}  # Sentry cannot flap: the factory sends a content change
    recs = [(r.provider, r.tenant, r.value) for r in
            PayloadFactory(profile(mix=mix, full_dup_ratio=0.6, partial_dup_ratio=0.0, flap_ratio=0.3)).take(1500)]
    suggested = suggest_from_records(recs)
    assert {s.provider for s in suggested} <= {"grafana"} and {s.field for s in suggested} <= GRAFANA_GROUP


def test_fields_the_rules_already_ignore_or_use_are_not_suggested_again() -> None:
    rules = RuleSet.from_yaml("""
rules:
  - {provider: keep, ignore_fields: [extra.lag]}
  - {provider: zabbix, fingerprint_fields: [name, labels.host, extra.time]}
""")
    suggested = suggest_from_records(records(), rules=rules)
    assert "extra.lag" not in fields_of(suggested, "keep") and {"message", "description"} <= fields_of(suggested, "keep")
    assert "extra.time" not in fields_of(suggested, "zabbix")


def test_applying_the_suggestions_turns_content_only_changes_into_duplicates() -> None:
    text = to_rules_yaml(default_suggestions())
    rules = RuleSet.from_yaml(text)
    assert {r.provider for r in rules.rules} == set(PROVIDERS)
    # a partial duplicate now hashes like its predecessor: content-only changes are left in Grafana
    # alone, where a sibling's flap changes the group's fields (the second round's suggestion)
    learner = AdaptiveLearner(rules)
    for provider, tenant, raw in records():
        learner.observe_record(provider, tenant, raw)
    assert {key for key, scope in learner._scopes.items() if scope.transitions} <= {("default", "grafana")}
    second = learner.suggestions()
    assert {s.provider for s in second} <= {"grafana"} and {s.field for s in second} <= GRAFANA_GROUP


def test_to_rules_yaml_extends_an_own_rule_and_copies_a_wildcard_one() -> None:
    base = RuleSet.from_yaml("""
rules:
  - {tenant: default, provider: zabbix, ignore_fields: [extra.event_ack], description: mine}
  - {tenant: "*", provider: "*", fingerprint_fields: [name, service], mode: full}
  - {tenant: other, provider: sentry, mode: none}
""")
    sugg = [Suggestion("default", "zabbix", "id", 1.0, 5, ("1",)), Suggestion("default", "keep", "extra.lag", 0.9, 4, ("2",))]
    out = RuleSet.from_yaml(to_rules_yaml(sugg, base))
    zabbix = out.for_("default", "zabbix").spec
    assert zabbix.ignore_fields == ("extra.event_ack", "id") and zabbix.description == "mine"
    keep = out.for_("default", "keep").spec
    assert (keep.tenant, keep.provider, keep.fingerprint_fields, keep.ignore_fields) == ("default", "keep", ("name", "service"), ("extra.lag",))
    assert out.for_("other", "sentry").spec.mode == "none"  # untouched
    assert len(out.rules) == 4


def test_tenant_wildcard_merges_tenants() -> None:
    sugg = [Suggestion("a", "keep", "extra.x", 1.0, 5, ()), Suggestion("b", "keep", "extra.y", 1.0, 5, ())]
    out = RuleSet.from_yaml(to_rules_yaml(sugg, tenant_wildcard=True))
    assert [(r.tenant, r.provider, r.ignore_fields) for r in out.rules] == [("*", "keep", ("extra.x", "extra.y"))]


def alert(fp: str, n: int, **kw: object) -> Alert:
    base = dict(name="x", fingerprint=fp, last_received="2025-01-15T10:05:00.000Z", provider_type="keep",
                labels={"app.kubernetes.io/name": f"v{n}", "host": fp}, extra={"counter": n, "deep": {"a": {"b": n}}})
    base.update(kw)
    return Alert(**base)  # type: ignore[arg-type]


def test_unaddressable_label_keys_are_not_suggested() -> None:
    learner = AdaptiveLearner()
    for fp in "abcdef":
        for n in range(4):
            learner.observe(alert(fp, n))
    fields = {s.field for s in learner.suggestions()}
    assert fields == {"extra.counter", "extra.deep.a.b"}


def test_depth_and_field_caps() -> None:
    learner = AdaptiveLearner(max_depth=2)
    for fp in "abcdef":
        for n in range(4):
            learner.observe(alert(fp, n))
    assert {s.field for s in learner.suggestions()} == {"extra.counter", "extra.deep.a"}


def test_memory_is_bounded_per_scope() -> None:
    learner = AdaptiveLearner(max_identities=10)
    for i in range(500):
        learner.observe(alert(f"id{i}", 0))
        learner.observe(alert(f"id{i % 20}", i))
    assert learner.identities("default", "keep") <= 20
    assert learner.observed == 1000


def test_records_that_do_not_normalize_are_skipped() -> None:
    learner = AdaptiveLearner()
    assert learner.observe_record("zabbix", None, b"{not json") == 0
    assert learner.observe_record("nagios", None, b"{}") == 0
    assert learner.skipped_records == 2
