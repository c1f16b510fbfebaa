"""Datadog monitor webhook (the payload template Keep installs): one alert per message.

- fingerprint: Keep's, byte for byte: sha256 over `json.dumps(groups)` followed
  by `str(monitor_id)` (Keep's `get_alert_fingerprint` over FINGERPRINT_FIELDS
  ["groups", "monitor_id"]: a list field is `json.dumps`ed with Python's
  defaults, separators ", " and ": ", ensure_ascii). `groups` is Keep's too:
  `scopes.split(",")` as sent (no trimming), ["*"] when `scopes` is empty or
  missing (the monitor is not grouped). One monitor therefore gives one alert
  per group (host, service...), its Triggered/Recovered/Warn notifications share
  the fingerprint, and an identity imported from Keep (`migrate-from-keep`)
  continues. An event without a monitor_id (not from Keep's webhook template)
  hashes the name in its place: Keep hashed the groups alone and merged every
  such event of one scope.
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
- name: the title without Datadog's leading markers, all of them: the priority
  ("[P1] ") and the transition ("[Triggered on {host:a}] ", "[Recovered] ",
  "[Warn on ...]", "[No Data ...]", "[Re-Triggered ...]"...), which change with
  every notification of one monitor. Keep 0.54.2 names the alert with the whole
  $EVENT_TITLE ("[P1] [Triggered on {host:web-01}] High CPU usage"), so its name
  changes with every transition and priority; here it is stable ("High CPU
  usage"), and the full title is kept in extra.title. Brackets that are not
  markers ("[prod] ...") stay.
"""

from __future__ import annotations

import json
import re
from typing import Any

from schemas.alert import Alert
from schemas.fingerprint import sha256_hex
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
# One or more leading "[...]" markers: a priority, or a transition with an optional " on {scope}"
_TITLE_MARKERS = re.compile(
    r"^(?:\[(?:P[1-5]|(?:Re-?)?(?:Triggered|Recovered|Warn(?:ing)?|No Data|Notify|Renotify|Muted|Unmuted))"
    r"\b[^\]]*\]\s*)+", re.IGNORECASE)
_GRAPH = re.compile(r"\[!\[Metric Graph\]\((https?://[^)\s]+)\)")
_MONITOR_MARKER = "monitor"
_HANDLED = {"title", "id", "body", "url", "tags", "last_updated", "severity"}


def normalize(payload: Any, ctx: NormalizeContext) -> list[Alert]:
    event = require_dict(payload, "webhook")
    title = non_empty_str(event.get("title"), "title")
    if title is None:
        raise InvalidPayload("missing_field", "`title` is required and must be a non-empty string")
    name = title_name(title)

    labels = _tags(event.get("tags"))
    transition = lower_str(event.get("alert_transition"))
    status = _STATUS.get(transition, "firing")

    raw_severity = event.get("severity")
    if re.fullmatch(r"[Pp][1-5]", lower_str(raw_severity) or ""):
        severity = severity_from_word(raw_severity)
    else:
        severity = _ALERT_TYPE_SEVERITY.get(lower_str(event.get("alert_type")), "info")

    groups = keep_groups(optional_str(event.get("scopes"), "scopes"))
    monitor_id = optional_str(event.get("monitor_id"), "monitor_id")
    fingerprint = keep_fingerprint(groups, monitor_id if monitor_id else name)

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


def title_name(title: str) -> str:
    """The alert's name: the title without its leading priority and transition markers."""
    return _TITLE_MARKERS.sub("", title).strip() or title


def keep_groups(scopes: str | None) -> list[str]:
    """Keep's `groups`: `scopes.split(",")` as sent, ["*"] when empty (DatadogProvider._format_alert)."""
    return scopes.split(",") if scopes else ["*"]


def keep_fingerprint(groups: list[str], monitor_id: str | None) -> str:
    """Keep's Datadog fingerprint: sha256 over `json.dumps(groups)` then `str(monitor_id)`.

    BaseProvider.get_alert_fingerprint feeds each FINGERPRINT_FIELDS value to one sha256: a list
    as `json.dumps(value)` (Python's defaults: ", " and ": " separators, ensure_ascii, so the
    stdlib call below is Keep's formatting exactly), a scalar as `str(value)`, None skipped.
    """
    digest = json.dumps(groups)
    if monitor_id is not None:
        digest += str(monitor_id)
    return sha256_hex(digest.encode())


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


__all__ = ["keep_fingerprint", "keep_groups", "normalize", "title_name"]
