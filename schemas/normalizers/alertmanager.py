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
"""

from __future__ import annotations

from typing import Any

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


def _one(item: dict[str, Any], group: dict[str, Any], ctx: NormalizeContext) -> Alert:
    labels = string_map(item.get("labels"), "labels")
    annotations = string_map(item.get("annotations"), "annotations")
    name = labels.get("alertname")
    if not name:
        raise InvalidPayload("missing_field", "an alert has no `labels.alertname`")
    status = optional_str(item.get("status"), "status") or "firing"
    if status not in ("firing", "resolved"):
        raise InvalidPayload("invalid_field", f"alert status must be firing or resolved, got {status!r}")
    starts_at = optional_str(item.get("startsAt"), "startsAt")
    ends_at = optional_str(item.get("endsAt"), "endsAt")
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
        fingerprint=optional_str(item.get("fingerprint"), "fingerprint") or "",
        tenant=ctx.tenant,
        provider_type="prometheus",
        provider_id=ctx.provider_id,
        id=optional_str(item.get("fingerprint"), "fingerprint"),
        environment=labels.get("environment") or labels.get("env") or "undefined",
        service=labels.get("service") or labels.get("job"),
        source=["prometheus"],
        message=annotations.get("summary"),
        description=annotations.get("description"),
        url=optional_str(item.get("generatorURL"), "generatorURL"),
        labels=labels,
        firing_start_time=firing_start,
        extra=extra,
    )
