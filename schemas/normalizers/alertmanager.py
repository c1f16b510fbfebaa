"""Prometheus Alertmanager webhook (version 4): many alerts per message."""

from __future__ import annotations

from typing import Any

from schemas.alert import Alert
from schemas.normalizers.base import InvalidPayload, NormalizeContext, optional_str, require_dict, string_map
from schemas.normalizers.severity import severity_from_word

_ZERO_TIME = "0001-01-01T00:00:00Z"


def normalize(payload: Any, ctx: NormalizeContext) -> list[Alert]:
    body = require_dict(payload, "webhook")
    alerts = body.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        raise InvalidPayload("missing_field", "`alerts` must be a non-empty list")
    group = {k: body[k] for k in ("receiver", "groupKey", "externalURL") if k in body}
    return [_one(require_dict(a, f"alerts[{i}]"), group, ctx) for i, a in enumerate(alerts)]


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
    if ends_at and ends_at != _ZERO_TIME:
        extra["endsAt"] = ends_at
    if starts_at:
        extra["startsAt"] = starts_at
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
        firing_start_time=starts_at,
        extra=extra,
    )
