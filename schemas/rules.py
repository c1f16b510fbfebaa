"""Fingerprint and dedup rules per tenant and provider, from a YAML file (Keep's custom dedup rules).

A rule says, for the alerts of one tenant and one provider ("*" = any):

- `fingerprint_fields`: dotted paths into the canonical alert's JSON document (Keep's camelCase
  names: `name`, `labels.instance`, `extra.monitor_id`); the identity is sha256 over their values
  (Keep's `get_alert_fingerprint`). Empty: the normalizer's identity (the provider's fingerprint,
  else sha256(name)). `[fingerprint]` alone is that identity too, verbatim (keephq/keep#2312).
- `ignore_fields`: dotted paths left out of the content hash, on top of the default `lastReceived`
  (a custom rule inherits the default ignore fields, as in Keep).
- `mode`: `full` (the default): an exact repeat (same identity, same content hash) is a duplicate,
  not stored; a change is stored. `none`: every sighting is stored (dedup off for that scope).

Resolution: the most specific rule wins, whole (tenant+provider > tenant+* > *+provider > *+*);
nothing is merged between rules except the built-in default ignore fields.

The rules apply wherever a canonical alert is fingerprinted (the normalizer stage, one code path for
every provider and for Keep's generic `/alerts/event` body), so a custom rule is never skipped on
one path (keephq/keep#5370, #6793). See docs/dedup.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from operator import attrgetter
from pathlib import Path
from typing import Annotated, Any, Callable, Iterable, Literal

import msgspec
import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from schemas.alert import Alert
from schemas.fingerprint import (
    DEFAULT_IGNORE_FIELDS,
    canonical_json,
    content_hash,
    content_hash_and_document,
    fingerprint_of,
    sha256_hex,
)
from schemas.normalizers import PROVIDER_MODULES

ANY = "*"
FORMAT_VERSION = 1

# Top-level fields of the canonical alert's JSON document: camelCase name → struct attribute.
ALERT_FIELDS: dict[str, str] = {f.encode_name: f.name for f in msgspec.structs.fields(Alert)}
_SNAKE_TO_CAMEL = {snake: camel for camel, snake in ALERT_FIELDS.items() if snake != camel}
_MAPS = ("labels", "extra")  # the only fields with addressable keys below them
# Provider names a rule may name: the provider types the normalizers set ("alertmanager" is the
# header alias of "prometheus": alerts from both carry providerType "prometheus").
PROVIDER_ALIASES = {"alertmanager": "prometheus"}
PROVIDERS = frozenset(PROVIDER_ALIASES.get(p, p) for p in PROVIDER_MODULES)

# Never part of an identity: a timestamp (every sighting new), the status (firing and resolved would
# be two alerts and a resolve would never close the firing one), the tenant (always in the key).
_NOT_IDENTITY = {"lastReceived": "it changes on every sighting", "status": "firing and resolved would be two different alerts",
                 "tenant": "the tenant is always part of the identity already"}
# Never ignored: a status change is always stored; identity fields are constant within an identity.
_NOT_IGNORABLE = {"status": "a status change (firing → resolved) must always be stored",
                  "fingerprint": "it is the identity, constant within an identity",
                  "tenant": "it is part of the identity, constant within an identity"}


class RulesError(ValueError):
    """The rules file is invalid; `problems` are `path:line: location: message` strings."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"invalid fingerprint rules in {source}:\n  " + "\n  ".join(problems))


def check_path(path: str) -> str:
    """A dotted path into the canonical alert's document, or ValueError saying what is wrong with it."""
    if not isinstance(path, str) or not path or path != path.strip():
        raise ValueError(f"{path!r} is not a dotted path (e.g. `labels.instance`)")
    parts = path.split(".")
    if any(not p for p in parts):
        raise ValueError(f"{path!r} has an empty segment")
    head = parts[0]
    if head not in ALERT_FIELDS:
        hint = f"; did you mean `{_SNAKE_TO_CAMEL[head]}`? (Keep's camelCase names)" if head in _SNAKE_TO_CAMEL else ""
        raise ValueError(f"{path!r}: `{head}` is not a field of the canonical alert{hint}; "
                         f"fields: {', '.join(sorted(ALERT_FIELDS))}")
    if len(parts) > 1 and head not in _MAPS:
        raise ValueError(f"{path!r}: `{head}` has no keys below it (only `labels.<key>` and `extra.<path>` do)")
    if head == "labels" and len(parts) > 2:
        raise ValueError(f"{path!r}: labels is a flat map, name one label as `labels.<key>` "
                         "(a label key containing '.' cannot be named)")
    return path


