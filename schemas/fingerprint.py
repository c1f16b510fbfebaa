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

from schemas.alert import Alert, encode_alert_json

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


_hash_encoder = msgspec.json.Encoder(order="sorted")  # sorted keys at every depth
_LAST_RECEIVED_KEY = b',"lastReceived":'
_LAST_RECEIVED_NULL = _LAST_RECEIVED_KEY + b"null"


def content_hash(alert: Alert, ignore_fields: Iterable[str] = DEFAULT_IGNORE_FIELDS) -> str:
    """sha256 over the sorted-key JSON of the alert minus `ignore_fields` (dotted paths).

    An ignored top-level field is hashed as null (every alert has every field), an
    ignored nested key is removed. The default rule (ignore lastReceived) takes a
    fast path over the alert's own JSON, without an intermediate dict.
    """
    return content_hash_and_document(alert, ignore_fields)[0]


def content_hash_and_document(alert: Alert, ignore_fields: Iterable[str] = DEFAULT_IGNORE_FIELDS) -> tuple[str, bytes | None]:
    """`content_hash`, and under the default rule the alert's JSON (`encode_alert_json`, what the
    packed body, `alert.event` and the search document hold) that it was taken from; else None.

    The default rule hashes that JSON with `lastReceived` written as null, the bytes the hash has
    always been taken over: one encoding serves the body, the hash and the normalizer stage's checks
    of strings and nesting. In sorted-key JSON the alert's own `"lastReceived":` is the last one: every
    field sorted after it is a string, a number or a list of strings, and `,"` cannot occur inside a
    JSON string (its quotes are escaped), so an `extra` or `labels` key of that name comes before it."""
    ignore = tuple(ignore_fields)
    if ignore != DEFAULT_IGNORE_FIELDS:
        return _custom_content_hash(alert, ignore), None
    document = encode_alert_json(alert)
    value = _hash_encoder.encode(alert.last_received)
    start = document.rfind(_LAST_RECEIVED_KEY)
    end = start + len(_LAST_RECEIVED_KEY) + len(value)
    if start < 0 or document[end - len(value):end] != value:  # unreachable for an Alert; a guard, not a path
        raise AssertionError("the alert's JSON has no top-level lastReceived where the sorted encoding puts it")
    return sha256_hex(document[:start] + _LAST_RECEIVED_NULL + document[end:])[:32], document


def _custom_content_hash(alert: Alert, ignore: tuple[str, ...]) -> str:
    document = msgspec.to_builtins(alert)
    for path in ignore:
        if "." not in path:
            if path in document:
                document[path] = None
        else:
            _drop(document, path)
    return sha256_hex(_hash_encoder.encode(document))[:32]


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
