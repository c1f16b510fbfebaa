"""Adaptive fingerprinting: learn which fields vary within an identity, suggest them as ignore fields.

A field whose value changes between sightings of the same identity while the status does not (a
timestamp, an event id, a counter, a measured value in a description) makes every such sighting a
`changed` alert, stored again. The learner watches canonical alerts and names those fields; applying
a suggestion is a config change (`to_rules_yaml` renders the rules file), never automatic.

What is measured, per (tenant, provider) and dotted field path (`labels.<key>`, `extra.<path>`,
top-level fields; Keep's camelCase names):

- a *content-only transition* is a sighting of a known identity whose content hash (under the
  current rules) differs from the previous sighting's while its status is the same; exact repeats
  and status changes (firing ↔ resolved) are not counted: a field that only changes with the
  status is part of that change, not noise;
- `change_ratio` = transitions in which the field's value changed / transitions in which the field
  was present (on either side);
- `identities` = distinct identities in which the field changed at least once.

A field is suggested when `identities >= min_identities` and `change_ratio >= min_change_ratio`.
Identity fields are never suggested: they are constant within an identity by definition, and the
fields that make or carry identity (`fingerprint`, `name`, `status`, `tenant`, `providerType`,
`providerId`, the rule's `fingerprint_fields`) are excluded outright, as are fields already ignored.

Memory is bounded: per (tenant, provider) at most `max_identities` identities seen twice or more
(first come, kept) plus `max_identities` seen once (least recently seen evicted first), at most
`max_fields` fields per alert (deeper or further fields are left out), and per identity and field
only a hash of the last value. Example values are kept per field, at most three, 80 characters each.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import msgspec

from schemas.alert import Alert
from schemas.fingerprint import canonical_json
from schemas.normalizers import InvalidPayload, NormalizeContext, normalize
from schemas.rules import ANY, ResolvedRule, RuleSet, RuleSpec, check_path, dump_rules

# Fields that make or carry identity, or that must stay in the hash: never suggested.
NEVER_SUGGESTED = frozenset({"fingerprint", "name", "status", "tenant", "providerType", "providerId", "schemaVersion"})
MAX_EXAMPLES = 3
EXAMPLE_CHARS = 80
_RECEIVED_AT = "1970-01-01T00:00:00.000Z"  # records read back from Kafka: lastReceived is ignored anyway


@dataclass(frozen=True, slots=True)
class Suggestion:
    tenant: str
    provider: str
    field: str  # dotted path, as `ignore_fields` takes it
    change_ratio: float  # transitions that changed it / transitions where it was present
    identities: int  # identities in which it changed
    example_values: tuple[str, ...]
    changes: int = 0
    transitions: int = 0


@dataclass(slots=True)
class _Identity:
    content_hash: str
    status: str
    fields: dict[str, int]  # path → hash of its last value
    changed: set[str] = field(default_factory=set)  # fields that changed in this identity (counted once)


@dataclass(slots=True)
class _FieldStats:
    present: int = 0  # content-only transitions where the field was on either side
    changes: int = 0
    identities: int = 0
    examples: list[str] = field(default_factory=list)


class _ScopeStats:
    """One (tenant, provider): its identities (bounded) and per-field counters."""

    __slots__ = ("rule", "excluded", "prefixes", "protected", "probation", "fields", "transitions", "unaddressable")

    def __init__(self, rule: ResolvedRule) -> None:
        self.rule = rule
        self.excluded = NEVER_SUGGESTED | set(rule.fingerprint_fields) | set(rule.ignore_fields)
        self.prefixes = tuple(p + "." for p in rule.ignore_fields)  # below an ignored field: already ignored
        self.protected: dict[str, _Identity] = {}  # seen at least twice; never evicted
        self.probation: OrderedDict[str, _Identity] = OrderedDict()  # seen once; LRU
        self.fields: dict[str, _FieldStats] = {}
        self.transitions = 0
        self.unaddressable: set[str] = set()  # paths through a key with '.' in it: counted, never suggested


class AdaptiveLearner:
    """Feed canonical alerts with `observe`; read `suggestions()`."""

    def __init__(self, rules: RuleSet | None = None, *, max_identities: int = 2_000, max_fields: int = 256,
                 max_depth: int = 8, max_scopes: int = 1_024) -> None:
        self.rules = rules or RuleSet.default()
        self.max_identities = max_identities
        self.max_fields = max_fields
        self.max_depth = max_depth
        self.max_scopes = max_scopes
        self._scopes: dict[tuple[str, str], _ScopeStats] = {}
        self.observed = 0
        self.skipped_records = 0  # records that did not normalize (they would go to the DLQ)
        self.dropped_scopes = 0  # alerts of (tenant, provider) pairs past max_scopes

    # ----------------------------------------------------------------------------------------- input

    def observe(self, alert: Alert) -> None:
        """One canonical alert. Its identity is computed under the rules (the normalizer's is an input)."""
        scope_key = (alert.tenant, alert.provider_type)
        scope = self._scopes.get(scope_key)
        if scope is None:
            if len(self._scopes) >= self.max_scopes:
                self.dropped_scopes += 1
                return
            scope = self._scopes[scope_key] = _ScopeStats(self.rules.for_(*scope_key))
        rule = scope.rule
        fingerprint = rule.fingerprint(alert)
        if fingerprint != alert.fingerprint:
            alert = msgspec.structs.replace(alert, fingerprint=fingerprint)
        chash = rule.content_hash(alert)
        self.observed += 1
        flat = dict(self._flatten(alert, scope))
        ident = scope.protected.get(fingerprint)
        if ident is None:
            ident = scope.probation.pop(fingerprint, None)
            if ident is None:  # first sighting
                scope.probation[fingerprint] = _Identity(chash, alert.status, {k: v[0] for k, v in flat.items()})
                if len(scope.probation) > self.max_identities:
                    scope.probation.popitem(last=False)
                return
            if len(scope.protected) < self.max_identities:
                scope.protected[fingerprint] = ident
            else:
                scope.probation[fingerprint] = ident  # most recently seen again
        previous = ident.fields
        current = {k: v[0] for k, v in flat.items()}
        if alert.status == ident.status and chash != ident.content_hash:
            scope.transitions += 1
            for path in previous.keys() | current.keys():
                stats = scope.fields.get(path)
                if stats is None:
                    stats = scope.fields[path] = _FieldStats()
                stats.present += 1
                if previous.get(path) != current.get(path):
                    stats.changes += 1
                    if path not in ident.changed:
                        ident.changed.add(path)
                        stats.identities += 1
                    if path in flat and len(stats.examples) < MAX_EXAMPLES:
                        example = _example(flat[path][1])
                        if example not in stats.examples:
                            stats.examples.append(example)
        ident.content_hash, ident.status, ident.fields = chash, alert.status, current

    def observe_record(self, provider: str | None, tenant: str | None, raw: bytes, received_at: str = _RECEIVED_AT) -> int:
        """One input record (a provider payload): its alerts, observed; returns how many (0: skipped)."""
        try:
            alerts = normalize(provider, raw, NormalizeContext(tenant=tenant or "default", received_at=received_at))
        except InvalidPayload:
            self.skipped_records += 1
            return 0
        for alert in alerts:
            self.observe(alert)
        return len(alerts)

    def _flatten(self, alert: Alert, scope: _ScopeStats) -> Iterator[tuple[str, tuple[int, Any]]]:
        """(path, (value hash, value)) of every leaf: top-level fields, labels.<key>, extra.<path>."""
        count = 0
        for name, value in msgspec.structs.asdict(alert).items():
            camel = _CAMEL[name]
            if camel in ("labels", "extra") and isinstance(value, dict):
                for path, leaf in _leaves(value, camel, self.max_depth, scope.unaddressable):
                    count += 1
                    if count > self.max_fields:
                        return
                    yield path, (_hash(leaf), leaf)
            else:
                count += 1
                yield camel, (_hash(value), value)

    # ----------------------------------------------------------------------------------------- output

    def suggestions(self, min_identities: int = 3, min_change_ratio: float = 0.5) -> list[Suggestion]:
        out = []
        for (tenant, provider), scope in self._scopes.items():
            for path, stats in scope.fields.items():
                if (stats.identities < min_identities or not stats.present
                        or stats.changes / stats.present < min_change_ratio or not _suggestible(path, scope)):
                    continue
                out.append(Suggestion(tenant, provider, path, round(stats.changes / stats.present, 4), stats.identities,
                                      tuple(stats.examples), stats.changes, stats.present))
        out.sort(key=lambda s: (s.tenant, s.provider, -s.change_ratio, s.field))
        return out

    def identities(self, tenant: str, provider: str) -> int:
        scope = self._scopes.get((tenant, provider))
        return len(scope.protected) + len(scope.probation) if scope else 0


_CAMEL = {f.name: f.encode_name for f in msgspec.structs.fields(Alert)}


def _leaves(node: dict[str, Any], prefix: str, depth: int, unaddressable: set[str]) -> Iterator[tuple[str, Any]]:
    for key, value in node.items():
        path = f"{prefix}.{key}"
        if not key or "." in key:
            unaddressable.add(path)
        if isinstance(value, dict) and value and depth > 1 and prefix != "labels":
            yield from _leaves(value, path, depth - 1, unaddressable)
        else:
            yield path, value


def _hash(value: Any) -> int:
    if value is None or isinstance(value, (str, int, float, bool)):
        return hash((type(value), value))
    return hash(canonical_json(value))


def _example(value: Any) -> str:
    text = value if isinstance(value, str) else canonical_json(value).decode()
    return text if len(text) <= EXAMPLE_CHARS else text[:EXAMPLE_CHARS - 1] + "…"


def _suggestible(path: str, scope: _ScopeStats) -> bool:
    if path in scope.excluded or path.startswith(scope.prefixes) or path in scope.unaddressable:
        return False
    if any(path.startswith(u + ".") for u in scope.unaddressable):
        return False
    try:
        check_path(path)
    except ValueError:
        return False
    return True


def suggest_from_records(records: Iterable[tuple[str | None, str | None, bytes]], *, rules: RuleSet | None = None,
                         min_identities: int = 3, min_change_ratio: float = 0.5,
                         max_identities: int = 2_000) -> list[Suggestion]:
    """Suggestions from input records (provider header, tenant header, payload bytes), as read from Kafka.

    Records that do not normalize are skipped (they would go to the DLQ); `rules` are the rules in
    force (identities and content hashes are computed under them; their ignore fields are not
    suggested again).
    """
    learner = AdaptiveLearner(rules, max_identities=max_identities)
    for provider, tenant, raw in records:
        learner.observe_record(provider, tenant, raw)
    return learner.suggestions(min_identities=min_identities, min_change_ratio=min_change_ratio)


def to_rules_yaml(suggestions: Iterable[Suggestion], base: RuleSet | None = None, *, tenant_wildcard: bool = False) -> str:
    """The rules file that applies `suggestions` on top of `base` (the rules in force; None: the default).

    A scope that has its own rule in `base` gets the fields added to that rule's `ignore_fields`;
    otherwise a new rule for (tenant, provider) is added, copying what applies there today
    (fingerprint fields, mode, ignore fields) plus the suggested fields, since the most specific
    rule wins whole. `tenant_wildcard` writes one `*` tenant rule per provider (the union of every
    tenant's suggestions). Every other rule of `base` is kept as it is.
    """
    base = base or RuleSet.default()
    wanted: dict[tuple[str, str], list[Suggestion]] = {}
    for s in suggestions:
        scope = (ANY if tenant_wildcard else s.tenant, s.provider)
        wanted.setdefault(scope, []).append(s)
    rules = list(base.rules)
    for (tenant, provider), items in wanted.items():
        current = base.for_(tenant, provider).spec
        fields = [s.field for s in items]
        add = tuple(dict.fromkeys(f for f in fields if f not in current.ignore_fields and f not in current.fingerprint_fields))
        if not add:
            continue
        note = "suggested by `alertstream dedup suggest` (field: share of content changes, identities): " + ", ".join(
            f"{s.field}: {s.change_ratio:.0%}, {s.identities}" for s in items if s.field in add)
        own = current.tenant == tenant and current.provider == provider and current in base.rules
        updated = RuleSpec(tenant=tenant, provider=provider, fingerprint_fields=current.fingerprint_fields,
                           ignore_fields=current.ignore_fields + add, mode=current.mode,
                           description=current.description if own and current.description else note)
        if own:
            rules[rules.index(current)] = updated
        else:
            rules.append(updated)
    text = dump_rules(rules, header="alertstream fingerprint/dedup rules (docs/dedup.md)\n"
                                    "Review before applying: an ignored field no longer makes a sighting `changed`.")
    RuleSet.from_yaml(text, source="<suggested rules>")  # what is written must load
    return text


__all__ = ["AdaptiveLearner", "NEVER_SUGGESTED", "Suggestion", "suggest_from_records", "to_rules_yaml"]