def _identity_path(path: str) -> str:
    check_path(path)
    if path in _NOT_IDENTITY:
        raise ValueError(f"`{path}` cannot be an identity field: {_NOT_IDENTITY[path]}")
    return path


def _ignorable_path(path: str) -> str:
    check_path(path)
    if path in _NOT_IGNORABLE:
        raise ValueError(f"`{path}` cannot be ignored: {_NOT_IGNORABLE[path]}")
    return path


IdentityPath = Annotated[str, AfterValidator(_identity_path)]
IgnorePath = Annotated[str, AfterValidator(_ignorable_path)]


class RuleSpec(BaseModel):
    """One rule as written in the file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str = Field(ANY, min_length=1, description="Tenant the rule applies to; `*` = any tenant.")
    provider: str = Field(ANY, min_length=1, description="Provider type (`prometheus`, `zabbix`, ...); `*` = any.")
    fingerprint_fields: tuple[IdentityPath, ...] = Field((), description="Dotted paths whose values make the identity; empty = the normalizer's.")
    ignore_fields: tuple[IgnorePath, ...] = Field((), description="Dotted paths left out of the content hash (besides `lastReceived`).")
    mode: Literal["full", "none"] = Field("full", description="`full`: exact repeats are not stored; `none`: every sighting is stored.")
    description: str | None = Field(None, description="Free text: why the rule exists.")

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> Any:
        if value == "partial":
            raise ValueError("`partial` is not a mode: Keep's partial duplicates (same identity, changed content) are "
                             "stored under mode `full` as `changed`; use `full`, or `none` to store every sighting")
        return value

    @field_validator("tenant")
    @classmethod
    def _tenant(cls, value: str) -> str:
        if "\x00" in value or value != value.strip():
            raise ValueError("tenant must not contain NUL or surrounding whitespace")
        return value

    @field_validator("provider")
    @classmethod
    def _provider(cls, value: str) -> str:
        value = PROVIDER_ALIASES.get(value, value)
        if value != ANY and value not in PROVIDERS:
            raise ValueError(f"unknown provider {value!r}; known: {', '.join(sorted(PROVIDERS))} or `*`")
        return value

    @field_validator("fingerprint_fields", "ignore_fields", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> Any:
        if value is None:
            return ()
        if isinstance(value, str):
            raise ValueError("must be a list of dotted paths, e.g. [labels.instance], not a single string")
        return value

    @field_validator("fingerprint_fields", "ignore_fields")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        _no_repeats(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> RuleSpec:
        both = sorted(set(self.fingerprint_fields) & set(self.ignore_fields))
        if both:
            raise ValueError(f"{', '.join(both)}: both an identity field and ignored (an identity field is constant within an identity)")
        return self


def _no_repeats(paths: tuple[str, ...]) -> None:
    seen: set[str] = set()
    for path in paths:
        if path in seen:
            raise ValueError(f"`{path}` is listed twice")
        seen.add(path)


class RulesFile(BaseModel):
    """The whole file: `version` and `rules`; any other top-level key is an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = FORMAT_VERSION
    rules: tuple[RuleSpec, ...] = ()

    @field_validator("rules", mode="before")
    @classmethod
    def _rules(cls, value: Any) -> Any:
        return () if value is None else value

    @model_validator(mode="after")
    def _unique_scopes(self) -> RulesFile:
        check_unique_scopes(self.rules)
        return self


def check_unique_scopes(rules: Iterable[Any]) -> None:
    """One rule per (tenant, provider) scope: shared by every per-tenant, per-provider config file."""
    seen: dict[tuple[str, str], int] = {}
    for index, rule in enumerate(rules):
        scope = (rule.tenant, rule.provider)
        if scope in seen:
            raise ValueError(f"rules[{index}] and rules[{seen[scope]}] both apply to tenant {rule.tenant!r}, "
                             f"provider {rule.provider!r}: one rule per scope")
        seen[scope] = index


# ------------------------------------------------------------------------------------------ resolved rules

_Getter = Callable[[Alert], Any]


