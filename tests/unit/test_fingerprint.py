"""Fingerprint and content hash: properties over generated alerts."""

from __future__ import annotations

import copy
import hashlib
from typing import Any

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.alert import STATUSES, Alert
from schemas.fingerprint import DEFAULT_IGNORE_FIELDS, content_hash, fingerprint_from_fields, fingerprint_of

settings.register_profile("fingerprint", max_examples=60, deadline=None)
settings.load_profile("fingerprint")

text = st.text(min_size=1, max_size=12)
label_maps = st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=6)
json_scalars = st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.text(max_size=8)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)
extra_maps = st.dictionaries(st.text(max_size=8), json_values, max_size=5)


@st.composite
def alerts(draw: st.DrawFn) -> Alert:
    return Alert(
        name=draw(text),
        status=draw(st.sampled_from(STATUSES)),
        severity=draw(st.sampled_from(("critical", "high", "warning", "info", "low"))),
        last_received=draw(st.sampled_from(("2025-01-15T10:05:04.512Z", "2025-01-15T10:06:00.000Z"))),
        fingerprint=draw(st.text(max_size=12)),
        tenant=draw(st.sampled_from(("default", "acme"))),
        labels=draw(label_maps),
        extra=draw(extra_maps),
    )


def reorder(value: Any, rng: st.DataObject) -> Any:
    """The same data with every dict's keys in a drawn order, at every depth."""
    if isinstance(value, dict):
        keys = rng.draw(st.permutations(list(value)))
        return {k: reorder(value[k], rng) for k in keys}
    if isinstance(value, list):
        return [reorder(v, rng) for v in value]
    return value


def with_(alert: Alert, **changes: Any) -> Alert:
    return msgspec.structs.replace(copy.deepcopy(alert), **changes)


# ---------------------------------------------------------------- content_hash


@given(alerts(), st.data())
def test_content_hash_ignores_key_order_of_labels_and_extra(alert: Alert, data: st.DataObject) -> None:
    shuffled = with_(alert, labels=reorder(alert.labels, data), extra=reorder(alert.extra, data))
    assert content_hash(shuffled) == content_hash(alert)


def test_content_hash_key_order_explicit() -> None:
    a = Alert(name="x", last_received="t", labels={"a": "1", "b": "2"}, extra={"n": {"x": 1, "y": [{"p": 1, "q": 2}]}, "m": 2})
    b = Alert(name="x", last_received="t", labels={"b": "2", "a": "1"}, extra={"m": 2, "n": {"y": [{"q": 2, "p": 1}], "x": 1}})
    assert list(a.labels) != list(b.labels)
    assert content_hash(a) == content_hash(b)


@given(alerts(), st.text(max_size=30))
def test_content_hash_ignores_last_received_by_default(alert: Alert, other_time: str) -> None:
    assert DEFAULT_IGNORE_FIELDS == ("lastReceived",)
    assert content_hash(with_(alert, last_received=other_time)) == content_hash(alert)


@given(alerts(), st.text(max_size=8), st.text(max_size=8))
def test_content_hash_ignores_custom_dotted_paths(alert: Alert, pod_a: str, pod_b: str) -> None:
    ignore = ("lastReceived", "labels.pod", "extra.lag")
    a = with_(alert, labels={**alert.labels, "pod": pod_a}, extra={**alert.extra, "lag": 1})
    b = with_(alert, labels={**alert.labels, "pod": pod_b}, extra={**alert.extra, "lag": {"deep": [pod_b]}})
    assert content_hash(a, ignore) == content_hash(b, ignore)
    # the ignored path present or absent: the same hash
    c = with_(alert, labels={k: v for k, v in alert.labels.items() if k != "pod"},
              extra={k: v for k, v in alert.extra.items() if k != "lag"})
    assert content_hash(c, ignore) == content_hash(a, ignore)
    # without the rule, the pod counts
    if pod_a != pod_b:
        assert content_hash(a) != content_hash(b)


def test_content_hash_ignore_paths_that_do_not_exist_are_harmless() -> None:
    alert = Alert(name="x", last_received="t", labels={"a": "1"})
    assert content_hash(alert, ("lastReceived", "nope.deeper.still", "labels.missing", "name.not_a_dict")) == content_hash(alert)
    assert content_hash(alert, ()) != content_hash(alert)  # lastReceived counts when not ignored


def test_content_hash_does_not_mutate_the_alert() -> None:
    alert = Alert(name="x", last_received="t", labels={"pod": "p1"}, extra={"lag": 5})
    content_hash(alert, ("labels.pod", "extra.lag"))
    assert alert.labels == {"pod": "p1"} and alert.extra == {"lag": 5}


@given(alerts(), text)
def test_content_hash_changes_with_the_name(alert: Alert, name: str) -> None:
    if name != alert.name:
        assert content_hash(with_(alert, name=name)) != content_hash(alert)


