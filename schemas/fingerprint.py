"""Alert identity (fingerprint) and content hash, over canonical JSON.

Fingerprint: the provider's own identity when the normalizer set one (Keep's
per-provider defaults), else sha256 of the name, as Keep does. Content hash:
sha256 over the alert with its ignore fields removed; two alerts with the same
fingerprint and content hash are full duplicates.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

import msgspec
import orjson

from schemas.alert import Alert

# Keep's default full-dedup rule ignores lastReceived; `tenant` is part of the
# state key already.
DEFAULT_IGNORE_FIELDS: tuple[str, ...] = ("lastReceived",)


def canonical_json(value: Any) -> bytes:
    """Sorted keys at every depth, no whitespace: equal data, equal bytes."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fingerprint_of(alert: Alert) -> str:
    return alert.fingerprint or sha256_hex(alert.name.encode())


def fingerprint_from_fields(document: dict[str, Any], paths: Iterable[str]) -> str:
    """sha256 over the values at dotted `paths` (a custom fingerprint rule)."""
    values = [_lookup(document, path) for path in paths]
    return sha256_hex(canonical_json(values))


def content_hash(alert: Alert, ignore_fields: Iterable[str] = DEFAULT_IGNORE_FIELDS) -> str:
    document = msgspec.to_builtins(alert)
    for path in ignore_fields:
        _drop(document, path)
    return sha256_hex(canonical_json(document))[:32]


def _lookup(document: Any, path: str) -> Any:
    node = document
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return None
    return node


def _drop(document: dict[str, Any], path: str) -> None:
    *parents, leaf = path.split(".")
    node: Any = document
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(leaf, None)
