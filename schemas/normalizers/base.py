"""What every provider normalizer shares: its context, its error, small coercions, and the bounds of
a record (NormalizeLimits, Budget), multi-valued labels built in linear time (Labels), the group
fields of multi-alert notifications (group_fields_per_alert), and the guard every canonical alert
passes (check_alert)."""

from __future__ import annotations

import gc
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Iterator


from schemas.alert import Alert, encode_alert_json


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
class NormalizeLimits:
    """Per-record bounds of the normalizer: what one record may cost, whatever it contains.

    Each is deterministic except the CPU budget, which is the backstop for whatever the others
    miss. Over a bound the record is refused (InvalidPayload → DLQ with the reason), never
    truncated: a partial record would be stored as if it were whole.
    """

    max_alerts_per_record: int = 10_000  # reason too_many_alerts; at most 0xFFFF (positions pack the index in 16 bits)
    max_labels_per_alert: int = 1_000  # reason over_budget
    max_depth: int = 64  # nesting of the canonical alert's JSON (extra); reason too_deep
    record_cpu_budget_ms: float = 500.0  # CPU time of one record, checked between alerts; reason over_budget
    # normalized output (its alerts' JSON bytes) of a record ≤ max_output_ratio × input bytes
    #   + output_allowance_per_alert × alerts; reason output_too_large
    max_output_ratio: float = 4.0
    output_allowance_per_alert: int = 1_024

    def __post_init__(self) -> None:
        if not 1 <= self.max_alerts_per_record <= 0xFFFF:
            raise ValueError(f"max_alerts_per_record must be in 1..65535, got {self.max_alerts_per_record}")
        if self.max_labels_per_alert < 1 or self.max_depth < 2 or self.record_cpu_budget_ms <= 0:
            raise ValueError("max_labels_per_alert ≥ 1, max_depth ≥ 2 and record_cpu_budget_ms > 0 are required")
        if self.max_output_ratio <= 0 or self.output_allowance_per_alert < 0:
            raise ValueError("max_output_ratio > 0 and output_allowance_per_alert ≥ 0 are required")


DEFAULT_LIMITS = NormalizeLimits()


# CPU time this process spent in full (generation 2) garbage collections, by the thread that ran
# them: a record is not charged for a collection of the whole heap that happened to start during it
_full_gc_cpu_s = 0.0
_full_gc_started = 0.0


def _track_full_gc(phase: str, info: dict[str, int]) -> None:
    global _full_gc_cpu_s, _full_gc_started
    if info["generation"] < 2:  # young collections are frequent and short: not worth a clock read
        return
    if phase == "start":
        _full_gc_started = time.thread_time()
    else:
        _full_gc_cpu_s += time.thread_time() - _full_gc_started


gc.callbacks.append(_track_full_gc)


@dataclass(frozen=True, slots=True)
class CpuAnchor:
    """The thread's CPU clock read once, with the wall clock beside it, for the records that follow
    on the same thread: each record's `Budget` then starts without reading the CPU clock itself (a
    system call per record: 4% of the worker's profile on the default mix). Read a new one for every
    chunk of records (`iter_process_records` does), which bounds the slack a record can gain."""

    cpu: float
    wall: float

    @classmethod
    def read(cls) -> CpuAnchor:
        return cls(time.thread_time(), time.perf_counter())


