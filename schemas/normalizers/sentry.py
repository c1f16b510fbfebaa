"""Sentry: the legacy "webhooks" plugin and the integration platform (issue alerts, issue webhooks).

Formats:
- plugin (what Keep's setup_webhook installs): top-level issue fields (`id`,
  `project`, `level`, `culprit`, `url`...) plus the triggering `event`.
- integration platform, issue alert (`action: "triggered"`, `data.event`,
  `data.triggered_rule`).
- integration platform, issue webhook (`action: created|resolved|ignored|
  archived|unresolved|assigned`, `data.issue`): the only Sentry message
  that says an issue was resolved.

Fingerprint: the Sentry issue id, which is Sentry's own grouping of events, in
all three formats, so a plugin alert, an issue alert and a "resolved" issue
webhook for one issue share the fingerprint:
- plugin: top-level `id` (as Keep);
- issue alert: `data.event.issue_id`, else the id in `data.event.issue_url`
  ("/issues/<id>/"), else sha256 over [title] (Keep's fallback, which had no
  other choice since its formatter only looked at the top-level `id`);
- issue webhook: `data.issue.id`.

Other choices: `id` is the event id (as Keep); `service` is the project slug,
not the event's `server_name` (Keep's choice, a host or pod name that changes
with every deploy; it stays in labels); `url` is the issue's web URL, not the
`url` tag (Keep's fallback, which is the failing request's URL); lastReceived
is the event's `received` time (Unix seconds).
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
    optional_dict,
    optional_list,
    optional_str,
    optional_time,
    parse_time,
    require_dict,
)
from schemas.normalizers.severity import severity_from_word

PROVIDER = "sentry"
_PROJECT_IN_URL = re.compile(r"/projects/[^/]+/([^/]+)/events/")
_ISSUE_URL_ID = re.compile(r"/issues/(\d+)(?:/|$)")
_ISSUE_ACTION_STATUS = {"created": "firing", "unresolved": "firing", "resolved": "resolved",
                        "ignored": "suppressed", "archived": "suppressed"}
_ISSUE_STATUS = {"unresolved": "firing", "resolved": "resolved", "ignored": "suppressed", "archived": "suppressed",
                 "muted": "suppressed", "reprocessing": "firing"}
_EVENT_HANDLED = {"title", "tags", "environment", "level", "received", "event_id", "web_url", "issue_url",
                  "issue_id", "culprit"}


def normalize(payload: Any, ctx: NormalizeContext) -> list[Alert]:
    body = require_dict(payload, "webhook")
    if "action" in body and "data" in body:
        data = require_dict(body["data"], "data")
        if "event" in data:
            return [_issue_alert(body, data, ctx)]
        if "issue" in data:
            return [_issue_webhook(body, data, ctx)]
        kinds = ", ".join(sorted(str(k) for k in data)) or "nothing"
        raise InvalidPayload("unsupported_format", f"Sentry integration webhook with data.{{{kinds}}}: only issue "
                             "alerts (data.event) and issue webhooks (data.issue) are alerts")
    if "event" in body or "id" in body:
        return [_plugin(body, ctx)]
    raise InvalidPayload("invalid_shape", "expected a Sentry webhooks-plugin payload (`id` + `event`) or an "
                         "integration-platform payload (`action` + `data`)")


def _plugin(body: dict[str, Any], ctx: NormalizeContext) -> Alert:
    issue_id = non_empty_str(body.get("id"), "id")
    if issue_id is None:
        raise InvalidPayload("missing_field", "`id` (the issue id) is required")
    event = optional_dict(body.get("event"), "event")
    extra = {k: v for k, v in body.items() if k not in {"id", "event", "level", "url", "culprit"}}
    project = non_empty_str(body.get("project_slug"), "project_slug") or non_empty_str(body.get("project"), "project")
    return _from_event(
        event, ctx, extra,
        fingerprint=issue_id,
        status="firing",
        title_fallback=non_empty_str(body.get("message"), "message"),
        level=body.get("level"),
        url=non_empty_str(body.get("url"), "url"),
        culprit=non_empty_str(body.get("culprit"), "culprit"),
        project=project,
    )


def _issue_alert(body: dict[str, Any], data: dict[str, Any], ctx: NormalizeContext) -> Alert:
    event = require_dict(data["event"], "data.event")
    issue_id = non_empty_str(event.get("issue_id"), "data.event.issue_id")
    if issue_id is None:
        issue_id = issue_id_in_url(optional_str(event.get("issue_url"), "data.event.issue_url"))
    title = non_empty_str(event.get("title"), "data.event.title")
    if issue_id is None and title is None:
        raise InvalidPayload("missing_field", "`data.event` has neither an issue id nor a title")
    extra: dict[str, Any] = {k: v for k, v in body.items() if k != "data"}
    extra.update({k: v for k, v in data.items() if k != "event"})  # triggered_rule, ...
    if issue_id is not None:
        extra["issue_id"] = issue_id
    action = lower_str(body.get("action"))
    return _from_event(
        event, ctx, extra,
        fingerprint=issue_id or title_identity(title or ""),
        status=_ISSUE_ACTION_STATUS.get(action, "firing"),
        title_fallback=None,
        level=None,
        url=non_empty_str(event.get("web_url"), "data.event.web_url")
        or non_empty_str(event.get("issue_url"), "data.event.issue_url"),
        culprit=None,
        project=None,
    )


def issue_id_in_url(url: str | None) -> str | None:
    """The issue id in a Sentry issue URL (".../issues/<id>/..."), or None."""
    match = _ISSUE_URL_ID.search(url) if url else None
    return match.group(1) if match else None


def title_identity(title: str) -> str:
    """The fingerprint of an issue alert without an issue id: sha256 over [title]."""
    return sha256_hex(canonical_json([title]))


def _from_event(event: dict[str, Any], ctx: NormalizeContext, extra: dict[str, Any], *, fingerprint: str,
                status: str, title_fallback: str | None, level: Any, url: str | None, culprit: str | None,
                project: str | None) -> Alert:
    labels = _tags(event.get("tags"))
    name = non_empty_str(event.get("title"), "event.title") or title_fallback
    if name is None:
        raise InvalidPayload("missing_field", "`event.title` is required")
    metadata = optional_dict(event.get("metadata"), "event.metadata")
    event_extra = {k: v for k, v in event.items() if k not in _EVENT_HANDLED
                   and not (k == "id" and v == event.get("event_id"))}
    if event_extra:
        extra["event"] = event_extra
    culprit = culprit or non_empty_str(event.get("culprit"), "event.culprit")
    if culprit:
        extra["culprit"] = culprit
    received = event.get("received") if event.get("received") is not None else event.get("timestamp")
    event_time = parse_time(received, epoch="s") or parse_time(event.get("datetime"))
    if event_time is None and received is not None:  # unreadable: the original is kept
        extra["received"] = received
    last_received = event_time or ctx.received_at  # set, never compared: the normalize stage relies on it
    level_word = level if level is not None else event.get("level", labels.get("level"))
    return Alert(
        name=name,
        status=status,
        severity=severity_from_word(level_word, default="info"),
        last_received=last_received,
        fingerprint=fingerprint,
        tenant=ctx.tenant,
        provider_type=PROVIDER,
        provider_id=ctx.provider_id,
        id=non_empty_str(event.get("event_id"), "event.event_id"),
        environment=non_empty_str(event.get("environment"), "event.environment") or labels.get("environment")
        or "undefined",
        service=project or _project_slug(event),
        source=[PROVIDER],
        message=non_empty_str(metadata.get("value"), "event.metadata.value"),
        description=culprit,
        url=url,
        labels=labels,
        extra=extra,
    )


def _project_slug(event: dict[str, Any]) -> str | None:
    """The integration platform gives the numeric project id; the slug is in the event's API `url`."""
    project = event.get("project")
    if isinstance(project, dict):
        return non_empty_str(project.get("slug"), "event.project.slug")
    url = event.get("url")
    match = _PROJECT_IN_URL.search(url) if isinstance(url, str) else None
    return match.group(1) if match else None


