"""What every provider normalizer shares: its context, its error, small coercions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any


class InvalidPayload(ValueError):
    """Input that can never be processed; it goes to the DLQ with `reason`.

    `reason` is a short stable code (a metric label, a DLQ header); `detail`
    says what exactly was wrong, for the human reading the DLQ.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class NormalizeContext:
    tenant: str
    received_at: str  # ISO 8601 UTC of the source record, used where the payload has no time
    provider_id: str | None = None


def iso_from_epoch_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def require_dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidPayload("invalid_shape", f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def optional_str(value: Any, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float, bool)):
        return str(value)
    raise InvalidPayload("invalid_field", f"{what} must be a string, got {type(value).__name__}")


def string_map(value: Any, what: str) -> dict[str, str]:
    """Labels and tags: a flat map of strings; scalar values are stringified."""
    if value is None:
        return {}
    mapping = require_dict(value, what)
    out: dict[str, str] = {}
    for key, item in mapping.items():
        if isinstance(item, str):
            out[key] = item
        elif item is None:
            continue
        elif isinstance(item, (int, float, bool)):
            out[key] = str(item)
        else:
            raise InvalidPayload("invalid_field", f"{what}.{key} must be a scalar, got {type(item).__name__}")
    return out