class Budget:
    """The CPU time one record may use, on the thread that normalizes it.

    Thread CPU time, not wall time: a record is judged by the work it causes, so a loaded
    machine that preempts the worker does not send honest records to the DLQ. Checked between
    alerts (every `_EVERY` of them: reading the clock costs ~0.5 µs); the work within one alert
    is linear in its size, which `max_payload_bytes` bounds.
    """

    __slots__ = ("limits", "_clock", "_deadline", "_ticks", "_gc_at_start", "_wall_deadline")
    _EVERY = 8

    def __init__(self, limits: NormalizeLimits = DEFAULT_LIMITS, clock: Callable[[], float] = time.thread_time,
                 anchor: CpuAnchor | None = None) -> None:
        self.limits = limits
        self._clock = clock
        budget_s = limits.record_cpu_budget_ms / 1000
        wall = time.perf_counter()
        if anchor is not None and clock is time.thread_time:
            # the thread used at most the wall time since the anchor's reading: the record's start is
            # taken as that bound, so the budget never shrinks, and grows only by time the thread
            # spent preempted since the anchor was read
            self._deadline = anchor.cpu + (wall - anchor.wall) + budget_s
        else:
            self._deadline = clock() + budget_s
        self._ticks = 0
        self._gc_at_start = _full_gc_cpu_s
        # a thread cannot use more CPU than wall time: until the budget has passed on the wall
        # clock (a cheap read), the thread's CPU clock (a system call) need not be read
        self._wall_deadline = wall + budget_s if clock is time.thread_time else float("-inf")

    def tick(self) -> None:
        self._ticks += 1
        if self._ticks % self._EVERY == 0:
            self.check()

    def check(self) -> None:
        if time.perf_counter() <= self._wall_deadline:
            return
        if self._clock() - (_full_gc_cpu_s - self._gc_at_start) > self._deadline:
            raise InvalidPayload("over_budget", f"normalizing the record took more than {self.limits.record_cpu_budget_ms:g} ms "
                                 f"of CPU (stopped after {self._ticks} alert steps)")


@dataclass(frozen=True, slots=True)
class NormalizeContext:
    tenant: str
    # ISO 8601 UTC of the source record, used where the payload has no time. Normalizers place it in
    # fields, never compare or transform it: the normalize stage builds a record's alerts once with a
    # slot in its place and writes each re-send's own time into the slot (pipeline/normalizer.py)
    received_at: str
    provider_id: str | None = None
    budget: Budget | None = None  # set by `normalize()` when the caller gives none
    # False: the caller checks each alert's NUL/depth itself (check_alert_document), on the JSON it
    # hashes; the normalizer stage does, to save encoding every alert once more
    check_content: bool = True


def alert_items(value: Any, ctx: NormalizeContext, what: str) -> Iterator[tuple[int, Any]]:
    """(index, item) of a provider's list of alerts, within the record's budget.

    The count is refused before any alert is read (a fixed bound, known up front); the CPU
    budget is charged per alert.
    """
    if not isinstance(value, list):
        raise InvalidPayload("invalid_field", f"{what} must be a JSON array, got {type(value).__name__}")
    budget = ctx.budget
    limit = budget.limits.max_alerts_per_record if budget else DEFAULT_LIMITS.max_alerts_per_record
    if len(value) > limit:
        raise InvalidPayload("too_many_alerts", f"{len(value)} alerts in one record > limit {limit}")
    for index, item in enumerate(value):
        if budget is not None:
            budget.tick()
        yield index, item


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
        if CANONICAL_TIME.fullmatch(text):  # already what we write (a replay, most Keep clients): as is
            return text
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


class Labels:
    """Labels built from (key, value) pairs; a repeated key is multi-valued: its distinct values
    joined with "," in arrival order (Datadog/Zabbix/Sentry tags, PagerDuty teams).

    Linear in the input: a set of the values seen per key answers "already there?" in O(1). The
    former `add_label` re-split the joined string on every repeat, so 12,000 tags of one key cost
    12,000² (9 s for a 117 KB Datadog body). A value with commas counts as present when each of
    its parts is.
    """

    __slots__ = ("_values", "_seen")

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}  # key → its one value (str), or its values (list[str])
        self._seen: dict[str, set[str]] = {}  # only for keys with more than one value

    def add(self, key: str, value: Any) -> None:
        """Add a scalar; None, objects, arrays and the empty key are skipped."""
        if value is None or isinstance(value, (dict, list)) or key == "":
            return
        text = value if isinstance(value, str) else str(value)
        current = self._values.get(key)
        if current is None:
            self._values[key] = text
            return
        seen = self._seen.get(key)
        if seen is None:  # a second value: the key becomes multi-valued
            if text == current:
                return
            seen = self._seen[key] = set(current.split(","))
            current = self._values[key] = [current]
        parts = text.split(",")
        if all(part in seen for part in parts):
            return
        current.append(text)
        seen.update(parts)

    def __contains__(self, key: object) -> bool:
        return key in self._values

    def build(self) -> dict[str, str]:
        return {key: value if type(value) is str else ",".join(value) for key, value in self._values.items()}