def _issue_webhook(body: dict[str, Any], data: dict[str, Any], ctx: NormalizeContext) -> Alert:
    issue = require_dict(data["issue"], "data.issue")
    issue_id = non_empty_str(issue.get("id"), "data.issue.id")
    if issue_id is None:
        raise InvalidPayload("missing_field", "`data.issue.id` is required")
    name = non_empty_str(issue.get("title"), "data.issue.title")
    if name is None:
        raise InvalidPayload("missing_field", "`data.issue.title` is required")
    action = lower_str(body.get("action"))
    status = _ISSUE_ACTION_STATUS.get(action) or _ISSUE_STATUS.get(lower_str(issue.get("status")), "firing")
    project = optional_dict(issue.get("project"), "data.issue.project")
    metadata = optional_dict(issue.get("metadata"), "data.issue.metadata")
    handled = {"id", "title", "level", "permalink", "firstSeen", "culprit"}
    extra: dict[str, Any] = {k: v for k, v in issue.items() if k not in handled}
    extra.update({k: v for k, v in body.items() if k != "data"})
    extra.update({k: v for k, v in data.items() if k != "issue"})
    builder = Labels()
    builder.add("level", issue.get("level"))
    builder.add("platform", issue.get("platform"))
    builder.add("short_id", issue.get("shortId"))
    labels = builder.build()
    url = non_empty_str(issue.get("permalink"), "data.issue.permalink") or non_empty_str(
        issue.get("web_url"), "data.issue.web_url")
    return Alert(
        name=name,
        status=status,
        severity=severity_from_word(issue.get("level"), default="info"),
        last_received=ctx.received_at,  # the action (resolve, ignore...) happened now; lastSeen is kept in extra
        fingerprint=issue_id,
        tenant=ctx.tenant,
        provider_type=PROVIDER,
        provider_id=ctx.provider_id,
        id=issue_id,
        service=non_empty_str(project.get("slug"), "data.issue.project.slug"),
        source=[PROVIDER],
        message=non_empty_str(metadata.get("value"), "data.issue.metadata.value"),
        description=non_empty_str(issue.get("culprit"), "data.issue.culprit"),
        url=url,
        labels=labels,
        firing_start_time=optional_time(issue.get("firstSeen"), "firstSeen", extra),
        extra=extra,
    )


def _tags(raw: Any) -> dict[str, str]:
    """Sentry event tags: [["key", "value"], ...] (or [{"key": k, "value": v}], or an object)."""
    labels = Labels()
    if isinstance(raw, dict):
        for key, value in raw.items():
            labels.add(key, value)
        return labels.build()
    for item in optional_list(raw, "event.tags"):
        if isinstance(item, list) and len(item) == 2 and isinstance(item[0], str):
            labels.add(item[0], item[1])
        elif isinstance(item, dict) and isinstance(item.get("key"), str):
            labels.add(item["key"], item.get("value"))
    return labels.build()


__all__ = ["issue_id_in_url", "normalize", "title_identity"]
