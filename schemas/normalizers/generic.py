"""Keep's generic alert (POST /alerts/event): one AlertDto object or a list of them."""

from __future__ import annotations

from typing import Any

from schemas.alert import SEVERITIES, STATUSES, Alert
from schemas.normalizers.base import InvalidPayload, NormalizeContext, optional_str, require_dict, string_map

# AlertDto's own keys (camelCase, as Keep sends them) and where they go.
_SCALARS = {
    "id": "id", "name": "name", "lastReceived": "last_received", "environment": "environment",
    "service": "service", "message": "message", "description": "description", "url": "url",
    "imageUrl": "image_url", "fingerprint": "fingerprint", "providerId": "provider_id",
    "firingStartTime": "firing_start_time",
}
_HANDLED = set(_SCALARS) | {"status", "severity", "source", "labels", "providerType", "tenant", "schemaVersion"}


def normalize(payload: Any, ctx: NormalizeContext) -> list[Alert]:
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        raise InvalidPayload("invalid_shape", "empty list of alerts")
    return [_one(require_dict(item, f"alert[{i}]"), ctx) for i, item in enumerate(items)]


def _one(item: dict[str, Any], ctx: NormalizeContext) -> Alert:
    fields: dict[str, Any] = {}
    for key, attr in _SCALARS.items():
        if key in item:
            fields[attr] = optional_str(item[key], key)
    name = fields.get("name")
    if not name:
        raise InvalidPayload("missing_field", "`name` is required and must be a non-empty string")
    status = str(item.get("status") or "firing").lower()
    if status not in STATUSES:
        raise InvalidPayload("invalid_field", f"`status` must be one of {', '.join(STATUSES)}, got {status!r}")
    severity = str(item.get("severity") or "info").lower()
    if severity not in SEVERITIES:
        raise InvalidPayload("invalid_field", f"`severity` must be one of {', '.join(SEVERITIES)}, got {severity!r}")
    source = item.get("source") or []
    if isinstance(source, str):
        source = [source]
    if not isinstance(source, list) or not all(isinstance(s, str) for s in source):
        raise InvalidPayload("invalid_field", "`source` must be a list of strings")
    fields["last_received"] = fields.get("last_received") or ctx.received_at
    fields["provider_id"] = fields.get("provider_id") or ctx.provider_id
    return Alert(
        **{k: v for k, v in fields.items() if v is not None},
        status=status,
        severity=severity,
        tenant=ctx.tenant,
        provider_type="keep",
        source=source or ["keep"],
        labels=string_map(item.get("labels"), "labels"),
        extra={k: v for k, v in item.items() if k not in _HANDLED},
    )
