"""The canonical alert: one record shape for every provider.

Field names on the wire are Keep's AlertDto names (camelCase), so that Keep's
users and tools read alertstream's records unchanged. Fields Keep's model does
not name go in `extra`, never dropped.
"""

from __future__ import annotations

from typing import Any

import msgspec

from core.errors import DEFAULT_PROVIDER

SCHEMA_VERSION = 1

STATUSES = ("firing", "resolved", "acknowledged", "suppressed", "pending")
SEVERITIES = ("critical", "high", "warning", "info", "low")


class Alert(msgspec.Struct, rename="camel", kw_only=True):
    """One alert after normalization (Keep's AlertDto, plus tenant and version)."""

    name: str
    status: str = "firing"
    severity: str = "info"
    last_received: str  # ISO 8601, UTC
    fingerprint: str = ""  # filled by the fingerprinter when the normalizer leaves it empty
    tenant: str = "default"
    provider_type: str = DEFAULT_PROVIDER
    provider_id: str | None = None
    id: str | None = None  # the provider's own alert id, as Keep's AlertDto.id
    environment: str = "undefined"
    service: str | None = None
    source: list[str] = msgspec.field(default_factory=list)
    message: str | None = None
    description: str | None = None
    url: str | None = None
    image_url: str | None = None
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    firing_start_time: str | None = None
    extra: dict[str, Any] = msgspec.field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION


class NormalizedAlert(msgspec.Struct, array_like=True):
    """An alert on the internal topic, with what the dedup stage and the sinks need.

    `uid` is derived from the source record's position, so a replay of the
    same input produces the same row id: the sinks stay idempotent.
    """

    uid: str
    received_at_ms: int  # the source record's Kafka timestamp
    content_hash: str
    alert: Alert
    # where the sighting entered alertstream: `last_alert` counts each source position once, however
    # often a crash makes the normalize stage send it again (docs/operations.md, exact counts)
    source_topic: str = ""
    source_partition: int = -1
    source_position: int = -1  # the record's offset << 16 | the alert's index in it


class NormalizedBatch(msgspec.Struct, array_like=True):
    """One record of the internal topic: alerts that all belong to its partition."""

    alerts: list[NormalizedAlert]


def alert_json_schema() -> dict[str, Any]:
    return msgspec.json.schema(Alert)
