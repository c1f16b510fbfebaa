"""Amazon CloudWatch alarms delivered by SNS to an HTTP(S) subscription.

The SNS envelope (`Type`, `Message`, `TopicArn`...) carries the alarm as a JSON
*string* in `Message`. With SNS raw message delivery the body is the alarm
itself; both are accepted.

- `Type=SubscriptionConfirmation`: Keep's worker did an outbound GET of
  `SubscribeURL` to confirm. alertstream never makes a request from the
  ingest path (an attacker-supplied URL would make it an SSRF relay); the
  message is rejected with reason `sns_subscription_confirmation`, and the
  DLQ entry names the TopicArn and the SubscribeURL so that an operator can
  confirm the subscription by hand. `UnsubscribeConfirmation` is rejected the
  same way (`sns_unsubscribe_confirmation`).
- fingerprint: sha256 over [AlarmName, AWS account id, region]. An alarm name
  is unique only within one account and region, and the same IaC-stamped
  alarm ("prod-api-5xx") usually exists in several accounts and regions; Keep's
  sha256(AlarmName) merged them into one alert, so an OK from eu-west-1
  resolved the ALARM of us-east-1. The account and the region code come from
  the `AlarmArn` (then `AWSAccountId` / the TopicArn, then the `Region`
  display name) — the same triple AWS uses to identify an alarm.
- status: ALARM → firing, OK → resolved, INSUFFICIENT_DATA → pending.
- `StateChangeTime` ("2025-01-15T10:05:04.512+0000") is the alarm's
  lastReceived, and its firingStartTime when the new state is ALARM.
- severity: CloudWatch alarms have none; Keep always said info. Here it is
  info unless the alarm name or description carries an explicit marker:
  "severity: high" / "severity=critical", "sev1".."sev5", or "P1".."P5" as a
  word. No guessing from ordinary words ("...-5xx-high" stays info).
- The envelope's Signature/SigningCertURL/UnsubscribeURL are not stored: the
  signature is only good for verification at the edge, and the
  UnsubscribeURL lets anyone who reads it cancel the subscription.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import orjson

from schemas.alert import Alert
from schemas.fingerprint import canonical_json, sha256_hex
from schemas.normalizers.base import (
    InvalidPayload,
    NormalizeContext,
    Labels,
    non_empty_str,
    optional_dict,
    optional_list,
    optional_str,
    require_dict,
    time_or_received,
)
from schemas.normalizers.severity import is_known_severity_word, severity_from_word

PROVIDER = "cloudwatch"
_STATUS = {"ALARM": "firing", "OK": "resolved", "INSUFFICIENT_DATA": "pending"}
_SEVERITY_MARKER = re.compile(
    r"(?:\b(?:severity|sev|priority)\s*[:=]\s*([a-z0-9_]+))|(?:\b(sev[1-5]|p[1-5])\b)", re.IGNORECASE)
_SEV_NUMBER = {"sev1": "critical", "sev2": "high", "sev3": "warning", "sev4": "info", "sev5": "low"}
_ENVELOPE_DROPPED = {"Message", "Type", "Signature", "SignatureVersion", "SigningCertURL", "UnsubscribeURL"}
_ALARM_HANDLED = {"AlarmName", "AlarmDescription", "NewStateValue", "NewStateReason", "StateChangeTime"}


def normalize(payload: Any, ctx: NormalizeContext) -> list[Alert]:
    body = require_dict(payload, "webhook")
    kind = body.get("Type")
    envelope: dict[str, Any] = {}
    if kind is None and "AlarmName" in body:
        alarm = body  # SNS raw message delivery: the body is the alarm
    elif kind == "Notification":
        alarm = _message(body.get("Message"))
        envelope = {k: v for k, v in body.items() if k not in _ENVELOPE_DROPPED}
    elif kind == "SubscriptionConfirmation":
        raise InvalidPayload("sns_subscription_confirmation", _confirmation_detail(body, "subscription to"))
    elif kind == "UnsubscribeConfirmation":
        raise InvalidPayload("sns_unsubscribe_confirmation", _confirmation_detail(body, "unsubscribe from"))
    elif kind is None:
        raise InvalidPayload("missing_field", "neither an SNS message (`Type`) nor a CloudWatch alarm (`AlarmName`)")
    else:
        raise InvalidPayload("invalid_field", f"SNS `Type` must be Notification, got {kind!r}")
    return [_alarm(alarm, envelope, ctx)]


def _confirmation_detail(body: dict[str, Any], what: str) -> str:
    topic = body.get("TopicArn")
    url = body.get("SubscribeURL")
    return (f"SNS {what} topic TopicArn={topic!r}; never confirmed automatically (no outbound request is made "
            f"from ingest). To confirm, an operator opens SubscribeURL={url!r}")


def _message(raw: Any) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidPayload("missing_field", "SNS `Message` (the alarm JSON string) is missing or empty")
    try:
        alarm = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidPayload("invalid_field", f"SNS `Message` is not JSON, so not a CloudWatch alarm: {exc}") from None
    if not isinstance(alarm, dict):
        raise InvalidPayload("invalid_field", f"SNS `Message` must hold a JSON object, got {type(alarm).__name__}")
    return alarm


def _arn_parts(arn: Any) -> tuple[str | None, str | None, str | None]:
    """(partition, region, account) of an ARN, each None when absent."""
    if not isinstance(arn, str):
        return None, None, None
    parts = arn.split(":")
    if len(parts) < 6 or parts[0] != "arn":
        return None, None, None
    return parts[1] or None, parts[3] or None, parts[4] or None


def identity(name: str, account: str | None, region: str | None) -> str:
    """The CloudWatch fingerprint: sha256 over [AlarmName, account id, region]."""
    return sha256_hex(canonical_json([name, account, region]))


def identity_of(alarm: dict[str, Any], topic_arn: Any = None) -> str | None:
    """`identity` of an alarm (or of Keep's stored event: Keep's formatter spreads the alarm into
    its AlertDto, so AlarmName/AlarmArn/AWSAccountId/Region survive there); None without a name.
    Used by `migrate-from-keep` to carry Keep's identities over."""
    name = non_empty_str(alarm.get("AlarmName"), "AlarmName")
    if name is None:
        return None
    return identity(name, *_account_and_region(alarm, topic_arn))


