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

    def alert_json(self) -> str:
        """The alert as JSON, as `alert.alert` stores it."""
        return _encode_json(self.alert).decode()

    def normalized(self) -> NormalizedAlert:
        return self


class NormalizedBatch(msgspec.Struct, array_like=True):
    """One record of the internal topic: alerts that all belong to its partition."""

    alerts: list[NormalizedAlert]


class AlertHead(msgspec.Struct, rename="camel", kw_only=True, gc=False):
    """The fields of an `Alert` the dedup stage, the row columns and its metrics read, decoded alone."""

    name: str
    status: str = "firing"
    severity: str = "info"
    last_received: str  # the event time: the end-to-end latency metric (config/metrics.py)
    fingerprint: str = ""
    tenant: str = "default"
    provider_type: str = DEFAULT_PROVIDER
    provider_id: str | None = None


class PackedAlert(msgspec.Struct, array_like=True, gc=False):
    """A `NormalizedAlert` as it travels (the same array), its alert left encoded (msgpack of an `Alert`)."""

    uid: str
    received_at_ms: int
    content_hash: str
    body: msgspec.Raw
    source_topic: str = ""
    source_partition: int = -1
    source_position: int = -1


class PackedBatch(msgspec.Struct, array_like=True, gc=False):
    """A record of the internal topic read this way: `NormalizedBatch` with every alert left encoded."""

    alerts: list[PackedAlert]


_encode_json = msgspec.json.Encoder().encode
_decode_head = msgspec.msgpack.Decoder(AlertHead).decode
_decode_alert = msgspec.msgpack.Decoder(Alert).decode
_decode_any = msgspec.msgpack.Decoder().decode


class SeenAlert:
    """An alert as the dedup stage reads it: `alert` holds the head fields, the rest stays encoded
    until a stored row needs it. Most sightings are duplicates and are never decoded further; the
    same attributes as a `NormalizedAlert` for what the stage and the Postgres rows read."""

    __slots__ = ("packed", "alert")

    def __init__(self, packed: PackedAlert) -> None:
        self.packed = packed
        self.alert = _decode_head(packed.body)

    @property
    def uid(self) -> str:
        return self.packed.uid

    @property
    def received_at_ms(self) -> int:
        return self.packed.received_at_ms

    @property
    def content_hash(self) -> str:
        return self.packed.content_hash

    @property
    def source_topic(self) -> str:
        return self.packed.source_topic

    @property
    def source_partition(self) -> int:
        return self.packed.source_partition

    @property
    def source_position(self) -> int:
        return self.packed.source_position

    def alert_json(self) -> str:
        """The alert as JSON: the same keys, order and values as `NormalizedAlert.alert_json`."""
        return _encode_json(_decode_any(self.packed.body)).decode()

    def normalized(self) -> NormalizedAlert:
        p = self.packed
        return NormalizedAlert(p.uid, p.received_at_ms, p.content_hash, _decode_alert(p.body),
                               p.source_topic, p.source_partition, p.source_position)

    def __repr__(self) -> str:
        return f"SeenAlert({self.uid!r}, {self.alert.tenant!r}, {self.alert.fingerprint!r})"


def alert_json_schema() -> dict[str, Any]:
    return msgspec.json.schema(Alert)