@given(alerts(), st.sampled_from(STATUSES))
def test_content_hash_changes_with_the_status(alert: Alert, status: str) -> None:
    if status != alert.status:
        assert content_hash(with_(alert, status=status)) != content_hash(alert)


def test_content_hash_firing_to_resolved() -> None:
    firing = Alert(name="disk full", status="firing", last_received="t1")
    resolved = Alert(name="disk full", status="resolved", last_received="t2")
    assert content_hash(firing) != content_hash(resolved)


@given(alerts(), st.text(max_size=8), st.text(max_size=8), st.text(max_size=8))
def test_content_hash_changes_with_a_label_value(alert: Alert, key: str, old: str, new: str) -> None:
    if old != new:
        a = with_(alert, labels={**alert.labels, key: old})
        b = with_(alert, labels={**alert.labels, key: new})
        assert content_hash(a) != content_hash(b)
        # ignoring a *different* label does not hide the change
        assert content_hash(a, ("lastReceived", f"labels.{key}x")) != content_hash(b, ("lastReceived", f"labels.{key}x"))


@given(alerts())
def test_content_hash_is_32_hex(alert: Alert) -> None:
    h = content_hash(alert)
    assert len(h) == 32 and int(h, 16) >= 0


# ---------------------------------------------------------------- fingerprint_from_fields

documents = st.fixed_dictionaries({
    "name": text,
    "labels": st.fixed_dictionaries({"host": text, "job": text}, optional={"pod": text}),
    "extra": extra_maps,
})
PATHS = ("name", "labels.host", "labels.job")


@given(documents, st.data())
def test_fingerprint_from_fields_ignores_key_order(document: dict[str, Any], data: st.DataObject) -> None:
    assert fingerprint_from_fields(reorder(document, data), PATHS) == fingerprint_from_fields(document, PATHS)


@given(documents, st.sampled_from(PATHS), text)
def test_fingerprint_from_fields_changes_with_a_named_field(document: dict[str, Any], path: str, value: str) -> None:
    changed = copy.deepcopy(document)
    *parents, leaf = path.split(".")
    node = changed
    for part in parents:
        node = node[part]
    if node[leaf] == value:
        return
    node[leaf] = value
    assert fingerprint_from_fields(changed, PATHS) != fingerprint_from_fields(document, PATHS)


@given(documents, text, extra_maps)
def test_fingerprint_from_fields_ignores_other_fields(document: dict[str, Any], pod: str, extra: dict[str, Any]) -> None:
    changed = copy.deepcopy(document)
    changed["labels"]["pod"] = pod
    changed["extra"] = extra
    assert fingerprint_from_fields(changed, PATHS) == fingerprint_from_fields(document, PATHS)


def test_fingerprint_from_fields_nested_values_and_missing_paths() -> None:
    a = {"labels": {"x": {"p": 1, "q": [1, {"r": 2, "s": 3}]}}}
    b = {"labels": {"x": {"q": [1, {"s": 3, "r": 2}], "p": 1}}}
    assert fingerprint_from_fields(a, ["labels.x"]) == fingerprint_from_fields(b, ["labels.x"])
    # a missing path reads as null, deterministically
    assert fingerprint_from_fields(a, ["labels.nope"]) == fingerprint_from_fields({}, ["labels.nope"])
    assert len(fingerprint_from_fields(a, ["labels.x"])) == 64


# ---------------------------------------------------------------- fingerprint_of


@given(text)
def test_fingerprint_of_falls_back_to_sha256_of_the_name(name: str) -> None:
    alert = Alert(name=name, last_received="t")
    assert fingerprint_of(alert) == hashlib.sha256(name.encode()).hexdigest()


@given(text, text)
def test_fingerprint_of_keeps_the_providers_fingerprint(name: str, fingerprint: str) -> None:
    assert fingerprint_of(Alert(name=name, last_received="t", fingerprint=fingerprint)) == fingerprint


def test_fingerprint_of_keep_value() -> None:
    # Keep: AlertDto.fingerprint defaults to hashlib.sha256(name.encode()).hexdigest()
    assert fingerprint_of(Alert(name="abc", last_received="t")) == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


def test_an_ignored_only_label_hashes_like_no_labels() -> None:
    """Regression: empty labels/extra are omitted (omit_defaults), so a map emptied by an
    ignore path must be omitted too, or `{"pod": "a"}` and `{}` differ while they agree otherwise."""
    ignore = ("lastReceived", "labels.pod", "extra.lag")
    bare = Alert(name="x", last_received="t")
    assert content_hash(Alert(name="x", last_received="t", labels={"pod": "a"}, extra={"lag": 1}), ignore) == content_hash(bare, ignore)
    # a nested map emptied by the rule still differs from a missing one: that is real content
    assert content_hash(Alert(name="x", last_received="t", extra={"a": {"b": 1}}), ("extra.a.b",)) != content_hash(
        Alert(name="x", last_received="t"), ("extra.a.b",))
