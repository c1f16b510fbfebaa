"""The error router: every header a failed or delayed record carries, how a failure is
classified, and the record each kind of failure becomes. Pure: no Kafka, no settings, no clock
(topic names and `now_ms` are passed in); it imports nothing from the rest of alertstream.

Stages and the gateway only send what the router built (`Routed`): a record to the dead-letter
topic, to a retry tier, or parked on the first tier. The wire format is what operators' tools
and `alertstream dlq` read (docs/operations.md, "Dead-letter queue"); a name here is a name on
the wire, so none of them changes without a migration of the records already in the topics.

Classification is one rule table per stage (`Classifier`), the way Kafka Streams configures its
exception handlers and Quix Streams its `error_callbacks`: each rule says which exceptions are
permanent (dead-letter them, with a stable reason code) and which are transient (try again: the
circuit breaker's wait, or a retry tier chosen by the attempt count, `ErrorRouter.tier_for`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

# ------------------------------------------------------------------------------------ header names

# what every input record may carry (producers, the gateway)
TENANT = "tenant"  # absent: the deployment's default tenant
PROVIDER = "provider"  # absent: DEFAULT_PROVIDER
PROVIDER_ID = "provider_id"
DEFAULT_PROVIDER = "keep"  # a record without a `provider` header is Keep's generic alert (AlertDto)

# why a record failed and where it came from (the DLQ, and retried records)
DLQ_PREFIX = "dlq_"  # every header below that starts with it describes a failure
REASON = "dlq_reason"  # a short stable code (docs/operations.md lists them)
DETAIL = "dlq_detail"  # the error message, at most DETAIL_MAX_CHARS
ERROR_CLASS = "dlq_error_class"  # a transient failure's exception class (retried records)
SOURCE_TOPIC = "dlq_topic"  # the original record's position; on a sink-rejected alert: where a replay goes
SOURCE_PARTITION = "dlq_partition"
SOURCE_OFFSET = "dlq_offset"
FIRST_FAILURE = "dlq_first_failure_ms"  # when it first failed (epoch ms), kept across retries and replays
ATTEMPTS = "dlq_attempts"  # how often it has been tried
ALERT_UID = "dlq_alert_uid"  # a sink-rejected alert's row id
REPLAYED_FROM = "dlq_replayed_from"  # set by `alertstream dlq replay`: the DLQ PARTITION@OFFSET

# delayed records (retry tiers)
RETRY_TARGET = "retry_target"  # the topic a parked or retried record goes back to
THROTTLED = "throttled_count"  # how often a record was parked for its rate (never advances dlq_attempts)

DETAIL_MAX_CHARS = 2000
# the failure's history travels with a replayed record; the rest of dlq_* describes one failure
KEPT_ON_REPLAY = (FIRST_FAILURE,)

# ----------------------------------------------------------------------------------- reason codes

EXPIRED = "expired"
INTERNAL_ERROR = "internal_error"
UNDECODABLE = "undecodable"
SINK_REJECTED = "sink_rejected"
RETRIES_EXHAUSTED = "retries_exhausted"

Headers = Mapping[str, bytes]


def header_text(headers: Headers, name: str) -> str | None:
    """A header as text (bytes that are not UTF-8 replaced), None when absent or empty."""
    value = headers.get(name)
    return value.decode(errors="replace") if value else None


def provider_of(headers: Headers) -> str:
    return header_text(headers, PROVIDER) or DEFAULT_PROVIDER


def tenant_of(headers: Headers, default_tenant: str) -> str:
    return header_text(headers, TENANT) or default_tenant


def attempts_of(headers: Headers) -> int:
    """How often the record has been tried (0: never failed; a malformed count counts as 0)."""
    try:
        return max(0, int(headers.get(ATTEMPTS) or 0))
    except ValueError:
        return 0


def retry_target_of(headers: Headers, default: str) -> str:
    """Where a parked or retried record goes back to."""
    return header_text(headers, RETRY_TARGET) or default


def error_text(exc: BaseException | str) -> str:
    return exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------------- classification


@dataclass(frozen=True, slots=True)
class Verdict:
    """A classified failure: transient (try again later) or permanent (dead-letter with `reason`)."""

    transient: bool
    reason: str  # the DLQ reason code of a permanent failure; the exception class of a transient one
    detail: str


Match = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]


@dataclass(frozen=True, slots=True)
class Rule:
    match: Match
    reason: str | Callable[[BaseException], str] | None  # None: transient
    detail: Callable[[BaseException], str] = error_text

    def matches(self, exc: BaseException) -> bool:
        if isinstance(self.match, (type, tuple)):
            return isinstance(exc, self.match)
        return bool(self.match(exc))


def permanent(match: Match, reason: str | Callable[[BaseException], str],
              detail: Callable[[BaseException], str] = error_text) -> Rule:
    """Exceptions that say the data can never be processed: dead-letter it with `reason`."""
    return Rule(match, reason, detail)


def transient(match: Match) -> Rule:
    """Exceptions that say "not now": try again (the breaker's wait, or a retry tier)."""
    return Rule(match, None)


@dataclass(frozen=True, slots=True)
class Classifier:
    """Ordered rules, the first that matches decides; no rule matches: `otherwise` (None:
    transient; a reason code: permanent with that reason)."""

    rules: tuple[Rule, ...] = ()
    otherwise: str | None = None

    def classify(self, exc: BaseException) -> Verdict:
        for rule in self.rules:
            if rule.matches(exc):
                if rule.reason is None:
                    return Verdict(True, type(exc).__name__, rule.detail(exc))
                reason = rule.reason if isinstance(rule.reason, str) else rule.reason(exc)
                return Verdict(False, reason, rule.detail(exc))
        if self.otherwise is None:
            return Verdict(True, type(exc).__name__, error_text(exc))
        return Verdict(False, self.otherwise, error_text(exc))


def sink_classifier(is_permanent: Callable[[Exception], bool]) -> Classifier:
    """A sink's failures: what the sink calls permanent (bad data) is `sink_rejected`, everything
    else (server down, timeout, deadlock) transient."""
    return Classifier((permanent(lambda exc: isinstance(exc, Exception) and is_permanent(exc), SINK_REJECTED),))


# --------------------------------------------------------------------------------------- routing


class Role(Enum):
    DEAD_LETTER = "dead_letter"  # the DLQ: nothing more is tried until an operator replays it
    RETRY = "retry"  # a retry tier: back to `retry_target` after the tier's delay


class SourceRecord(Protocol):
    """A record as consumed: what a dead letter of it needs (core.records.RawRecord is one)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]


@dataclass(frozen=True, slots=True)
class Routed:
    """A record to send: the router's whole answer. `tier` is 1..n on a retry tier, 0 for the DLQ."""

    role: Role
    topic: str
    tier: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes] = field(default_factory=dict)
    reason: str | None = None  # a dead letter's reason code (the metric label)


