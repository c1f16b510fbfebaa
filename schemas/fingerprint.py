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


# (wire name, attribute) of every field: the hash sees every field, defaults included.
# msgspec's omit_defaults decides by identity for some values, so a default typed
# in code and the same value parsed from JSON would serialize differently.
_FIELDS = tuple((f.encode_name, f.name) for f in msgspec.structs.fields(Alert))


def alert_document(alert: Alert) -> dict[str, Any]:
    return {wire: getattr(alert, attr) for wire, attr in _FIELDS}


def content_hash(alert: Alert, ignore_fields: Iterable[str] = DEFAULT_IGNORE_FIELDS) -> str:
    document = alert_document(alert)
    for path in ignore_fields:
        if "." in path:  # nested: copy the parent before removing from it
            top = path.split(".", 1)[0]
            if isinstance(document.get(top), dict):
                document[top] = _deep_copy(document[top])
        _drop(document, path)
    return sha256_hex(canonical_json(document))[:32]


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


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
        node.pop(leaf, None)  # an emptied map stays {}: equal to an alert that never had the key
