"""Keep's generic alert (POST /alerts/event): one AlertDto object or a list of them.

`lastReceived` and `firingStartTime` are ISO 8601 with any offset (naive means
UTC) and are stored in UTC (`...Z`). An unreadable `lastReceived` becomes the
record's time and an unreadable `firingStartTime` none, each with the original
kept in extra under its own name: the search store's date fields never see it.
"""

from __future__ import annotations

from typing import Any

from core.errors import DEFAULT_PROVIDER
from schemas.alert import SEVERITIES, STATUSES, Alert
from schemas.normalizers.base import (
    InvalidPayload,
    NormalizeContext,
    alert_items,
    optional_str,
    optional_time,
    require_dict,
    string_map,
    time_or_received,
)

# AlertDto's own keys (camelCase, as Keep sends them) and where they go.
_SCALARS = {
    "id": "id", "name": "name", "environment": "environment",
    "service": "service", "message": "message", "description": "description", "url": "url",
    "imageUrl": "image_url", "fingerprint": "fingerprint", "providerId": "provider_id",
}
_TIMES = {"lastReceived", "firingStartTime"}
_HANDLED = set(_SCALARS) | _TIMES | {"status", "severity", "source", "labels", "providerType", "tenant", "schemaVersion"}


def normalize(payload: Any, ctx: NormalizeContext) -> list[Alert]:
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        raise InvalidPayload("invalid_shape", "empty list of alerts")
    return [_one(require_dict(item, f"alert[{i}]"), ctx) for i, item in alert_items(items, ctx, "the list of alerts")]


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
    extra = {k: v for k, v in item.items() if k not in _HANDLED}
    fields["last_received"] = time_or_received(item.get("lastReceived"), "lastReceived", ctx, extra)
    fields["firing_start_time"] = optional_time(item.get("firingStartTime"), "firingStartTime", extra)
    fields["provider_id"] = fields.get("provider_id") or ctx.provider_id
    return Alert(
        **{k: v for k, v in fields.items() if v is not None},
        status=status,
        severity=severity,
        tenant=ctx.tenant,
        provider_type=DEFAULT_PROVIDER,
        source=source or [DEFAULT_PROVIDER],
        labels=string_map(item.get("labels"), "labels"),
        extra=extra,
    )
