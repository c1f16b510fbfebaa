"""PagerDuty: v3 webhook subscriptions (`{"event": {...}}`) and Events API v2 events.

Fingerprints:
- v3 webhook: the incident id (`event.data.id`). Keep sends v3 payloads through
  `_format_alert_old`, which sets no fingerprint, so Keep's identity became
  sha256(title): every incident titled "CPU high" (different services,
  different days) collapsed into one alert, and a retitled incident split in
  two. The incident id is what PagerDuty itself uses for identity; every
  incident.* event of one incident (triggered, acknowledged, resolved...)
  carries it. The incident_key (the dedup key the incident was opened with)
  is kept in extra: it is reused after a resolve, so it names a series of
  incidents, not one.
- Events API v2 (`event_action` + `payload`, the body tools post to
  events.pagerduty.com, pointed here): `dedup_key`, PagerDuty's own alert
  identity. A trigger without one (PagerDuty would mint a new key) gets
  sha256 over [summary, source, component, group, class], so repeats of the
  same event stay one alert. acknowledge/resolve require a dedup_key.

v3 events whose `data` is not an incident (incident.annotated notes,
responder events, service.* events) carry no alert: they give an empty list,
as Keep drops them too.

Severity (v3): the incident's priority (P1..P5, or a severity word) when it names one, else its
urgency (high → high, low → low), else info. Priority first, on purpose (docs/decisions.md, issue
16): urgency is PagerDuty's two-valued notification switch (often set by support hours), not how
bad the incident is. Both are kept as labels.

Other choices: `lastReceived` is the event's `occurred_at` (when this state
change happened), `firingStartTime` the incident's `created_at`; `url` is the
incident's `html_url` (Keep preferred `self`, the REST API URL). Events API
v2 `routing_key` is an integration secret: it is not stored, only a short
sha256 prefix (`routing_key_sha256`) to tell integrations apart.
"""

from __future__ import annotations

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
    time_or_received,
)
from schemas.normalizers.severity import is_known_severity_word, severity_from_word

PROVIDER = "pagerduty"
_INCIDENT_STATUS = {"triggered": "firing", "acknowledged": "acknowledged", "resolved": "resolved"}
_EVENT_TYPE_STATUS = {"incident.triggered": "firing", "incident.reopened": "firing",
                      "incident.unacknowledged": "firing",
                      "incident.acknowledged": "acknowledged", "incident.resolved": "resolved"}
_URGENCY_SEVERITY = {"high": "high", "low": "low"}
_ACTION_STATUS = {"trigger": "firing", "acknowledge": "acknowledged", "resolve": "resolved"}
_V2_SEVERITY = {"critical": "critical", "error": "high", "warning": "warning", "info": "info"}
_V3_HANDLED = {"id", "title", "status", "html_url", "created_at", "service", "custom_fields", "urgency", "type"}


def normalize(payload: Any, ctx: NormalizeContext) -> list[Alert]:
    body = require_dict(payload, "webhook")
    if "event" in body:
        return _v3(require_dict(body["event"], "event"), ctx)
    if "event_action" in body:
        return [_events_v2(body, ctx)]
    if "messages" in body:
        raise InvalidPayload("unsupported_format", "PagerDuty v2 webhooks (`messages`) are end-of-life; "
                             "use a v3 webhook subscription")
    raise InvalidPayload("invalid_shape", "expected a v3 webhook (`event` object) or an Events API v2 event "
                         "(`event_action`)")


# ------------------------------------------------------------------ v3 webhook

