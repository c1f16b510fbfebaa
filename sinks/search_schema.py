"""The alert index in the search store: flavour, index template, lifecycle policy, write alias.

Built for both stores the search sink speaks to:

- Elasticsearch 8/9: labels are `flattened` (one field whatever the label keys: no mapping
  explosion); ILM policy `<alias>-policy`, attached by the template's `index.lifecycle.*` settings.
- OpenSearch 2/3: labels are `flat_object`; ISM policy `<alias>-policy`, attached to new indices by
  its own `ism_template`, rollover alias in `plugins.index_state_management.rollover_alias`.

Writes go to a write alias (`<alias>` → `<alias>-000001`, `is_write_index: true`); the lifecycle
policy rolls it over to `-000002`, ... and ages the old indices out (hot → warm → cold → delete).
A store without lifecycle endpoints (osmem, a cluster without the ISM plugin) answers the policy
request with 400/404: that is reported (log + `alertstream_search_lifecycle_policies_total`) and the
template is installed without lifecycle settings, which such a store would refuse. A store that
refuses the labels type gets labels stored but not indexed (`enabled: false`), also reported.
docs/search.md has the reasoning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from enum import Enum
from typing import Any

from elasticsearch import ApiError, AsyncElasticsearch
from prometheus_client import Counter

from config.settings import Settings

log = logging.getLogger(__name__)

LIFECYCLE_POLICIES = Counter(
    "alertstream_search_lifecycle_policies_total",
    "Lifecycle policy installs by outcome: installed, unsupported (the store has no ILM/ISM endpoint), disabled, failed.",
    ["state"],
)
TEMPLATE_INSTALLS = Counter(
    "alertstream_search_template_installs_total",
    "Index template installs by outcome: installed, labels_fallback (labels kept but not indexed).",
    ["state"],
)


class Flavour(str, Enum):
    ELASTICSEARCH = "elasticsearch"
    OPENSEARCH = "opensearch"


def flavour_from_root(info: dict[str, Any]) -> Flavour:
    """`GET /` → flavour. OpenSearch says `version.distribution: opensearch`; Elasticsearch has no
    `distribution` (or `default` in old versions)."""
    distribution = (info.get("version") or {}).get("distribution")
    return Flavour.OPENSEARCH if distribution == "opensearch" else Flavour.ELASTICSEARCH


async def detect_flavour(client: AsyncElasticsearch, setting: str = "auto") -> Flavour:
    if setting != "auto":
        return Flavour(setting)
    return flavour_from_root(dict((await client.info()).body))


# ------------------------------------------------------------------------------------------ mappings

LABELS_TYPE = {Flavour.ELASTICSEARCH: "flattened", Flavour.OPENSEARCH: "flat_object"}
LABELS_FALLBACK: dict[str, Any] = {"type": "object", "enabled": False}


def alert_mappings(flavour: Flavour, *, labels_indexed: bool = True) -> dict[str, Any]:
    """Keywords for exact filters and sorting, text for free-text search, labels as one field.

    `dynamic: false`: fields not named here stay in `_source` but create no mapping, so a provider
    with thousands of distinct keys in `extra` cannot blow the mapping up.
    """
    keyword = {"type": "keyword", "ignore_above": 1024}
    return {
        "dynamic": False,
        "properties": {
            "alertId": {"type": "keyword"},  # the Postgres row id: `_id` and the sort tie-breaker
            "tenant": {"type": "keyword"},
            "fingerprint": keyword,
            "id": keyword,  # the provider's own alert id
            "name": {"type": "text", "fields": {"raw": {"type": "keyword", "ignore_above": 512}}},
            "status": {"type": "keyword"},
            "severity": {"type": "keyword"},
            "providerType": {"type": "keyword"},
            "providerId": keyword,
            "environment": keyword,
            "service": keyword,
            "source": keyword,
            "message": {"type": "text"},
            "description": {"type": "text"},
            "url": {"type": "keyword", "index": False},
            "lastReceived": {"type": "date"},
            "firingStartTime": {"type": "date"},
            "receivedAt": {"type": "date", "format": "epoch_millis"},  # the sort key, as Postgres received_at
            "contentHash": {"type": "keyword"},
            "labels": {"type": LABELS_TYPE[flavour]} if labels_indexed else dict(LABELS_FALLBACK),
            "extra": {"type": "object", "enabled": False},
        },
    }


def template_name(alias: str) -> str:
    return f"{alias}-template"


def policy_name(alias: str) -> str:
    return f"{alias}-policy"


def first_index(alias: str) -> str:
    return f"{alias}-000001"


def index_template(settings: Settings, flavour: Flavour, *, lifecycle: bool, labels_indexed: bool = True) -> dict[str, Any]:
    """The composable index template (`PUT _index_template/<alias>-template`) for `<alias>-*`."""
    alias = settings.search_index
    index_settings: dict[str, Any] = {
        "number_of_shards": settings.search_shards,
        "number_of_replicas": settings.search_replicas,
        "refresh_interval": settings.search_refresh_interval,
    }
    if lifecycle and flavour is Flavour.ELASTICSEARCH:
        index_settings["lifecycle"] = {"name": policy_name(alias), "rollover_alias": alias}
    elif lifecycle:
        index_settings["plugins.index_state_management.rollover_alias"] = alias
    return {
        "index_patterns": [f"{alias}-*"],
        "priority": 200,
        "template": {"settings": {"index": index_settings}, "mappings": alert_mappings(flavour, labels_indexed=labels_indexed)},
        "_meta": {"managed_by": "alertstream", "description": "alert documents (docs/search.md)"},
    }


# ------------------------------------------------------------------------------------------ lifecycle

def ilm_policy(settings: Settings) -> dict[str, Any]:
    """Elasticsearch ILM policy body (`PUT _ilm/policy/<name>`): hot (rollover) → warm → cold → delete."""
    return {
        "policy": {
            "_meta": {"managed_by": "alertstream"},
            "phases": {
                "hot": {"min_age": "0ms", "actions": {
                    "rollover": {"max_age": settings.search_rollover_max_age,
                                 "max_primary_shard_size": settings.search_rollover_max_primary_shard_size},
                    "set_priority": {"priority": 100},
                }},
                "warm": {"min_age": settings.search_warm_after, "actions": {
                    "forcemerge": {"max_num_segments": 1},
                    "set_priority": {"priority": 50},
                }},
                "cold": {"min_age": settings.search_cold_after, "actions": {
                    "readonly": {},
                    "set_priority": {"priority": 0},
                }},
                "delete": {"min_age": settings.search_delete_after, "actions": {"delete": {}}},
            },
        }
    }


def ism_policy(settings: Settings) -> dict[str, Any]:
    """OpenSearch ISM policy body (`PUT _plugins/_ism/policies/<name>`), the same phases as states.

    ISM counts `min_index_age` from index creation, ILM's `min_age` from rollover; the rollover
    age is added so that both delete an index at about the same age.
    """
    alias = settings.search_index
    after_rollover = settings.search_rollover_max_age

    def state(name: str, actions: list[dict[str, Any]], then: str | None, age: str | None) -> dict[str, Any]:
        transitions = [{"state_name": then, "conditions": {"min_index_age": _add_ages(age, after_rollover)}}] if then else []
        return {"name": name, "actions": actions, "transitions": transitions}

    return {
        "policy": {
            "description": "alertstream alerts: hot → warm → cold → delete (docs/search.md)",
            "default_state": "hot",
            "states": [
                state("hot", [{"rollover": {"min_index_age": settings.search_rollover_max_age,
                                            "min_primary_shard_size": settings.search_rollover_max_primary_shard_size}}],
                      "warm", settings.search_warm_after),
                state("warm", [{"force_merge": {"max_num_segments": 1}}, {"index_priority": {"priority": 50}}],
                      "cold", settings.search_cold_after),
                state("cold", [{"read_only": {}}, {"index_priority": {"priority": 0}}], "delete", settings.search_delete_after),
                state("delete", [{"delete": {}}], None, None),
            ],
            "ism_template": [{"index_patterns": [f"{alias}-*"], "priority": 100}],
        }
    }


_UNITS_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_age(age: str) -> float:
    """An Elasticsearch time value (`30d`, `12h`, `0ms`) in seconds."""
    for unit in ("ms", "s", "m", "h", "d"):
        if age.endswith(unit) and age[: -len(unit)].isdigit():
            return int(age[: -len(unit)]) * _UNITS_S[unit]
    raise ValueError(f"not a time value: {age!r} (want e.g. 7d, 12h, 30m)")


def check_ages(settings: Settings) -> None:
    """A bad age in the settings stops the start with the setting's name (like a bad rules file)."""
    for name in ("search_rollover_max_age", "search_warm_after", "search_cold_after", "search_delete_after"):
        try:
            parse_age(getattr(settings, name))
        except ValueError as exc:
            raise ValueError(f"ALERTSTREAM_{name.upper()}: {exc}") from None


