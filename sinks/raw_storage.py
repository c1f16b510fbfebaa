"""Selective raw payload storage: which input records keep their bytes in `alert_raw`.

Keep stores either every raw payload (KEEP_STORE_RAW_ALERTS) or none, plus its error alerts. At
600 GB/day "every payload" doubles the database, so here it is a policy per tenant and provider,
from a YAML file (`ALERTSTREAM_RAW_STORAGE_POLICY_PATH`; docs/postgres.md):

    version: 1
    default: errors                 # the mode where no rule applies
    max_raw_bytes: 1048576          # a larger payload is recorded with raw = NULL
    rules:
      - tenant: acme                # "*" (the default): any tenant
        provider: datadog           # "*" (the default): any provider
        mode: sample:0.01
        allow: [title, alert_type, tags]       # keep only these dotted paths
      - provider: prometheus
        mode: all
        deny: [alerts.annotations.secret]     # drop these dotted paths

Modes: `off` (nothing), `all` (every record), `errors` (only records that went to the DLQ),
`sample:<rate>` (that fraction of the processed records, chosen by the record's position so a
replay makes the same choice, plus every error). Resolution is the dedup rules' one: the most
specific rule wins, whole (tenant+provider > tenant+* > *+provider > *+* > `default`).

Field lists apply to JSON payloads: dotted paths through objects, and through every element of a
list (`alerts.labels.secret` reaches each alert of an Alertmanager webhook). A payload that is not
JSON under a rule with a field list is recorded with raw = NULL (its error text is kept): what a
deny list protects is never written unfiltered.

Rows are derived from the source position (id = hash of topic/partition/offset), so writing the
rows of a replayed batch again adds nothing (`INSERT ... ON CONFLICT DO NOTHING`). `RawSink` writes
them, a sink like the others (sinks/base.py): its own pool, its batch type `RawBatch`, its
retries the circuit breaker's.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Literal

import asyncpg
import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import DEFAULT_PROVIDER, PROVIDER, TENANT
from schemas.rules import ANY, PROVIDER_ALIASES, PROVIDERS, check_unique_scopes

if TYPE_CHECKING:
    from core.records import DeadLetter, RawRecord
    from schemas.alert import NormalizedAlert

RAW_COLUMNS = ("id", "received_at", "tenant", "provider_type", "source", "raw", "error")
CREATE_RAW_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS alert_raw_stage (LIKE alert_raw INCLUDING DEFAULTS INCLUDING COMPRESSION) ON COMMIT DELETE ROWS;
"""
INSERT_RAW = f"""
INSERT INTO alert_raw ({", ".join(RAW_COLUMNS)})
SELECT {", ".join(RAW_COLUMNS)} FROM alert_raw_stage
ORDER BY id, received_at
ON CONFLICT DO NOTHING
"""
_MISSING = object()


class RawPolicyError(ValueError):
    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"{source}: invalid raw storage policy:\n  " + "\n  ".join(problems))
        self.source = source
        self.problems = problems


def _check_mode(value: Any) -> str:
    if value is False:  # YAML 1.1 reads a bare `off` as false
        return "off"
    if not isinstance(value, str):
        raise ValueError("mode must be off, all, errors or sample:<rate>")
    value = value.strip()
    if value in ("off", "all", "errors"):
        return value
    if value.startswith("sample:"):
        try:
            rate = float(value.removeprefix("sample:"))
        except ValueError:
            raise ValueError(f"{value!r}: the rate must be a number, e.g. sample:0.05") from None
        if not 0 < rate <= 1:
            raise ValueError(f"{value!r}: the rate must be in (0, 1]")
        return f"sample:{rate:g}"
    raise ValueError(f"{value!r}: mode must be off, all, errors or sample:<rate>")


def _check_paths(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError("must be a list of dotted paths, e.g. [labels.instance]")
    for path in value:
        if not isinstance(path, str) or not path or any(not part for part in path.split(".")):
            raise ValueError(f"{path!r} is not a dotted path")
    if len(set(value)) != len(value):
        raise ValueError("a path is listed twice")
    return tuple(value)


class RawRuleSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tenant: str = ANY
    provider: str = ANY
    mode: str
    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    @field_validator("mode", mode="before")
    @classmethod
    def _mode(cls, value: Any) -> str:
        return _check_mode(value)

    @field_validator("allow", "deny", mode="before")
    @classmethod
    def _paths(cls, value: Any) -> tuple[str, ...]:
        return _check_paths(value)

    @field_validator("provider")
    @classmethod
    def _provider(cls, value: str) -> str:
        value = PROVIDER_ALIASES.get(value, value)
        if value != ANY and value not in PROVIDERS:
            raise ValueError(f"unknown provider {value!r}; known: {', '.join(sorted(PROVIDERS))} or `*`")
        return value

    @model_validator(mode="after")
    def _one_list(self) -> RawRuleSpec:
        if self.allow and self.deny:
            raise ValueError("give `allow` or `deny`, not both")
        return self


class RawPolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1] = 1
    default: str = "errors"
    max_raw_bytes: int = Field(1 << 20, ge=1)
    rules: tuple[RawRuleSpec, ...] = ()

    @field_validator("default", mode="before")
    @classmethod
    def _default(cls, value: Any) -> str:
        return _check_mode(value)

    @field_validator("rules", mode="before")
    @classmethod
    def _rules(cls, value: Any) -> Any:
        return () if value is None else value

    @model_validator(mode="after")
    def _unique_scopes(self) -> RawPolicyFile:
        check_unique_scopes(self.rules)
        return self