def _lookup(node: Any, parts: tuple[str, ...]) -> Any:
    for part in parts:
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def _getter(path: str) -> _Getter:
    """Reads `path` straight from the struct: the value `to_builtins(alert)` would hold there."""
    head, *rest = path.split(".")
    if head == "fingerprint":
        return fingerprint_of  # the normalizer's identity: the provider's fingerprint, else sha256(name)
    if head == "labels" and rest:
        key = rest[0]
        return lambda alert: alert.labels.get(key)
    if head == "extra" and rest:
        parts = tuple(rest)
        return lambda alert: _lookup(alert.extra, parts)
    return attrgetter(ALERT_FIELDS[head])


class ResolvedRule:
    """What applies to one (tenant, provider): how to fingerprint and hash its alerts."""

    __slots__ = ("spec", "origin", "fingerprint_fields", "ignore_fields", "dedup_enabled", "fallbacks",
                 "_getters", "_verbatim", "hashes_whole_alert")

    def __init__(self, spec: RuleSpec, origin: str) -> None:
        self.spec = spec
        self.origin = origin  # "rules[2] (tenant 'acme', provider 'zabbix')" or "built-in default", for logs
        self.fingerprint_fields = spec.fingerprint_fields
        extra = tuple(p for p in spec.ignore_fields if p not in DEFAULT_IGNORE_FIELDS)
        # The default set is passed as the very tuple `content_hash` compares with: its fast path.
        self.ignore_fields: tuple[str, ...] = DEFAULT_IGNORE_FIELDS + extra if extra else DEFAULT_IGNORE_FIELDS
        self.dedup_enabled = spec.mode == "full"
        self.fallbacks = 0  # alerts that had none of the fingerprint fields: they kept the default identity
        self._getters = tuple(_getter(p) for p in spec.fingerprint_fields)
        self._verbatim = spec.fingerprint_fields in ((), ("fingerprint",))
        # the default identity and ignore fields: the hash encodes the whole alert but lastReceived,
        # and nothing before it walks into the alert's nested fields
        self.hashes_whole_alert = self._verbatim and self.ignore_fields == DEFAULT_IGNORE_FIELDS

    def fingerprint(self, alert: Alert) -> str:
        """The alert's identity under this rule (`alert.fingerprint` as the normalizer set it is an input).

        Equals `fingerprint_from_fields(msgspec.to_builtins(alert), fields)` (the field `fingerprint`
        read as the default identity), computed without building the document. An alert that has
        none of the fields keeps the default identity: a rule naming absent fields must not merge
        every such alert into one (keephq/keep#4766); `fallbacks` counts them.
        """
        if self._verbatim:
            return fingerprint_of(alert)
        values = [get(alert) for get in self._getters]
        if all(v is None for v in values):
            self.fallbacks += 1
            return fingerprint_of(alert)
        return sha256_hex(canonical_json(values))

    def content_hash(self, alert: Alert) -> str:
        return content_hash(alert, self.ignore_fields)

    def content_hash_and_document(self, alert: Alert) -> tuple[str, bytes | None]:
        return content_hash_and_document(alert, self.ignore_fields)

    def __repr__(self) -> str:
        return (f"ResolvedRule({self.origin}: fingerprint_fields={list(self.fingerprint_fields)}, "
                f"ignore_fields={list(self.ignore_fields)}, mode={self.spec.mode})")


DEFAULT_RULE = RuleSpec()


@dataclass(frozen=True, slots=True)
class _Indexed:
    spec: RuleSpec
    origin: str


class RuleSet:
    """The rules of one file, resolved per (tenant, provider) once and cached."""

    _MAX_CACHED = 65_536  # tenants come from a header: bound the cache whatever producers send

    def __init__(self, rules: Iterable[RuleSpec] = (), source: str = "<built-in>") -> None:
        self.rules = tuple(rules)
        self.source = source
        self._by_scope: dict[tuple[str, str], _Indexed] = {}
        for index, rule in enumerate(self.rules):
            origin = f"{source} rules[{index}] (tenant {rule.tenant!r}, provider {rule.provider!r})"
            self._by_scope[(rule.tenant, rule.provider)] = _Indexed(rule, origin)
        self._resolved: dict[tuple[str, str], ResolvedRule] = {}
        self._shared: dict[tuple[str, str], ResolvedRule] = {}  # one ResolvedRule per matched scope

    @classmethod
    def default(cls) -> RuleSet:
        return cls()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RuleSet:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RulesError(str(path), [f"cannot read the file: {exc.strerror or exc}"]) from None
        return cls.from_yaml(text, source=str(path))

    @classmethod
    def from_yaml(cls, text: str, source: str = "<string>") -> RuleSet:
        return cls(parse_rules(text, source).rules, source)

    def for_(self, tenant: str, provider: str) -> ResolvedRule:
        """The rule for (tenant, provider): tenant+provider > tenant+* > *+provider > *+* > built-in."""
        key = (tenant, provider)
        rule = self._resolved.get(key)
        if rule is None:
            rule = self._resolve(tenant, PROVIDER_ALIASES.get(provider, provider))
            if len(self._resolved) >= self._MAX_CACHED:
                self._resolved.clear()
            self._resolved[key] = rule
        return rule

    def _resolve(self, tenant: str, provider: str) -> ResolvedRule:
        for scope in ((tenant, provider), (tenant, ANY), (ANY, provider), (ANY, ANY)):
            found = self._by_scope.get(scope)
            if found is not None:
                break
        else:
            scope, found = (ANY, ANY), _Indexed(DEFAULT_RULE, "built-in default")
        shared = self._shared.get(scope)
        if shared is None:
            shared = self._shared[scope] = ResolvedRule(found.spec, found.origin)
        return shared

    def apply(self, alert: Alert) -> str:
        """Fingerprint `alert` in place under its rule and return its content hash (one call per alert)."""
        rule = self.for_(alert.tenant, alert.provider_type)
        alert.fingerprint = rule.fingerprint(alert)
        return rule.content_hash(alert)


