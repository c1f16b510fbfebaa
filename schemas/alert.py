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
    """An alert as the normalize stage builds it, with what the dedup stage and the sinks need.

    `uid` is derived from the source record's position, so a replay of the
    same input produces the same row id: the sinks stay idempotent. On the
    internal topics it travels as a `PackedAlert` (`packed()`).
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

    def alert_json_bytes(self) -> bytes:
        """The alert as JSON (`encode_alert_json`), as `alert.event` stores it and the search document holds it."""
        return encode_alert_json(self.alert)

    def alert_json(self) -> str:
        return self.alert_json_bytes().decode()

    def packed(self) -> PackedAlert:
        """This alert as the internal topics carry it."""
        return PackedAlert(self.uid, self.received_at_ms, self.content_hash, AlertHead.of(self.alert),
                           encode_alert_json(self.alert), self.source_topic, self.source_partition, self.source_position)

    def normalized(self) -> NormalizedAlert:
        return self


WIRE_VERSION = 2  # the internal topics' record format: `PackedBatch` (pipeline/normalizer.py `pack`)


class AlertHead(msgspec.Struct, array_like=True, gc=False):
    """The fields of an `Alert` that the dedup stage, the row columns and the metrics read. A packed
    alert carries them beside the alert's JSON, so they are read without parsing it."""

    name: str
    status: str
    severity: str
    last_received: str  # the event time: the end-to-end latency metric (config/metrics.py)
    fingerprint: str
    tenant: str
    provider_type: str
    provider_id: str | None = None

    @classmethod
    def of(cls, a: Alert) -> AlertHead:
        return cls(a.name, a.status, a.severity, a.last_received, a.fingerprint, a.tenant, a.provider_type, a.provider_id)


class PackedAlert(msgspec.Struct, array_like=True, gc=False):
    """An alert as the internal topics carry it: its head fields, and the whole alert as JSON
    (`body`, Keep's field names), which is what the `alert` column and the search document hold. The
    dedup stage and the indexer pass the body on as bytes: on the hot path it is never parsed."""

    uid: str
    received_at_ms: int
    content_hash: str
    alert: AlertHead
    body: bytes
    source_topic: str = ""
    source_partition: int = -1
    source_position: int = -1

    def alert_json_bytes(self) -> bytes:
        return self.body

    def alert_json(self) -> str:
        return self.body.decode()

    def packed(self) -> PackedAlert:
        return self

    def normalized(self) -> NormalizedAlert:
        """The alert decoded in full (the DLQ's form of a refused alert)."""
        return NormalizedAlert(self.uid, self.received_at_ms, self.content_hash, _decode_alert_json(self.body),
                               self.source_topic, self.source_partition, self.source_position)


class PackedBatch(msgspec.Struct, array_like=True, gc=False):
    """One record of an internal topic: alerts that all belong to its partition."""

    version: int  # WIRE_VERSION
    alerts: list[PackedAlert]


class LegacyBatch(msgspec.Struct, array_like=True):
    """A record written before WIRE_VERSION 2, still read after an upgrade: `[[NormalizedAlert, ...]]`,
    each alert's fields a msgpack map."""

    alerts: list[NormalizedAlert]


# An alert's JSON, wherever it is written (the packed body, `alert.event`, the search document, the
# content hash): keys sorted at every depth, so that equal alerts are equal bytes and the content
# hash is taken from the body itself (schemas/fingerprint.py) instead of a second encoding.
encode_alert_json = msgspec.json.Encoder(order="sorted").encode
_decode_alert_json = msgspec.json.Decoder(Alert).decode


def alert_json_schema() -> dict[str, Any]:
    return msgspec.json.schema(Alert)
