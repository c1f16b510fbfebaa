"""Prometheus Alertmanager webhook (version 4): many alerts per message.

Group fields `receiver`, `groupKey`, `externalURL` (`groupLabels`,
`commonLabels`, `commonAnnotations` are in each alert's own labels and
annotations already): the first alert of the message carries all of them, the
others only those that are small scalars (`base.group_fields_per_alert`).
Keep's PrometheusProvider puts none of them on its alerts; they are kept here
because "which route sent this" is what an operator searches for, but never
repeated per alert when they are large.

`startsAt` (RFC 3339 with nanoseconds and any offset) becomes `firingStartTime`
in ISO 8601 UTC; an unreadable one is kept in extra, never stored as a date.

A bare alert (one alert object, no `alerts` key: what Keep's simulator, its
end-to-end tests and hand-written curl calls post) is one alert, as in Keep's
PrometheusProvider (`event.get("alerts", [event])`). An `alerts` key that is
not a non-empty list is refused.

Two paths, one result. A webhook as Alertmanager writes it (every field it reads a string, labels
and annotations maps of strings) is decoded by `normalize_bytes` straight into typed structs: one
pass, no intermediate dicts for the fields nobody reads (`groupLabels`, `commonLabels`,
`commonAnnotations`), no per-label type checks. Anything else (numbers or nulls where strings
belong, a bare alert, malformed JSON) takes `normalize`, the general path over parsed JSON, which
also gives every error its reason. Both build each alert with `_alert`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.alert import Alert
from schemas.normalizers.base import (
    InvalidPayload,
    NormalizeContext,
    alert_items,
    group_fields_per_alert,
    optional_str,
    parse_time,
    require_dict,
    string_map,
)
from schemas.normalizers.severity import severity_from_word

_ZERO_TIME_PREFIX = "0001-01-01"  # Go's zero time: "not set"
_GROUP = ("receiver", "groupKey", "externalURL")


def normalize(payload: Any, ctx: NormalizeContext) -> list[Alert]:
    body = require_dict(payload, "webhook")
    if "alerts" not in body:  # a bare alert, as Keep accepts it
        return [_one(body, {}, ctx)]
    alerts = body["alerts"]
    if not isinstance(alerts, list) or not alerts:
        raise InvalidPayload("missing_field", "`alerts` must be a non-empty list")
    group = {k: body[k] for k in _GROUP if k in body}
    per_alert = group_fields_per_alert(group)
    return [_one(require_dict(a, f"alerts[{i}]"), group if i == 0 else per_alert, ctx)
            for i, a in alert_items(alerts, ctx, "`alerts`")]


def normalize_bytes(raw: bytes, ctx: NormalizeContext) -> list[Alert] | None:
    """The typed path: the alerts of a well-formed webhook, or None for `normalize` to decide."""
    try:
        body = _decode_webhook(raw)
    except (msgspec.DecodeError, RecursionError):  # ValidationError is a DecodeError: a shape, nesting or
        return None  # bytes only the general path can judge (and give its reason)
    alerts = body.alerts
    budget = ctx.budget
    if not alerts or (budget is not None and len(alerts) > budget.limits.max_alerts_per_record):
        return None  # the general path refuses it, with its reason
    group = {k: v for k, v in ((k, getattr(body, k)) for k in _GROUP) if v is not msgspec.UNSET}
    per_alert = group_fields_per_alert(group)
    out = []
    for i, a in enumerate(alerts):
        if budget is not None:
            budget.tick()
        out.append(_alert(a.labels, a.annotations, a.status, a.startsAt, a.endsAt, a.generatorURL, a.fingerprint,
                          group if i == 0 else per_alert, ctx))
    return out


class _TypedAlert(msgspec.Struct):
    """An alert as Alertmanager writes it; other keys are ignored, as the general path ignores them."""

    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    status: str | None = None
    startsAt: str | None = None
    endsAt: str | None = None
    generatorURL: str | None = None
    fingerprint: str | None = None


class _TypedWebhook(msgspec.Struct):
    alerts: list[_TypedAlert]
    receiver: str | msgspec.UnsetType = msgspec.UNSET
    groupKey: str | msgspec.UnsetType = msgspec.UNSET
    externalURL: str | msgspec.UnsetType = msgspec.UNSET


_decode_webhook = msgspec.json.Decoder(_TypedWebhook).decode


def _one(item: dict[str, Any], group: dict[str, Any], ctx: NormalizeContext) -> Alert:
    return _alert(string_map(item.get("labels"), "labels"), string_map(item.get("annotations"), "annotations"),
                  optional_str(item.get("status"), "status"), optional_str(item.get("startsAt"), "startsAt"),
                  optional_str(item.get("endsAt"), "endsAt"), optional_str(item.get("generatorURL"), "generatorURL"),
                  optional_str(item.get("fingerprint"), "fingerprint"), group, ctx)


def _alert(labels: dict[str, str], annotations: dict[str, str], status: str | None, starts_at: str | None,
           ends_at: str | None, generator_url: str | None, fingerprint: str | None, group: dict[str, Any],
           ctx: NormalizeContext) -> Alert:
    name = labels.get("alertname")
    if not name:
        raise InvalidPayload("missing_field", "an alert has no `labels.alertname`")
    status = status or "firing"
    if status not in ("firing", "resolved"):
        raise InvalidPayload("invalid_field", f"alert status must be firing or resolved, got {status!r}")
    extra: dict[str, Any] = {"annotations": annotations, **group}
    if ends_at and not ends_at.startswith(_ZERO_TIME_PREFIX):
        extra["endsAt"] = ends_at
    firing_start = None
    if starts_at:
        extra["startsAt"] = starts_at  # the original, as Alertmanager wrote it
        if not starts_at.startswith(_ZERO_TIME_PREFIX):
            firing_start = parse_time(starts_at)
    return Alert(
        name=name,
        status=status,
        severity=severity_from_word(labels.get("severity"), default="info"),
        last_received=ctx.received_at,
        fingerprint=fingerprint or "",
        tenant=ctx.tenant,
        provider_type="prometheus",
        provider_id=ctx.provider_id,
        id=fingerprint,
        environment=labels.get("environment") or labels.get("env") or "undefined",
        service=labels.get("service") or labels.get("job"),
        source=["prometheus"],
        message=annotations.get("summary"),
        description=annotations.get("description"),
        url=generator_url,
        labels=labels,
        firing_start_time=firing_start,
        extra=extra,
    )