# the rules in force when no file is configured (Keep's default full rule)
DEFAULT_RULES = RuleSet.default()


# ------------------------------------------------------------------------------------------ loading

def load_rules(path: str | os.PathLike[str] | None) -> RuleSet:
    """The rules of `path`, or the built-in default (Keep's default full rule) when it is None or ""."""
    if path is None or str(path) == "":
        return RuleSet.default()
    return RuleSet.load(path)


def parse_rules(text: str, source: str = "<string>") -> RulesFile:
    """Validate the YAML text; every problem is reported with its line (RulesError)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise RulesError(source, [f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}"]) from None
    if root is None:
        return RulesFile()
    duplicates = list(_duplicate_keys(root, (), source))
    if duplicates:
        raise RulesError(source, duplicates)
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise RulesError(source, [f"{source}:{root.start_mark.line + 1}: the file must be a mapping with `version` and `rules`"])
    try:
        return RulesFile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                allowed = RuleSpec.model_fields if len(loc) > 1 else RulesFile.model_fields
                message = f"unknown key; allowed: {', '.join(allowed)}"
            line = _line_of(root, loc)
            problems.append(f"{source}:{line}: {_loc_text(loc)}: {message}")
        raise RulesError(source, problems) from None


def _loc_text(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(file)"


def _line_of(root: yaml.Node, loc: tuple[Any, ...]) -> int:
    """1-based line of the deepest YAML node on the error's location path."""
    node = root
    for depth, part in enumerate(loc):
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == part:
                    last = depth == len(loc) - 1
                    node = key if last and not isinstance(value, yaml.CollectionNode) else value
                    break
            else:
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            break
    return node.start_mark.line + 1


def _duplicate_keys(node: yaml.Node, loc: tuple[Any, ...], source: str) -> Iterable[str]:
    """PyYAML keeps the last of two equal keys silently; a rules file must not."""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.value in seen:
                yield f"{source}:{key.start_mark.line + 1}: {_loc_text(loc + (key.value,))}: key given twice"
            seen.add(key.value)
            yield from _duplicate_keys(value, loc + (key.value,), source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            yield from _duplicate_keys(item, loc + (index,), source)


def dump_rules(rules: Iterable[RuleSpec], header: str | None = None) -> str:
    """A rules file for `rules` (what `RuleSet.from_yaml` reads back to the same rules)."""
    items = []
    for rule in rules:
        item: dict[str, Any] = {"tenant": rule.tenant, "provider": rule.provider}
        if rule.description:
            item["description"] = rule.description
        if rule.fingerprint_fields:
            item["fingerprint_fields"] = list(rule.fingerprint_fields)
        if rule.ignore_fields:
            item["ignore_fields"] = list(rule.ignore_fields)
        item["mode"] = rule.mode
        items.append(item)
    body = yaml.safe_dump({"version": FORMAT_VERSION, "rules": items}, sort_keys=False, allow_unicode=True, width=120)
    if header:
        body = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + body
    return body


__all__ = ["ALERT_FIELDS", "ANY", "DEFAULT_RULE", "PROVIDERS", "ResolvedRule", "RuleSet", "RuleSpec",
           "RulesError", "RulesFile", "check_path", "dump_rules", "load_rules", "parse_rules"]
