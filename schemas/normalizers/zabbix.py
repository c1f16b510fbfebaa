"""Zabbix: the parameters of Keep's Zabbix media type script (zabbix_provider_script.js).

- fingerprint: sha256 over [trigger id (else the event name), host]. Keep had
  no fingerprint for Zabbix, so it was sha256(name): every host firing the
  same template trigger ("High CPU utilization") collapsed into one alert,
  and one alert was counted 23,696 times (keephq/keep#4766). A template
  trigger is instantiated per host, and the problem belongs to the host, so
  the host is part of the identity. The host is `host_name` (what the script
  sends) / `hostName` (what Keep's formatter read) / `HOST.NAME` (older media
  type parameters), else `service` ({HOST.HOST}).
- `lastReceived` is "{DATE} {TIME}" = "%Y.%m.%d %H:%M:%S" in the Zabbix
  server's local time zone, which the payload does not say: it is read as
  UTC (run the Zabbix server in UTC, or compare with the received time kept
  by the pipeline). ISO 8601 is accepted too.
- `tags` is the JSON string of {EVENT.TAGSJSON}: [{"tag": k, "value": v}].
  Tags become labels (repeated tags joined with ","); a tags string that is
  not valid JSON does not lose the alert: it stays in extra with `tagsError`.
- `severity`: a name (Not classified, Information, Warning, Average, High,
  Disaster) or its number 0–5.
- status: PROBLEM → firing (acknowledged when `event_ack` is "Yes"),
  OK/RESOLVED → resolved.
- A macro Zabbix could not expand arrives as its literal text ("{HOST.NAME}"),
  or as "*UNKNOWN*": such values are treated as absent.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from schemas.alert import Alert
from schemas.fingerprint import canonical_json, sha256_hex
from schemas.normalizers.base import (
    InvalidPayload,
    NormalizeContext,
    Labels,
    lower_str,
    optional_str,
    require_dict,
    time_or_received,
)
from schemas.normalizers.severity import severity_from_word

PROVIDER = "zabbix"
_TIME_FORMATS = ("%Y.%m.%d %H:%M:%S", "%Y.%m.%d %H:%M")
_UNEXPANDED_MACRO = re.compile(r"^\{\$?[A-Z0-9_.]+(?:\.[A-Z0-9_]+)*\}$")
_SEVERITY_NUMBER = {"0": "low", "1": "info", "2": "warning", "3": "warning", "4": "high", "5": "critical"}
_STATUS = {"problem": "firing", "ok": "resolved", "resolved": "resolved", "acknowledged": "acknowledged",
           "suppressed": "suppressed"}
_UNKNOWN = "*UNKNOWN*"  # what Zabbix puts where a macro has no value
_YES = {"yes", "true", "1"}
_HOST_KEYS = ("host_name", "hostName", "HOST.NAME")
_IP_KEYS = ("host_ip", "hostIp", "HOST.IP")
_URL_KEYS = ("ZABBIX.URL", "url")
_HANDLED = {"id", "name", "ALERT.SUBJECT", "lastReceived", "message", "description", "severity", "status", "tags",
            "service"}


def normalize(payload: Any, ctx: NormalizeContext) -> list[Alert]:
    event = require_dict(payload, "webhook")
    name = _text(event, "name") or _text(event, "ALERT.SUBJECT")
    if name is None:
        raise InvalidPayload("missing_field", "`name` ({EVENT.NAME}) is required and must be a non-empty string")
    trigger_id = _text(event, "triggerId")
    host = _host(event)
    fingerprint = identity(trigger_id or name, host)

    extra: dict[str, Any] = {k: v for k, v in event.items() if k not in _HANDLED}
    labels = _tags(event.get("tags"), extra)
    if host is not None and "host" not in labels:
        labels["host"] = host
    ip = _first(event, _IP_KEYS)
    if ip is not None and "host_ip" not in labels:
        labels["host_ip"] = ip

    raw_status = _text(event, "status")
    status = _STATUS.get(lower_str(raw_status))
    if raw_status is None:  # {EVENT.VALUE}: 1 problem, 0 recovery
        status = {"1": "firing", "0": "resolved"}.get(lower_str(_text(event, "value")))
    if status is None:
        status = "firing"
        if raw_status is not None:
            extra["status"] = raw_status
    if status == "firing" and lower_str(_text(event, "event_ack")) in _YES:
        status = "acknowledged"

    raw_severity = _text(event, "severity") or _text(event, "EVENT.SEVERITY")
    severity = _SEVERITY_NUMBER.get(lower_str(raw_severity)) or severity_from_word(raw_severity, default="info")

    event_id = _text(event, "id")
    base_url = _first(event, _URL_KEYS)
    url = None
    if base_url and trigger_id and event_id:
        url = f"{base_url.rstrip('/')}/tr_events.php?triggerid={trigger_id}&eventid={event_id}"
    last_received = time_or_received(_text(event, "lastReceived"), "lastReceived", ctx, extra, formats=_TIME_FORMATS)

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
            id=event_id,
            environment=labels.get("environment") or labels.get("env") or "undefined",
            service=_text(event, "service") or host,
            source=[PROVIDER],
            message=_text(event, "message"),
            description=_text(event, "description"),
            url=url,
            labels=labels,
            extra=extra,
        )
    ]


def identity(trigger_or_name: str, host: str | None) -> str:
    """The Zabbix fingerprint: sha256 over [trigger id (else the event name), host]."""
    return sha256_hex(canonical_json([trigger_or_name, host]))


def identity_of(event: dict[str, Any]) -> str | None:
    """`identity` of a parameter set, or of Keep's stored event (Keep's formatter spreads the
    parameters into its AlertDto, so `triggerId` and `host_name`/`hostName` survive there);
    None without a name. Used by `migrate-from-keep` to carry Keep's identities over."""
    name = _text(event, "name") or _text(event, "ALERT.SUBJECT")
    if name is None:
        return None
    return identity(_text(event, "triggerId") or name, _host(event))