@dataclass(frozen=True, slots=True)
class ErrorRouter:
    """Builds every record a failure or a delay produces. `retry_topics` are the tiers in order
    (their delays are the forwarders' business)."""

    dlq_topic: str
    retry_topics: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "retry_topics", tuple(self.retry_topics))

    def tier_for(self, attempt: int) -> int | None:
        """The retry tier (1-based) of a record's `attempt`-th failure, or None: the DLQ, its
        retries are exhausted. A count below 1 is a first failure."""
        attempt = max(1, attempt)
        return attempt if attempt <= len(self.retry_topics) else None

    def dead_letter(self, record: SourceRecord, reason: str, detail: str, now_ms: int) -> Routed:
        """A record a stage cannot process: its original key, bytes and headers, plus why and
        where it came from. A replayed record that fails again keeps its first failure time and
        its attempt count."""
        headers = dict(record.headers)
        headers.update({
            REASON: reason.encode(),
            DETAIL: detail[:DETAIL_MAX_CHARS].encode(),
            SOURCE_TOPIC: record.topic.encode(),
            SOURCE_PARTITION: str(record.partition).encode(),
            SOURCE_OFFSET: str(record.offset).encode(),
            FIRST_FAILURE: record.headers.get(FIRST_FAILURE) or str(now_ms).encode(),
            ATTEMPTS: record.headers.get(ATTEMPTS) or b"1",
        })
        return Routed(Role.DEAD_LETTER, self.dlq_topic, 0, record.key, record.value or b"", headers, reason)

    def dead_letter_alert(self, *, key: bytes, value: bytes, tenant: str, uid: str, provider: str, detail: str,
                          replay_to: str, now_ms: int) -> Routed:
        """An alert a sink refused, as alertstream built it (`value`: its JSON, under the
        internal `provider`), so that a replay to `replay_to` restores it exactly."""
        headers = {
            PROVIDER: provider.encode(), TENANT: tenant.encode(),
            REASON: SINK_REJECTED.encode(), DETAIL: detail[:DETAIL_MAX_CHARS].encode(),
            SOURCE_TOPIC: replay_to.encode(), ALERT_UID: uid.encode(),
            FIRST_FAILURE: str(now_ms).encode(), ATTEMPTS: b"1",
        }
        return Routed(Role.DEAD_LETTER, self.dlq_topic, 0, key, value, headers, SINK_REJECTED)

    def retry(self, *, value: bytes, headers: Headers, source: str, partition: int, offset: int,
              error: BaseException | str, target: str, now_ms: int, key: bytes | None = None) -> Routed:
        """A record that failed transiently: to the tier of its attempt, or after the last tier to
        the DLQ (`retries_exhausted`). Its headers say what failed, where it came from (the first
        failure's position is kept), how often it was tried and where it goes back to."""
        attempt = attempts_of(headers) + 1
        out = dict(headers)
        out.update({
            ATTEMPTS: str(attempt).encode(),
            FIRST_FAILURE: headers.get(FIRST_FAILURE) or str(now_ms).encode(),
            RETRY_TARGET: target.encode(),
            SOURCE_TOPIC: headers.get(SOURCE_TOPIC) or source.encode(),
            SOURCE_PARTITION: headers.get(SOURCE_PARTITION) or str(partition).encode(),
            SOURCE_OFFSET: headers.get(SOURCE_OFFSET) or str(offset).encode(),
            ERROR_CLASS: (type(error).__name__ if isinstance(error, BaseException) else "Error").encode(),
            DETAIL: str(error)[:DETAIL_MAX_CHARS].encode(),
        })
        tier = self.tier_for(attempt)
        if tier is None:
            out[REASON] = RETRIES_EXHAUSTED.encode()
            return Routed(Role.DEAD_LETTER, self.dlq_topic, 0, key, value, out, RETRIES_EXHAUSTED)
        return Routed(Role.RETRY, self.retry_topics[tier - 1], tier, key, value, out)

    def park(self, *, key: bytes | None, value: bytes | None, headers: Headers, target: str,
             counted: bool = True) -> Routed:
        """A record over its rate: unchanged on the first tier, back to `target` after its delay.
        `dlq_attempts` is left alone, so a throttled record never walks toward the DLQ the way a
        failing one does; `counted` adds one to `throttled_count` (the worker's throttle; the
        gateway's deferral does not count)."""
        if not self.retry_topics:
            raise ValueError("no retry tier to park a record on")
        out = dict(headers)
        out[RETRY_TARGET] = target.encode()
        if counted:
            try:
                parked = int(headers.get(THROTTLED) or 0)
            except ValueError:
                parked = 0
            out[THROTTLED] = str(parked + 1).encode()
        return Routed(Role.RETRY, self.retry_topics[0], 1, key, value or b"", out)