def _add_ages(a: str | None, b: str) -> str:
    total = parse_age(a or "0s") + parse_age(b)
    return f"{int(total // 86400)}d" if total % 86400 == 0 else f"{int(total)}s"


# ------------------------------------------------------------------------------------------ install

@dataclass
class SchemaReport:
    flavour: Flavour
    lifecycle: str  # installed | unsupported | disabled | failed
    labels_indexed: bool
    write_target: str  # the alias written to, or a legacy concrete index of that name

    def summary(self) -> str:
        return (f"{self.flavour.value}: lifecycle {self.lifecycle}, labels "
                f"{'indexed' if self.labels_indexed else 'stored only'}, writing to {self.write_target}")


def _status(exc: ApiError) -> int:
    return int(getattr(exc.meta, "status", 0) or 0)


def _is_unsupported(exc: ApiError) -> bool:
    """No such endpoint: 404, or the 400 'no handler found for uri' of OpenSearch and osmem."""
    return _status(exc) in (404, 405) or (_status(exc) == 400 and "no handler" in str(exc.body).lower())


async def install_policy(client: AsyncElasticsearch, settings: Settings, flavour: Flavour) -> str:
    if not settings.search_lifecycle_enabled:
        LIFECYCLE_POLICIES.labels("disabled").inc()
        return "disabled"
    name = policy_name(settings.search_index)
    try:
        if flavour is Flavour.ELASTICSEARCH:
            await client.ilm.put_lifecycle(name=name, policy=ilm_policy(settings)["policy"])
        else:
            await _put_ism_policy(client, name, ism_policy(settings))
    except ApiError as exc:
        state = "unsupported" if _is_unsupported(exc) else "failed"
        LIFECYCLE_POLICIES.labels(state).inc()
        log.warning("search store has no %s lifecycle (%s %s): indices are not rolled over or aged out by the store",
                    "ILM" if flavour is Flavour.ELASTICSEARCH else "ISM", _status(exc), str(exc.body)[:200])
        return state
    LIFECYCLE_POLICIES.labels("installed").inc()
    return "installed"