def _path_tree(paths: Iterable[str]) -> dict[str, Any]:
    """["a.b", "a.c", "d"] → {"a": {"b": True, "c": True}, "d": True} (a shorter path wins)."""
    tree: dict[str, Any] = {}
    for path in sorted(paths, key=lambda p: p.count(".")):
        node = tree
        *parents, leaf = path.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if child is True:
                break
            node = child
        else:
            node[leaf] = True
    return tree


def _pick(node: Any, tree: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [x for x in (_pick(item, tree) for item in node) if x is not _MISSING]
    if not isinstance(node, dict):
        return _MISSING
    out = {}
    for key, sub in tree.items():
        if key in node:
            value = node[key] if sub is True else _pick(node[key], sub)
            if value is not _MISSING:
                out[key] = value
    return out


def _drop(node: Any, tree: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_drop(item, tree) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        sub = tree.get(key)
        if sub is True:
            continue
        out[key] = _drop(value, sub) if sub else value
    return out


@dataclass(frozen=True, slots=True)
class RawRule:
    """What applies to one (tenant, provider)."""

    mode: str  # off | all | errors | sample
    rate: float  # the sampled fraction of processed records (1 for all, 0 for off/errors)
    allow: dict[str, Any] | None  # path trees; at most one of the two is set
    deny: dict[str, Any] | None
    origin: str

    @classmethod
    def of(cls, spec_mode: str, allow: tuple[str, ...], deny: tuple[str, ...], origin: str) -> RawRule:
        mode, _, rate = spec_mode.partition(":")
        return cls(mode, float(rate) if rate else (1.0 if mode == "all" else 0.0),
                   _path_tree(allow) if allow else None, _path_tree(deny) if deny else None, origin)

    def keeps(self, *, error: bool, draw: float) -> bool:
        """Whether a record is stored: every error unless off; a processed one by mode and rate."""
        if self.mode == "off":
            return False
        if error:
            return True
        return draw < self.rate

    def filter(self, raw: bytes) -> bytes | None:
        """The bytes to store: unchanged without a field list; filtered JSON, or None (withheld)."""
        if self.allow is None and self.deny is None:
            return raw
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return None
        if self.allow is not None:
            document = _pick(document, self.allow)
            if document is _MISSING:
                return None
        else:
            document = _drop(document, self.deny)
        return orjson.dumps(document)


class RawPolicy:
    """A raw storage policy, resolved per (tenant, provider) once and cached."""

    _MAX_CACHED = 65_536  # tenants come from a header: bound the cache

    def __init__(self, spec: RawPolicyFile | None = None, source: str = "<built-in>") -> None:
        self.spec = spec or RawPolicyFile()
        self.source = source
        self.max_raw_bytes = self.spec.max_raw_bytes
        self._default = RawRule.of(self.spec.default, (), (), f"{source} default")
        self._by_scope = {
            (r.tenant, r.provider): RawRule.of(r.mode, r.allow, r.deny, f"{source} rules[{i}]")
            for i, r in enumerate(self.spec.rules)
        }
        self._resolved: dict[tuple[str, str], RawRule] = {}

    @classmethod
    def from_yaml(cls, text: str, source: str = "<string>") -> RawPolicy:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RawPolicyError(source, [f"not YAML: {exc}"]) from None
        try:
            return cls(RawPolicyFile.model_validate(data or {}), source)
        except ValidationError as exc:
            problems = [f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg']}" for e in exc.errors()]
            raise RawPolicyError(source, problems) from None

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None) -> RawPolicy:
        """The policy of `path`; None or "": the built-in one (errors only, as Keep)."""
        if path is None or str(path) == "":
            return cls()
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise RawPolicyError(str(path), [f"cannot read the file: {exc.strerror or exc}"]) from None
        return cls.from_yaml(text, str(path))

    def for_(self, tenant: str, provider: str) -> RawRule:
        key = (tenant, provider)
        rule = self._resolved.get(key)
        if rule is None:
            provider = PROVIDER_ALIASES.get(provider, provider)
            for scope in ((tenant, provider), (tenant, ANY), (ANY, provider), (ANY, ANY)):
                rule = self._by_scope.get(scope)
                if rule is not None:
                    break
            else:
                rule = self._default
            if len(self._resolved) >= self._MAX_CACHED:
                self._resolved.clear()
            self._resolved[key] = rule
        return rule

    @property
    def stores_nothing(self) -> bool:
        return self._default.mode == "off" and all(r.mode == "off" for r in self._by_scope.values())


MAX_KEY_CHARS = 256  # tenant and provider come from headers; they are btree keys (a row holds at most ~2.7 KB)


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    return value.decode("utf-8", errors="replace").replace("\x00", "\ufffd")[:MAX_KEY_CHARS] or None


def raw_identity(topic: str, partition: int, offset: int) -> tuple[uuid.UUID, float]:
    """The row id of a source record's raw payload, and its sampling draw in [0, 1) (both from its position)."""
    digest = hashlib.blake2b(f"raw/{topic}/{partition}/{offset}".encode(), digest_size=24).digest()
    return uuid.UUID(bytes=digest[:16]), int.from_bytes(digest[16:], "big") / 2**64


def raw_rows_for(records: Iterable[RawRecord], dead_letters: Iterable[DeadLetter], policy: RawPolicy, *,
                 default_tenant: str) -> list[tuple]:
    """The `alert_raw` rows (RAW_COLUMNS) for one normalizer batch: `records` is every input record
    of the batch, `dead_letters` those of them that went to the DLQ (they are the errors)."""
    errors = {(d.record.topic, d.record.partition, d.record.offset): d for d in dead_letters}
    rows = []
    for record in records:
        letter = errors.get((record.topic, record.partition, record.offset))
        tenant = _text(record.headers.get(TENANT)) or default_tenant
        provider = _text(record.headers.get(PROVIDER)) or DEFAULT_PROVIDER
        rule = policy.for_(tenant, provider)
        row_id, draw = raw_identity(record.topic, record.partition, record.offset)
        if not rule.keeps(error=letter is not None, draw=draw):
            continue
        raw = record.value or b""
        raw = rule.filter(raw) if len(raw) <= policy.max_raw_bytes else None
        error = None
        if letter is not None:
            error = f"{letter.reason}: {letter.detail}".replace("\x00", "\ufffd")
        rows.append((
            row_id, datetime.fromtimestamp(record.timestamp_ms / 1000, tz=timezone.utc), tenant,
            PROVIDER_ALIASES.get(provider, provider), f"{record.topic}/{record.partition}/{record.offset}", raw, error,
        ))
    return rows


@dataclass(slots=True)
class RawBatch:
    """The `alert_raw` rows (RAW_COLUMNS) of one normalizer batch: the raw store's batch type.

    No row is ever refused alone (they are sanitized in `raw_rows_for`: no NUL in text, bounded
    keys), so there is nothing to bisect to or dead-letter: every failure is retried."""

    rows: list[tuple]

    @property
    def size(self) -> int:
        return len(self.rows)

    def is_empty(self) -> bool:
        return not self.rows

    def refusable(self) -> Sequence[NormalizedAlert]:
        return ()

    def split(self) -> tuple[RawBatch, RawBatch]:
        half = len(self.rows) // 2
        return RawBatch(self.rows[:half]), RawBatch(self.rows[half:])

    def without(self, uids: Collection[str]) -> RawBatch:
        return self


class RawSink:
    """`alert_raw`: COPY into a staging table, then INSERT ... ON CONFLICT DO NOTHING, in one
    transaction per batch, on a pool of its own. A replayed batch adds nothing."""

    name = "postgres_raw"

    def __init__(self, dsn: str, pool_size: int = 2) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=self._pool_size,
                                               init=self._init_connection)

    @staticmethod
    async def _init_connection(conn: asyncpg.Connection) -> None:
        await conn.execute(CREATE_RAW_STAGING)

    async def write(self, batch: RawBatch) -> int:
        """The rows inserted (0 for rows already there)."""
        if not batch.rows:
            return 0
        assert self._pool is not None, "start() first"
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.copy_records_to_table("alert_raw_stage", records=batch.rows, columns=RAW_COLUMNS)
            status = await conn.execute(INSERT_RAW)
        return int(status.split()[-1])

    def is_permanent(self, exc: Exception) -> bool:
        return False

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
