"""Index template and lifecycle policy bodies (sinks/search_schema.py), against the documented
Elasticsearch ILM / OpenSearch ISM formats: the local store cannot hold policies, so their shape
is checked here."""

from __future__ import annotations

from sinks.search_schema import (
    Flavour,
    alert_mappings,
    flavour_from_root,
    ilm_policy,
    index_template,
    ism_policy,
    parse_age,
)
from config.settings import Settings

S = Settings(search_index="alerts-x", search_shards=3, search_replicas=2, search_rollover_max_age="1d",
             search_warm_after="7d", search_cold_after="30d", search_delete_after="365d")


def test_flavour_comes_from_version_distribution() -> None:
    assert flavour_from_root({"version": {"distribution": "opensearch", "number": "2.19.0"}}) is Flavour.OPENSEARCH
    assert flavour_from_root({"version": {"number": "9.1.0", "build_flavor": "default"}}) is Flavour.ELASTICSEARCH
    assert flavour_from_root({}) is Flavour.ELASTICSEARCH


def test_labels_are_one_field_per_flavour_and_unknown_fields_map_nothing() -> None:
    assert alert_mappings(Flavour.ELASTICSEARCH)["properties"]["labels"] == {"type": "flattened"}
    assert alert_mappings(Flavour.OPENSEARCH)["properties"]["labels"] == {"type": "flat_object"}
    assert alert_mappings(Flavour.OPENSEARCH, labels_indexed=False)["properties"]["labels"] == {"type": "object", "enabled": False}
    props = alert_mappings(Flavour.OPENSEARCH)["properties"]
    assert alert_mappings(Flavour.OPENSEARCH)["dynamic"] is False
    assert {props[f]["type"] for f in ("tenant", "fingerprint", "status", "severity", "providerType", "alertId")} == {"keyword"}
    assert {props[f]["type"] for f in ("message", "description", "name")} == {"text"}
    assert props["receivedAt"] == {"type": "date", "format": "epoch_millis"}


def test_template_takes_shards_replicas_and_names_the_policy_of_its_flavour() -> None:
    es = index_template(S, Flavour.ELASTICSEARCH, lifecycle=True)
    assert es["index_patterns"] == ["alerts-x-*"]
    idx = es["template"]["settings"]["index"]
    assert (idx["number_of_shards"], idx["number_of_replicas"]) == (3, 2)
    assert idx["lifecycle"] == {"name": "alerts-x-policy", "rollover_alias": "alerts-x"}
    os_ = index_template(S, Flavour.OPENSEARCH, lifecycle=True)["template"]["settings"]["index"]
    assert os_["plugins.index_state_management.rollover_alias"] == "alerts-x" and "lifecycle" not in os_
    bare = index_template(S, Flavour.OPENSEARCH, lifecycle=False)["template"]["settings"]["index"]
    assert not any("lifecycle" in k or "index_state_management" in k for k in bare)


def test_ilm_policy_follows_the_elasticsearch_format() -> None:
    phases = ilm_policy(S)["policy"]["phases"]
    assert list(phases) == ["hot", "warm", "cold", "delete"]
    assert phases["hot"]["actions"]["rollover"] == {"max_age": "1d", "max_primary_shard_size": "50gb"}
    assert [phases[p]["min_age"] for p in ("warm", "cold", "delete")] == ["7d", "30d", "365d"]
    assert phases["warm"]["actions"]["forcemerge"] == {"max_num_segments": 1}
    assert phases["cold"]["actions"]["readonly"] == {}
    assert phases["delete"]["actions"] == {"delete": {}}
    allowed = {"hot": {"rollover", "set_priority", "forcemerge", "shrink", "readonly", "unfollow", "downsample", "searchable_snapshot"},
               "warm": {"allocate", "forcemerge", "migrate", "readonly", "set_priority", "shrink", "unfollow", "downsample"},
               "cold": {"allocate", "migrate", "readonly", "searchable_snapshot", "set_priority", "unfollow", "downsample"},
               "delete": {"wait_for_snapshot", "delete"}}
    for name, phase in phases.items():
        assert set(phase) == {"min_age", "actions"}
        assert set(phase["actions"]) <= allowed[name]
    for p in ("warm", "cold", "delete"):
        parse_age(phases[p]["min_age"])


def test_ism_policy_follows_the_opensearch_format() -> None:
    policy = ism_policy(S)["policy"]
    assert policy["default_state"] == "hot"
    states = {s["name"]: s for s in policy["states"]}
    assert list(states) == ["hot", "warm", "cold", "delete"]
    assert states["hot"]["actions"] == [{"rollover": {"min_index_age": "1d", "min_primary_shard_size": "50gb"}}]
    # ISM ages count from index creation: the phase age after rollover plus the rollover age
    assert [states[n]["transitions"] for n in ("hot", "warm", "cold")] == [
        [{"state_name": "warm", "conditions": {"min_index_age": "8d"}}],
        [{"state_name": "cold", "conditions": {"min_index_age": "31d"}}],
        [{"state_name": "delete", "conditions": {"min_index_age": "366d"}}],
    ]
    assert states["delete"] == {"name": "delete", "actions": [{"delete": {}}], "transitions": []}
    known_actions = {"rollover", "force_merge", "index_priority", "read_only", "read_write", "replica_count",
                     "delete", "shrink", "close", "open", "allocation", "snapshot", "notification", "rollup"}
    for s in states.values():
        for action in s["actions"]:
            assert len(action) == 1 and set(action) <= known_actions
        for t in s["transitions"]:
            assert t["state_name"] in states
    assert policy["ism_template"] == [{"index_patterns": ["alerts-x-*"], "priority": 100}]


def test_ages_parse_and_refuse_garbage() -> None:
    import pytest

    assert parse_age("0ms") == 0 and parse_age("12h") == 43200 and parse_age("7d") == 604800
    with pytest.raises(ValueError):
        parse_age("7 days")
    from sinks.search_schema import check_ages

    with pytest.raises(ValueError, match="ALERTSTREAM_SEARCH_WARM_AFTER"):
        check_ages(S.model_copy(update={"search_warm_after": "a week"}))
    check_ages(S)