# ---------------------------------------------------------------- group-level fields
# Alertmanager and Grafana send many alerts in one notification, with fields of the group
# (receiver, groupKey, title, message...). Copied into every alert they multiply: a 0.29 MB
# body with a 145 KB groupKey and 5,000 alerts became 727 MB of packed records. So the first
# alert of the record carries every group field, once; the others only the small scalars
# (what a search for one alert wants: receiver, groupKey, externalURL, status...), within a
# fixed per-alert allowance. Group-sized fields (Grafana's `message`, a rendering of every
# alert) are never repeated.

GROUP_INLINE_FIELD_BYTES = 256  # a larger group field is on the first alert only
GROUP_INLINE_TOTAL_BYTES = 512  # what the group adds to each further alert, at most


def group_fields_per_alert(group: dict[str, Any], never: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The subset of `group` that every alert after the first repeats: small scalars, in order,
    until GROUP_INLINE_TOTAL_BYTES. Deterministic: the same group always gives the same subset."""
    inline: dict[str, Any] = {}
    total = 0
    for key, value in group.items():
        if key in never:
            continue
        if isinstance(value, str):
            size = len(value) if value.isascii() else len(value.encode())  # isascii() is O(1) in CPython
        elif isinstance(value, (bool, int, float)):
            size = 24
        else:
            continue  # objects and arrays can be any size: first alert only
        if size > GROUP_INLINE_FIELD_BYTES or total + len(key) + size > GROUP_INLINE_TOTAL_BYTES:
            continue
        total += len(key) + size
        inline[key] = value
    return inline


# ---------------------------------------------------------------- the canonical alert's guard

CANONICAL_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")  # what iso_utc() writes
_STRING_FIELDS = ("name", "status", "severity", "fingerprint", "tenant", "provider_type", "provider_id", "id",
                  "environment", "service", "message", "description", "url", "image_url")
_check_encode = encode_alert_json  # the JSON checked is the JSON written
# In JSON a NUL can only be written `\u0000`; one preceded by an odd number of backslashes is text
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def check_alert(alert: Alert, limits: NormalizeLimits = DEFAULT_LIMITS) -> None:
    """What every canonical alert must be before it is hashed and stored, whatever the provider did.

    - no NUL in any string, keys included, at any depth: PostgreSQL refuses it in text and jsonb,
      and a row it refuses forces a bisection of the whole batch on every retry. The raw bytes are
      checked for `\u0000` up front, but a JSON document inside a string (an SNS `Message`, Zabbix
      tags) only shows its NUL once parsed;
    - nesting at most `limits.max_depth`: deeper, the hash and the encoders recurse past
      Python's limit (RecursionError) — a document 1,000 deep did;
    - at most `limits.max_labels_per_alert` labels;
    - `lastReceived` and `firingStartTime` are ISO 8601 UTC (`...T..:..:...mmmZ`): the search
      store's date fields refuse anything else.
    """
    encode_and_check(alert, limits)


def encode_and_check(alert: Alert, limits: NormalizeLimits = DEFAULT_LIMITS) -> bytes:
    """`check_alert`, returning the alert's JSON it checked."""
    check_alert_fields(alert, limits)
    try:
        document = _check_encode(alert)
    except RecursionError:
        raise InvalidPayload("too_deep", f"extra is nested more than {limits.max_depth} levels deep") from None
    check_alert_document(alert, document, limits)
    return document


# What the normalize stage passes as `NormalizeContext.received_at` while it builds a record's alerts,
# and writes the record's own time over afterwards (pipeline/normalizer.py): as long as what iso_utc()
# writes, and not a time, so no payload's time is ever taken for it. The checks below let this very
# object through (`is`, not `==`: the same text decoded from a payload is still refused).
RECEIVED_SLOT = "[[alertstream:received]]"


def check_alert_fields(alert: Alert, limits: NormalizeLimits = DEFAULT_LIMITS) -> None:
    """The checks of `check_alert` that need no encoding: dates and the number of labels."""
    if alert.last_received is not RECEIVED_SLOT and not CANONICAL_TIME.fullmatch(alert.last_received):
        raise InvalidPayload("invalid_time", f"lastReceived {alert.last_received[:64]!r} is not ISO 8601 UTC")
    if alert.firing_start_time is not None and alert.firing_start_time is not RECEIVED_SLOT \
            and not CANONICAL_TIME.fullmatch(alert.firing_start_time):
        raise InvalidPayload("invalid_time", f"firingStartTime {alert.firing_start_time[:64]!r} is not ISO 8601 UTC")
    if len(alert.labels) > limits.max_labels_per_alert:
        raise InvalidPayload("over_budget", f"{len(alert.labels)} labels on one alert > limit {limits.max_labels_per_alert}")


def check_alert_document(alert: Alert, document: bytes, limits: NormalizeLimits = DEFAULT_LIMITS) -> None:
    """The NUL and depth checks of `check_alert`, on a JSON encoding of `alert` (every field but
    lastReceived, which `check_alert_fields` pins to a format without NUL, may be left out).

    The encoding answers "any NUL?" at C speed and bounds the depth by its bracket count; only an
    alert that fails one of the two is walked, to say where, or to measure the depth exactly. A
    walk of every alert cost a fifth of the stage's time; the stage passes the JSON it hashes.
    """
    if b"\\u0000" in document and _JSON_NUL.search(document):
        _explain_nul(alert)
    if document.count(b"[") + document.count(b"{") > limits.max_depth:  # brackets in strings count too: a bound
        _check_depth(alert.extra, limits.max_depth)


def _check_depth(extra: dict[str, Any], max_depth: int) -> None:
    stack: list[tuple[Any, int, str]] = [(extra, 1, "extra")]
    while stack:
        node, depth, where = stack.pop()
        if depth > max_depth:
            raise InvalidPayload("too_deep", f"{where[:200]} is nested more than {max_depth} levels deep")
        pairs = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in pairs:
            if isinstance(value, (dict, list)):
                stack.append((value, depth + 1, f"{where}.{str(key)[:64]}" if isinstance(node, dict) else f"{where}[{key}]"))


def _explain_nul(alert: Alert) -> None:
    """The slow path, once the encoding showed a NUL: raise saying where it is."""
    for field in _STRING_FIELDS:
        value = getattr(alert, field)
        if value is not None and "\x00" in value:
            raise _nul(field)
    if any("\x00" in value for value in alert.source):
        raise _nul("source")
    for key, value in alert.labels.items():
        if "\x00" in key or "\x00" in value:
            raise _nul(f"labels.{key[:64]}")
    stack: list[tuple[Any, str]] = [(alert.extra, "extra")]
    while stack:
        node, where = stack.pop()
        pairs = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in pairs:
            path = f"{where}.{str(key)[:64]}" if isinstance(node, dict) else f"{where}[{key}]"
            if isinstance(key, str) and "\x00" in key:
                raise _nul(f"{path} (a key)")
            if isinstance(value, str) and "\x00" in value:
                raise _nul(path)
            if isinstance(value, (dict, list)):
                stack.append((value, path))
    raise _nul("a string")  # msgspec wrote a NUL escape the walk did not find: refuse all the same


def _nul(where: str) -> InvalidPayload:
    return InvalidPayload("invalid_field", f"{where} contains a NUL character (\\u0000), which PostgreSQL cannot store")