def _host(event: dict[str, Any]) -> str | None:
    return _first(event, _HOST_KEYS) or _text(event, "service")


def _text(event: dict[str, Any], key: str) -> str | None:
    """A string parameter; "", whitespace and unexpanded macros ("{HOST.NAME}") are absent."""
    value = optional_str(event.get(key), key)
    if value is None or _absent(value):
        return None
    return value


def _absent(value: str) -> bool:
    text = value.strip()
    return not text or text == _UNKNOWN or _UNEXPANDED_MACRO.match(text) is not None


def _first(event: dict[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = _text(event, key)
        if value is not None:
            return value
    return None


def _tags(raw: Any, extra: dict[str, Any]) -> dict[str, str]:
    """{EVENT.TAGSJSON}: '[{"tag": "k", "value": "v"}, ...]' (a parsed list is accepted too)."""
    if raw is None or (isinstance(raw, str) and _absent(raw)):
        return {}
    tags = raw
    if isinstance(raw, str):
        try:
            tags = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            extra["tags"], extra["tagsError"] = raw, f"not JSON: {exc}"
            return {}
    if not isinstance(tags, list):
        extra["tags"], extra["tagsError"] = raw, f"expected a JSON array of tags, got {type(tags).__name__}"
        return {}
    labels = Labels()
    skipped = 0
    for item in tags:
        if (isinstance(item, dict) and isinstance(item.get("tag"), str) and item["tag"]
                and not isinstance(item.get("value"), (dict, list))):
            value = item.get("value")
            labels.add(item["tag"], "" if value is None else value)
        else:
            skipped += 1
    if skipped:
        extra["tags"], extra["tagsError"] = raw, f"{skipped} tag entries are not {{tag, value}} objects"
    return labels.build()


__all__ = ["identity", "identity_of", "normalize"]
