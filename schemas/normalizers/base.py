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


# ---------------------------------------------------------------- provider helpers
# Shared by the provider normalizers. Every helper either returns a value of the
# promised type or raises InvalidPayload: nothing else escapes.


def optional_dict(value: Any, what: str) -> dict[str, Any]:
    """A nested object that may be absent: None/missing → {}, a non-object → invalid_field."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidPayload("invalid_field", f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def optional_list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidPayload("invalid_field", f"{what} must be a JSON array, got {type(value).__name__}")
    return value


def non_empty_str(value: Any, what: str) -> str | None:
    """optional_str, with "" (and whitespace only) treated as absent."""
    text = optional_str(value, what)
    return text if text and text.strip() else None


def lower_str(value: Any) -> str:
    """A lower-cased, stripped string for map look-ups; "" for anything that is not a scalar."""
    if isinstance(value, str):
        return value.strip().lower()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return ""


def iso_utc(dt: datetime) -> str:
    """ISO 8601 in UTC with millisecond precision and a `Z` suffix; naive means UTC."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


_EPOCH_SCALE = {"s": 1.0, "ms": 1000.0}


def parse_time(value: Any, *, epoch: str | None = None, formats: tuple[str, ...] = ()) -> str | None:
    """A provider's time value as ISO 8601 UTC (`...Z`), or None when it cannot be read.

    Strings: ISO 8601 with any offset (`Z`, `+00:00`, `+0000`; naive means UTC),
    then each strptime `formats` (naive, read as UTC). With `epoch` ("s" or "ms"),
    numbers and numeric strings are read as Unix time in that unit.
    """
    try:
        if isinstance(value, bool) or value is None:
            return None
        if isinstance(value, (int, float)):
            if epoch is None:
                return None
            return iso_utc(datetime.fromtimestamp(value / _EPOCH_SCALE[epoch], tz=timezone.utc))
        if not isinstance(value, str):
            return None
        text = value.strip()
        if not text:
            return None
        if epoch is not None and _looks_numeric(text):
            return iso_utc(datetime.fromtimestamp(float(text) / _EPOCH_SCALE[epoch], tz=timezone.utc))
        try:
            return iso_utc(datetime.fromisoformat(text))
        except ValueError:
            pass
        for fmt in formats:
            try:
                return iso_utc(datetime.strptime(text, fmt))
            except ValueError:
                continue
        return None
    except (ValueError, OverflowError, OSError):
        return None


def _looks_numeric(text: str) -> bool:
    body = text[1:] if text[:1] in "+-" else text
    return body.replace(".", "", 1).isascii() and body.replace(".", "", 1).isdigit()


def time_or_received(value: Any, key: str, ctx: NormalizeContext, extra: dict[str, Any], **kw: Any) -> str:
    """`last_received`: the parsed time, else ctx.received_at with the unreadable original kept in extra[key]."""
    parsed = parse_time(value, **kw)
    if parsed is not None:
        return parsed
    if value is not None and value != "":
        extra[key] = value
    return ctx.received_at


def optional_time(value: Any, key: str, extra: dict[str, Any], **kw: Any) -> str | None:
    """An optional time: parsed, or None with an unreadable original kept in extra[key]."""
    parsed = parse_time(value, **kw)
    if parsed is None and value is not None and value != "":
        extra[key] = value
    return parsed


def add_label(labels: dict[str, str], key: str, value: Any) -> None:
    """Add a scalar as a label, joining repeated keys with "," (multi-valued tags)."""
    if value is None or isinstance(value, (dict, list)) or key == "":
        return
    text = value if isinstance(value, str) else str(value)
    if key in labels and labels[key] != text:
        if text not in labels[key].split(","):
            labels[key] = f"{labels[key]},{text}"
    else:
        labels[key] = text
