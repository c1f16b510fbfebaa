"""Grafana unified alerting webhook (contact point of type "webhook"): many alerts per message.

Differences from Keep's GrafanaProvider, on purpose:
- status comes from each alert's own `status`. Keep took the group's `status`,
  so a group notification carrying one firing and one resolved alert marked
  both firing (and a resolved alert stayed open until the whole group resolved).
  The group status is only the fallback when an alert has none.
- name is the alert's `labels.alertname`. Keep used the group `title`
  ("[FIRING:2] ... "), which changes with the alert count and the status and
  is the same for every alert of the group; the title is kept in extra.
- fingerprint: `alerts[].fingerprint` → `labels.fingerprint` →
  sha256 of the canonical JSON of the labels (sorted keys, so the same label
  set always gives the same fingerprint; Keep hashed `json.dumps(labels)` in
  whatever order the keys arrived).
- group-level `groupLabels`/`commonLabels`/`commonAnnotations` are not copied:
  they are, by definition, contained in each alert's labels and annotations.
- the other group fields (receiver, groupKey, title, message...) are on the
  first alert of the message, all of them, once; each further alert repeats
  only the small scalars (`base.group_fields_per_alert`), never `message`,
  which renders every alert of the group: copied per alert it made a
  notification's stored size grow with the square of its alert count. Keep's
  GrafanaProvider uses the group title as every alert's name; here it is in
  extra.groupTitle (each alert, when small) and the name's fallback.
"""

from __future__ import annotations

from typing import Any

from schemas.alert import Alert
from schemas.fingerprint import canonical_json, sha256_hex
from schemas.normalizers.base import (
    InvalidPayload,
    NormalizeContext,
    alert_items,
    group_fields_per_alert,
    lower_str,
    non_empty_str,
    optional_time,
    require_dict,
    string_map,
)
from schemas.normalizers.severity import severity_from_word

PROVIDER = "grafana"
_ZERO_TIME_PREFIX = "0001-01-01"
_STATUS = {"firing": "firing", "alerting": "firing", "resolved": "resolved", "ok": "resolved", "normal": "resolved",
           "pending": "pending", "nodata": "pending", "no_data": "pending", "paused": "suppressed"}
# per-alert keys read into Alert fields; everything else goes to extra
_HANDLED = {"status", "labels", "annotations", "fingerprint", "generatorURL", "imageURL", "startsAt"}
# group keys copied into each alert's extra, under these names
_GROUP = {"receiver": "receiver", "groupKey": "groupKey", "externalURL": "externalURL", "orgId": "orgId",
          "title": "groupTitle", "status": "groupStatus", "state": "groupState", "message": "groupMessage",
          "truncatedAlerts": "truncatedAlerts", "version": "version"}
_GROUP_SIZED = frozenset({"groupMessage"})  # grows with the group: first alert only, whatever its size


def normalize(payload: Any, ctx: NormalizeContext) -> list[Alert]:
    body = require_dict(payload, "webhook")
    if "evalMatches" in body or ("ruleId" in body and "alerts" not in body):
        raise InvalidPayload("unsupported_format", "legacy Grafana alerting (evalMatches/ruleId) is not supported; "
                             "send from a unified alerting webhook contact point")
    alerts = body.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        raise InvalidPayload("missing_field", "`alerts` must be a non-empty list")
    group = {name: body[key] for key, name in _GROUP.items() if key in body and body[key] is not None}
    per_alert = group_fields_per_alert(group, never=_GROUP_SIZED)
    title = non_empty_str(group.get("groupTitle"), "title")
    group_status = _STATUS.get(lower_str(body.get("status")))
    return [_one(require_dict(a, f"alerts[{i}]"), i, group if i == 0 else per_alert, title, group_status, ctx)
            for i, a in alert_items(alerts, ctx, "`alerts`")]


def identity(alert_fingerprint: str | None, labels: dict[str, str]) -> str:
    """The Grafana fingerprint: the alert's `fingerprint`, else `labels.fingerprint`, else sha256
    over the canonical JSON of the labels."""
    return alert_fingerprint or labels.get("fingerprint") or sha256_hex(canonical_json(labels))


def _one(item: dict[str, Any], i: int, group: dict[str, Any], title: str | None, group_status: str | None,
         ctx: NormalizeContext) -> Alert:
    where = f"alerts[{i}]"
    labels = string_map(item.get("labels"), f"{where}.labels")
    annotations = string_map(item.get("annotations"), f"{where}.annotations")
    name = labels.get("alertname") or title
    if not name:
        raise InvalidPayload("missing_field", f"{where} has no `labels.alertname` and the group no `title`")

    raw_status = item.get("status")
    if raw_status is None:
        status = group_status or "firing"
    else:
        status = _STATUS.get(lower_str(raw_status))
        if status is None:
            raise InvalidPayload("invalid_field", f"{where}.status must be firing or resolved, got {raw_status!r}")

    alert_fp = non_empty_str(item.get("fingerprint"), f"{where}.fingerprint")
    fingerprint = identity(alert_fp, labels)

    extra: dict[str, Any] = {k: v for k, v in item.items() if k not in _HANDLED}
    if annotations:
        extra["annotations"] = annotations
    ends_at = extra.get("endsAt")
    if isinstance(ends_at, str) and ends_at.startswith(_ZERO_TIME_PREFIX):
        del extra["endsAt"]  # Go's zero time: "not ended"
    starts_at = item.get("startsAt")
    firing_start = None
    if not (isinstance(starts_at, str) and starts_at.startswith(_ZERO_TIME_PREFIX)):
        firing_start = optional_time(starts_at, "startsAt", extra)
    for key, value in group.items():
        extra.setdefault(key, value)

    return Alert(
        name=name,
        status=status,
        severity=severity_from_word(labels.get("severity"), default="info"),
        last_received=ctx.received_at,  # Grafana sends no evaluation time per alert
        fingerprint=fingerprint,
        tenant=ctx.tenant,
        provider_type=PROVIDER,
        provider_id=ctx.provider_id,
        id=alert_fp,
        environment=(labels.get("deployment_environment") or labels.get("environment") or labels.get("env")
                     or "undefined"),
        service=labels.get("service"),
        source=[PROVIDER],
        message=annotations.get("summary"),
        description=annotations.get("description"),
        url=non_empty_str(item.get("generatorURL"), f"{where}.generatorURL"),
        image_url=non_empty_str(item.get("imageURL"), f"{where}.imageURL"),
        labels=labels,
        firing_start_time=firing_start,
        extra=extra,
    )


__all__ = ["identity", "normalize"]