def _account_and_region(alarm: dict[str, Any], topic_arn: Any) -> tuple[str | None, str | None]:
    """The alarm's account and region: from its AlarmArn, then AWSAccountId / the topic's ARN,
    then the `Region` display name."""
    _, arn_region, arn_account = _arn_parts(alarm.get("AlarmArn"))
    _, topic_region, topic_account = _arn_parts(topic_arn)
    account = arn_account or non_empty_str(alarm.get("AWSAccountId"), "AWSAccountId") or topic_account
    region = arn_region or topic_region or non_empty_str(alarm.get("Region"), "Region")
    return account, region


def _alarm(alarm: dict[str, Any], envelope: dict[str, Any], ctx: NormalizeContext) -> Alert:
    name = non_empty_str(alarm.get("AlarmName"), "AlarmName")
    if name is None:
        raise InvalidPayload("missing_field", "`AlarmName` is required")
    state = optional_str(alarm.get("NewStateValue"), "NewStateValue")
    if state is None:
        raise InvalidPayload("missing_field", "`NewStateValue` is required")
    status = _STATUS.get(state.strip().upper())
    if status is None:
        raise InvalidPayload("invalid_field", f"`NewStateValue` must be ALARM, OK or INSUFFICIENT_DATA, got {state!r}")

    partition, arn_region, _ = _arn_parts(alarm.get("AlarmArn"))
    account, region = _account_and_region(alarm, envelope.get("TopicArn"))
    fingerprint = identity(name, account, region)

    description = non_empty_str(alarm.get("AlarmDescription"), "AlarmDescription")
    trigger = optional_dict(alarm.get("Trigger"), "Trigger")
    builder = Labels()
    builder.add("account", account)
    builder.add("region", region)
    builder.add("namespace", trigger.get("Namespace"))
    builder.add("metric_name", trigger.get("MetricName"))
    for dim in optional_list(trigger.get("Dimensions"), "Trigger.Dimensions"):
        if isinstance(dim, dict) and isinstance(dim.get("name"), str) and dim["name"] not in builder:
            builder.add(dim["name"], dim.get("value"))
    labels = builder.build()

    extra: dict[str, Any] = {k: v for k, v in alarm.items() if k not in _ALARM_HANDLED}
    if envelope:
        extra["sns"] = envelope
    last_received = time_or_received(alarm.get("StateChangeTime"), "StateChangeTime", ctx, extra)
    url = None
    if partition == "aws" and arn_region:
        url = (f"https://{arn_region}.console.aws.amazon.com/cloudwatch/home?region={arn_region}"
               f"#alarmsV2:alarm/{quote(name, safe='')}")

    return Alert(
        name=name,
        status=status,
        severity=_severity(name, description),
        last_received=last_received,
        fingerprint=fingerprint,
        tenant=ctx.tenant,
        provider_type=PROVIDER,
        provider_id=ctx.provider_id,
        id=non_empty_str(alarm.get("AlarmArn"), "AlarmArn"),
        source=[PROVIDER],
        message=non_empty_str(alarm.get("NewStateReason"), "NewStateReason"),
        description=description,
        url=url,
        labels=labels,
        firing_start_time=last_received if status == "firing" and "StateChangeTime" not in extra else None,
        extra=extra,
    )


def _severity(name: str, description: str | None) -> str:
    for text in (name, description or ""):
        for match in _SEVERITY_MARKER.finditer(text):
            word = (match.group(1) or match.group(2)).lower()
            if word in _SEV_NUMBER:
                return _SEV_NUMBER[word]
            if is_known_severity_word(word):
                return severity_from_word(word)
    return "info"


__all__ = ["identity", "identity_of", "normalize"]