async def _put_ism_policy(client: AsyncElasticsearch, name: str, body: dict[str, Any]) -> None:
    """ISM refuses a PUT over an existing policy without its seq_no/primary_term: update in place."""
    headers = {"content-type": "application/json", "accept": "application/json"}
    path = f"/_plugins/_ism/policies/{name}"
    try:
        current = await client.perform_request("GET", path, headers={"accept": "application/json"})
    except ApiError as exc:
        if _status(exc) != 404 or "no handler" in str(exc.body).lower():
            raise  # 404 "policy not found" means create; a missing endpoint is reported by the caller
        current = None
    if current is None:
        await client.perform_request("PUT", path, body=body, headers=headers)
        return
    params = f"?if_seq_no={current.body['_seq_no']}&if_primary_term={current.body['_primary_term']}"
    await client.perform_request("PUT", path + params, body=body, headers=headers)


async def install_template(client: AsyncElasticsearch, settings: Settings, flavour: Flavour, lifecycle: bool) -> bool:
    """Install the template; return whether labels are indexed (False: the store refused the type)."""
    name = template_name(settings.search_index)
    try:
        await client.indices.put_index_template(name=name, **index_template(settings, flavour, lifecycle=lifecycle))
        TEMPLATE_INSTALLS.labels("installed").inc()
        return True
    except ApiError as exc:
        if _status(exc) != 400 or LABELS_TYPE[flavour] not in str(exc.body):
            raise
    log.warning("search store refused `%s` for labels: labels are kept in _source but not searchable", LABELS_TYPE[flavour])
    await client.indices.put_index_template(name=name, **index_template(settings, flavour, lifecycle=lifecycle, labels_indexed=False))
    TEMPLATE_INSTALLS.labels("labels_fallback").inc()
    return False


async def ensure_write_alias(client: AsyncElasticsearch, alias: str) -> str:
    """Create `<alias>-000001` as the alias's write index, unless the alias (or a legacy concrete
    index of that name, written by older versions) already exists. Safe to race: a second
    creator gets `resource_already_exists_exception`, which is success."""
    if await client.indices.exists_alias(name=alias) or await client.indices.exists(index=alias):
        return alias
    try:
        await client.indices.create(index=first_index(alias), aliases={alias: {"is_write_index": True}})
    except ApiError as exc:
        if "already_exists" not in str(exc.body):
            raise
    return alias


async def install_schema(client: AsyncElasticsearch, settings: Settings) -> SchemaReport:
    """Policy, then template (whose lifecycle settings name the policy), then the write alias."""
    check_ages(settings)
    flavour = await detect_flavour(client, settings.search_flavour)
    lifecycle = await install_policy(client, settings, flavour)
    labels_indexed = await install_template(client, settings, flavour, lifecycle=lifecycle == "installed")
    target = await ensure_write_alias(client, settings.search_index)
    report = SchemaReport(flavour, lifecycle, labels_indexed, target)
    log.info("search schema: %s", report.summary())
    return report