def _v3(event: dict[str, Any], ctx: NormalizeContext) -> list[Alert]:
    data = optional_dict(event.get("data"), "event.data")
    event_type = optional_str(event.get("event_type"), "event.event_type") or ""
    kind = lower_str(data.get("type")) or lower_str(event.get("resource_type"))
    if kind != "incident":
        return []  # a note, a responder request, a service change: not an alert
    incident_id = non_empty_str(data.get("id"), "event.data.id")
    if incident_id is None:
        raise InvalidPayload("missing_field", "`event.data.id` (the incident id) is required")
    name = (non_empty_str(data.get("title"), "event.data.title")
            or non_empty_str(data.get("summary"), "event.data.summary"))
    if name is None:
        raise InvalidPayload("missing_field", "`event.data.title` is required")

    raw_status = data.get("status")
    status = _INCIDENT_STATUS.get(lower_str(raw_status)) or _EVENT_TYPE_STATUS.get(event_type, "firing")

    priority = optional_dict(data.get("priority"), "event.data.priority")
    priority_name = non_empty_str(priority.get("summary"), "event.data.priority.summary")
    urgency = optional_str(data.get("urgency"), "event.data.urgency")
    if is_known_severity_word(priority_name):
        severity = severity_from_word(priority_name)
    else:
        severity = _URGENCY_SEVERITY.get(lower_str(urgency), "info")

    service = optional_dict(data.get("service"), "event.data.service")
    environment = "undefined"
    for field in optional_list(data.get("custom_fields"), "event.data.custom_fields"):
        if isinstance(field, dict) and field.get("name") == "environment":
            environment = non_empty_str(field.get("value"), "custom_fields[environment].value") or environment

    builder = Labels()
    builder.add("urgency", urgency)
    builder.add("priority", priority_name)
    builder.add("service_id", service.get("id"))
    policy = optional_dict(data.get("escalation_policy"), "event.data.escalation_policy")
    builder.add("escalation_policy", policy.get("summary"))
    for team in optional_list(data.get("teams"), "event.data.teams"):
        if isinstance(team, dict):
            builder.add("teams", team.get("summary"))
    labels = builder.build()

    extra: dict[str, Any] = {k: v for k, v in data.items() if k not in _V3_HANDLED}
    if isinstance(raw_status, str) and raw_status.lower() not in _INCIDENT_STATUS:
        extra["status"] = raw_status
    if data.get("custom_fields"):
        extra["custom_fields"] = data["custom_fields"]
    if service:
        extra["service"] = service
    envelope = {k: v for k, v in event.items() if k != "data" and v is not None}
    if envelope:
        extra["event"] = envelope  # event id, event_type, occurred_at, agent...
    last_received = parse_time(event.get("occurred_at")) or ctx.received_at  # original is in extra.event
    firing_start = optional_time(data.get("created_at"), "created_at", extra)
    details = optional_dict(data.get("body"), "event.data.body").get("details")

    return [
        Alert(
            name=name,
            status=status,
            severity=severity,
            last_received=last_received,
            fingerprint=incident_id,
            tenant=ctx.tenant,
            provider_type=PROVIDER,
            provider_id=ctx.provider_id,
            id=incident_id,
            environment=environment,
            service=non_empty_str(service.get("summary"), "event.data.service.summary"),
            source=[PROVIDER],
            description=details if isinstance(details, str) and details else
            non_empty_str(data.get("description"), "event.data.description"),
            url=non_empty_str(data.get("html_url"), "event.data.html_url"),
            labels=labels,
            firing_start_time=firing_start,
            extra=extra,
        )
    ]


# ------------------------------------------------------------- Events API v2

def _events_v2(body: dict[str, Any], ctx: NormalizeContext) -> Alert:
    action = lower_str(body.get("event_action"))
    status = _ACTION_STATUS.get(action)
    if status is None:
        raise InvalidPayload("invalid_field", f"`event_action` must be trigger, acknowledge or resolve, "
                             f"got {body.get('event_action')!r}")
    dedup_key = non_empty_str(body.get("dedup_key"), "dedup_key")
    payload = optional_dict(body.get("payload"), "payload")
    summary = non_empty_str(payload.get("summary"), "payload.summary")
    source = non_empty_str(payload.get("source"), "payload.source")
    component = non_empty_str(payload.get("component"), "payload.component")
    group = non_empty_str(payload.get("group"), "payload.group")
    event_class = non_empty_str(payload.get("class"), "payload.class")
    if status == "firing":
        if summary is None:
            raise InvalidPayload("missing_field", "a trigger event needs `payload.summary`")
    elif dedup_key is None:
        raise InvalidPayload("missing_field", f"an {action} event needs `dedup_key`")
    name = summary or dedup_key or ""
    fingerprint = dedup_key or sha256_hex(canonical_json([summary, source, component, group, event_class]))

    raw_severity = payload.get("severity")
    severity = _V2_SEVERITY.get(lower_str(raw_severity)) or severity_from_word(raw_severity)

    details = payload.get("custom_details")
    detail_map = details if isinstance(details, dict) else {}
    builder = Labels()
    for key, value in (("source", source), ("component", component), ("group", group), ("class", event_class)):
        builder.add(key, value)
    labels = builder.build()

    extra: dict[str, Any] = {k: v for k, v in body.items() if k not in {"routing_key", "payload", "dedup_key"}}
    extra.update({k: v for k, v in payload.items() if k not in {"summary", "source", "component", "group", "class",
                                                                 "timestamp"}})
    routing_key = body.get("routing_key")
    if isinstance(routing_key, str) and routing_key:
        extra["routing_key_sha256"] = sha256_hex(routing_key.encode())[:12]
    last_received = time_or_received(payload.get("timestamp"), "timestamp", ctx, extra)

    url = non_empty_str(body.get("client_url"), "client_url")
    if url is None:
        for link in optional_list(body.get("links"), "links"):
            if isinstance(link, dict) and isinstance(link.get("href"), str) and link["href"]:
                url = link["href"]
                break
    image_url = None
    for image in optional_list(body.get("images"), "images"):
        if isinstance(image, dict) and isinstance(image.get("src"), str) and image["src"]:
            image_url = image["src"]
            break

    return Alert(
        name=name,
        status=status,
        severity=severity,
        last_received=last_received,
        fingerprint=fingerprint,
        tenant=ctx.tenant,
        provider_type=PROVIDER,
        provider_id=ctx.provider_id,
        id=dedup_key,
        environment=_scalar(detail_map.get("environment")) or _scalar(detail_map.get("env")) or "undefined",
        service=_scalar(detail_map.get("service")) or component,
        source=[PROVIDER],
        message=summary,
        url=url,
        image_url=image_url,
        labels=labels,
        extra=extra,
    )


def _scalar(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


__all__ = ["normalize"]
