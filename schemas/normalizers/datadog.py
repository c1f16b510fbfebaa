"""Datadog monitor webhook (the payload template Keep installs): one alert per message.

- fingerprint: sha256 over [groups, monitor_id], Keep's FINGERPRINT_FIELDS,
  where groups is `scopes` split on "," (["*"] when the monitor is not
  grouped). One monitor therefore gives one alert per group (host, service...),
  and its Triggered/Recovered notifications share the fingerprint. An event
  with no monitor_id uses the name in its place.
- `tags` is one comma-separated string ("env:prod,host:a,monitor"). Keep did
  `tags_list.remove("monitor")`, which raises when the literal `monitor` tag
  is missing and turned the alert into an error alert; here the `monitor`
  marker is simply skipped if present. Bare tags become labels with an empty
  value; repeated keys are joined with ",".
- `last_updated` is epoch milliseconds as a string (`date` is the fallback).
- `alert_transition`: Triggered/Re-Triggered/Warn/No Data/Renotify → firing,
  Recovered → resolved, Muted → suppressed; unknown values are firing (the raw
  transition is always kept in extra).
- `severity` is P1..P5; without it, `alert_type` (error/warning/info) decides.
- name: the title without Datadog's "[Triggered on {host:a}] " prefix, which
  changes with every transition; the full title is kept in extra.
"""

from __future__ import annotations

import re
from typing import Any

from schemas.alert import Alert
from schemas.fingerprint import canonical_json, sha256_hex
from schemas.normalizers.base import (
    InvalidPayload,
    NormalizeContext,
    Labels,
    lower_str,
    non_empty_str,
    optional_str,
    parse_time,
    require_dict,
)
from schemas.normalizers.severity import severity_from_word

PROVIDER = "datadog"
_STATUS = {"triggered": "firing", "re-triggered": "firing", "retriggered": "firing", "warn": "firing",
           "no data": "firing", "renotify": "firing", "unmuted": "firing",
           "recovered": "resolved", "muted": "suppressed"}
_ALERT_TYPE_SEVERITY = {"error": "high", "warning": "warning", "info": "info", "success": "info"}
_TITLE_PREFIX = re.compile(r"^\[(?:Triggered|Re-Triggered|Recovered|Warn|Muted|No Data|Renotify|P[1-5])\b[^\]]*\]\s*",
                           re.IGNORECASE)
_GRAPH = re.compile(r"\[!\[Metric Graph\]\((https?://[^)\s]+)\)")
_MONITOR_MARKER = "monitor"
_HANDLED = {"title", "id", "body", "url", "tags", "last_updated", "severity"}


def normalize(payload: Any, ctx: NormalizeContext) -> list[Alert]:
    event = require_dict(payload, "webhook")
    title = non_empty_str(event.get("title"), "title")
    if title is None:
        raise InvalidPayload("missing_field", "`title` is required and must be a non-empty string")
    name = _TITLE_PREFIX.sub("", title) or title

    labels = _tags(event.get("tags"))
    transition = lower_str(event.get("alert_transition"))
    status = _STATUS.get(transition, "firing")

    raw_severity = event.get("severity")
    if re.fullmatch(r"[Pp][1-5]", lower_str(raw_severity) or ""):
        severity = severity_from_word(raw_severity)
    else:
        severity = _ALERT_TYPE_SEVERITY.get(lower_str(event.get("alert_type")), "info")

    scopes = optional_str(event.get("scopes"), "scopes") or ""
    groups = [g.strip() for g in scopes.split(",") if g.strip()] or ["*"]
    monitor_id = optional_str(event.get("monitor_id"), "monitor_id")
    fingerprint = sha256_hex(canonical_json([groups, monitor_id if monitor_id else name]))

    extra: dict[str, Any] = {k: v for k, v in event.items() if k not in _HANDLED}
    extra["title"] = title
    extra["groups"] = groups
    if raw_severity is not None:
        extra["severity"] = raw_severity
    last_received = parse_time(event.get("last_updated"), epoch="ms") or parse_time(event.get("date"), epoch="ms")
    if last_received is None:  # unreadable: the time we got it, and the original kept
        last_received = ctx.received_at
        if event.get("last_updated") is not None:
            extra["last_updated"] = event["last_updated"]

    body = optional_str(event.get("body"), "body")
    graph = _GRAPH.search(body) if body else None
    return [
        Alert(
            name=name,
            status=status,
            severity=severity,
            last_received=last_received,
            fingerprint=fingerprint,
            tenant=ctx.tenant,
            provider_type=PROVIDER,
            provider_id=ctx.provider_id,
            id=non_empty_str(event.get("id"), "id"),
            environment=labels.get("env") or labels.get("environment") or "undefined",
            service=labels.get("service") or None,
            source=[PROVIDER],
            message=body,
            url=non_empty_str(event.get("url"), "url"),
            image_url=graph.group(1) if graph else None,
            labels=labels,
            extra=extra,
        )
    ]


def _tags(raw: Any) -> dict[str, str]:
    """Datadog tags: "k:v,k2:v2,bare" (the $TAGS variable), or a list of such strings, or an object."""
    if raw is None:
        return {}
    if isinstance(raw, str):
        items: list[Any] = raw.split(",")
    elif isinstance(raw, list):
        items = raw
    elif isinstance(raw, dict):
        items = [f"{k}:{v}" for k, v in raw.items() if isinstance(v, (str, int, float)) and not isinstance(v, bool)]
    else:
        raise InvalidPayload("invalid_field", f"`tags` must be a comma-separated string, got {type(raw).__name__}")
    labels = Labels()
    for item in items:
        if not isinstance(item, str):
            raise InvalidPayload("invalid_field", f"`tags` entries must be strings, got {type(item).__name__}")
        tag = item.strip()
        if not tag or tag == _MONITOR_MARKER:
            continue
        key, sep, value = tag.partition(":")
        labels.add(key.strip(), value.strip() if sep else "")
    return labels.build()


__all__ = ["normalize"]
