"""The error router (core/errors.py): header names on the wire, classification, and the records
built for a dead letter, a retry and a parked record."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core import errors
from core.errors import (
    ATTEMPTS,
    DETAIL,
    ERROR_CLASS,
    FIRST_FAILURE,
    REASON,
    RETRY_TARGET,
    SOURCE_OFFSET,
    SOURCE_PARTITION,
    SOURCE_TOPIC,
    THROTTLED,
    Classifier,
    ErrorRouter,
    Role,
    permanent,
    transient,
)

ROUTER = ErrorRouter("alerts.dlq", ("alerts.retry.1", "alerts.retry.2", "alerts.retry.3"))


@dataclass
class Record:
    topic: str = "alerts"
    partition: int = 3
    offset: int = 41
    key: bytes | None = b"k"
    value: bytes | None = b"{bad"
    headers: dict[str, bytes] = field(default_factory=lambda: {"tenant": b"acme", "x-trace": b"\x00\x01"})


def test_the_header_names_are_the_wire_format() -> None:
    """Records already in the DLQ and on the retry tiers carry these names: they never change."""
    assert {name: getattr(errors, name) for name in (
        "TENANT", "PROVIDER", "PROVIDER_ID", "REASON", "DETAIL", "ERROR_CLASS", "SOURCE_TOPIC", "SOURCE_PARTITION",
        "SOURCE_OFFSET", "FIRST_FAILURE", "ATTEMPTS", "ALERT_UID", "REPLAYED_FROM", "RETRY_TARGET", "THROTTLED")} == {
        "TENANT": "tenant", "PROVIDER": "provider", "PROVIDER_ID": "provider_id", "REASON": "dlq_reason",
        "DETAIL": "dlq_detail", "ERROR_CLASS": "dlq_error_class", "SOURCE_TOPIC": "dlq_topic",
        "SOURCE_PARTITION": "dlq_partition", "SOURCE_OFFSET": "dlq_offset", "FIRST_FAILURE": "dlq_first_failure_ms",
        "ATTEMPTS": "dlq_attempts", "ALERT_UID": "dlq_alert_uid", "REPLAYED_FROM": "dlq_replayed_from",
        "RETRY_TARGET": "retry_target", "THROTTLED": "throttled_count"}
    assert errors.DEFAULT_PROVIDER == "keep"


def test_a_dead_letter_is_the_original_record_plus_why_and_where() -> None:
    record = Record()
    routed = ROUTER.dead_letter(record, "malformed_json", "x" * 5000, now_ms=1_700_000_000_123)
    assert (routed.role, routed.topic, routed.tier, routed.reason) == (Role.DEAD_LETTER, "alerts.dlq", 0, "malformed_json")
    assert (routed.key, routed.value) == (b"k", b"{bad")
    assert list(routed.headers.items()) == [
        ("tenant", b"acme"), ("x-trace", b"\x00\x01"), ("dlq_reason", b"malformed_json"), ("dlq_detail", b"x" * 2000),
        ("dlq_topic", b"alerts"), ("dlq_partition", b"3"), ("dlq_offset", b"41"),
        ("dlq_first_failure_ms", b"1700000000123"), ("dlq_attempts", b"1")]
    assert record.headers == {"tenant": b"acme", "x-trace": b"\x00\x01"}  # not mutated


def test_a_replayed_record_that_fails_again_keeps_its_history() -> None:
    record = Record(value=None, headers={FIRST_FAILURE: b"5", ATTEMPTS: b"3", "dlq_replayed_from": b"0@9"})
    routed = ROUTER.dead_letter(record, "missing_field", "no name", now_ms=99)
    assert routed.headers[FIRST_FAILURE] == b"5" and routed.headers[ATTEMPTS] == b"3"
    assert routed.headers["dlq_replayed_from"] == b"0@9" and routed.value == b""


def test_a_sink_rejected_alert_is_addressed_to_its_replay_topic() -> None:
    routed = ROUTER.dead_letter_alert(key=b"fp", value=b"{}", tenant="acme", uid="u-1", provider="alertstream",
                                      detail="postgres: DataError", replay_to="alerts", now_ms=7)
    assert routed.reason == "sink_rejected" and routed.topic == "alerts.dlq"
    assert list(routed.headers.items()) == [
        ("provider", b"alertstream"), ("tenant", b"acme"), ("dlq_reason", b"sink_rejected"),
        ("dlq_detail", b"postgres: DataError"), ("dlq_topic", b"alerts"), ("dlq_alert_uid", b"u-1"),
        ("dlq_first_failure_ms", b"7"), ("dlq_attempts", b"1")]


def test_each_retry_climbs_one_tier_then_the_dlq_keeping_the_first_failure() -> None:
    headers: dict[str, bytes] = {"tenant": b"t"}
    routes = []
    for n in range(4):
        routed = ROUTER.retry(value=b"v", headers=headers, source="alerts.stored", partition=2, offset=7,
                              error=ConnectionError("down"), target="alerts.stored", now_ms=1000 + n)
        headers = routed.headers
        routes.append((routed.role, routed.topic, routed.tier))
    assert routes == [(Role.RETRY, "alerts.retry.1", 1), (Role.RETRY, "alerts.retry.2", 2),
                      (Role.RETRY, "alerts.retry.3", 3), (Role.DEAD_LETTER, "alerts.dlq", 0)]
    assert headers[ATTEMPTS] == b"4" and headers[FIRST_FAILURE] == b"1000"
    assert headers[REASON] == b"retries_exhausted" and routed.reason == "retries_exhausted"
    assert (headers[ERROR_CLASS], headers[DETAIL], headers[RETRY_TARGET]) == (b"ConnectionError", b"down", b"alerts.stored")
    assert (headers[SOURCE_TOPIC], headers[SOURCE_PARTITION], headers[SOURCE_OFFSET]) == (b"alerts.stored", b"2", b"7")


def test_a_string_error_is_an_error_of_class_error() -> None:
    routed = ROUTER.retry(value=b"v", headers={}, source="s", partition=0, offset=0, error="throttled", target="s", now_ms=0)
    assert routed.headers[ERROR_CLASS] == b"Error" and routed.headers[DETAIL] == b"throttled"


def test_a_parked_record_goes_to_the_first_tier_and_never_counts_as_an_attempt() -> None:
    parked = ROUTER.park(key=b"k", value=b"v", headers={ATTEMPTS: b"2"}, target="alerts")
    assert (parked.role, parked.topic, parked.tier, parked.key, parked.value) == (Role.RETRY, "alerts.retry.1", 1, b"k", b"v")
    assert parked.headers == {ATTEMPTS: b"2", RETRY_TARGET: b"alerts", THROTTLED: b"1"}
    assert ROUTER.park(key=None, value=None, headers=parked.headers, target="alerts").headers[THROTTLED] == b"2"
    deferred = ROUTER.park(key=None, value=b"v", headers={"tenant": b"t"}, target="alerts.critical", counted=False)
    assert list(deferred.headers.items()) == [("tenant", b"t"), (RETRY_TARGET, b"alerts.critical")]  # the gateway's


def test_without_retry_tiers_a_retry_is_a_dead_letter_and_nothing_can_be_parked() -> None:
    router = ErrorRouter("dlq", ())
    assert router.retry(value=b"", headers={}, source="s", partition=0, offset=0, error="e", target="s", now_ms=0).topic == "dlq"
    with pytest.raises(ValueError):
        router.park(key=None, value=b"", headers={}, target="s")


@given(attempt=st.integers(min_value=-10, max_value=10_000), tiers=st.integers(min_value=0, max_value=20))
def test_any_attempt_maps_to_a_valid_tier_or_the_dlq(attempt: int, tiers: int) -> None:
    router = ErrorRouter("dlq", tuple(f"retry.{i}" for i in range(1, tiers + 1)))
    tier = router.tier_for(attempt)
    if tier is None:
        assert max(1, attempt) > tiers
    else:
        assert 1 <= tier <= tiers and tier == max(1, attempt)


@given(headers=st.dictionaries(st.text(max_size=20), st.binary(max_size=30), max_size=6),
       attempts=st.one_of(st.none(), st.binary(max_size=5)))
def test_a_retry_always_advances_the_attempt_count_by_one(headers: dict[str, bytes], attempts: bytes | None) -> None:
    if attempts is not None:
        headers[ATTEMPTS] = attempts
    routed = ROUTER.retry(value=b"v", headers=headers, source="s", partition=0, offset=0, error="e", target="s", now_ms=0)
    assert int(routed.headers[ATTEMPTS]) == errors.attempts_of(headers) + 1
    assert all(isinstance(v, bytes) for v in routed.headers.values())
    assert routed.topic in ROUTER.retry_topics + (ROUTER.dlq_topic,)


class BadData(ValueError):
    def __init__(self, code: str) -> None:
        super().__init__(f"bad: {code}")
        self.code = code


def test_classification_first_rule_wins_otherwise_decides_the_rest() -> None:
    normalizer = Classifier((permanent(BadData, lambda e: e.code, lambda e: "detail"),), otherwise=errors.INTERNAL_ERROR)
    assert normalizer.classify(BadData("missing_field")) == errors.Verdict(False, "missing_field", "detail")
    assert normalizer.classify(KeyError("x")) == errors.Verdict(False, "internal_error", "KeyError: 'x'")

    sink = errors.sink_classifier(lambda e: isinstance(e, BadData))
    assert sink.classify(BadData("x")).reason == "sink_rejected" and not sink.classify(BadData("x")).transient
    assert sink.classify(ConnectionError("down")) == errors.Verdict(True, "ConnectionError", "ConnectionError: down")

    mixed = Classifier((transient(TimeoutError), permanent(OSError, "io")))
    assert mixed.classify(TimeoutError()).transient  # a TimeoutError is an OSError: the earlier rule wins
    assert mixed.classify(FileNotFoundError()).reason == "io"


def test_header_readers() -> None:
    assert errors.provider_of({}) == "keep" and errors.provider_of({"provider": b""}) == "keep"
    assert errors.provider_of({"provider": b"zabbix"}) == "zabbix"
    assert errors.tenant_of({}, "default") == "default" and errors.tenant_of({"tenant": b"\xff"}, "d") == "\ufffd"
    assert errors.attempts_of({ATTEMPTS: b"x"}) == 0 and errors.attempts_of({ATTEMPTS: b"-3"}) == 0
    assert errors.retry_target_of({}, "alerts") == "alerts"
    assert errors.retry_target_of({RETRY_TARGET: b"alerts.stored"}, "alerts") == "alerts.stored"


def test_no_module_spells_a_failure_header_itself() -> None:
    """The router is the one place the dlq_*/retry headers are named: a string literal equal to one
    of them anywhere else in the code would be a second definition drifting from it."""
    import ast
    from pathlib import Path

    root = Path(errors.__file__).resolve().parent.parent
    names = {value for key, value in vars(errors).items()
             if key.isupper() and isinstance(value, str) and (value.startswith(errors.DLQ_PREFIX) or value in (
                 errors.RETRY_TARGET, errors.THROTTLED))}
    offenders = []
    for path in sorted(root.glob("*/**/*.py")):
        relative = path.relative_to(root)
        if relative.parts[0] in ("tests", ".venv") or relative == Path("core/errors.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)):
                text = node.value.decode(errors="replace") if isinstance(node.value, bytes) else node.value
                if text in names:
                    offenders.append(f"{relative}:{node.lineno}: {text!r}")
    assert not offenders, "header names spelled outside core/errors.py:\n" + "\n".join(offenders)
