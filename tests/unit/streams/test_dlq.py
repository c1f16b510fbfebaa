"""The pure parts of `alertstream dlq`: selection, time parsing, header rewriting, end detection, output."""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone

import orjson
import pytest

from config.settings import Settings
from core.errors import ErrorRouter
from core.records import RawRecord
from streams import dlq, dlq_cli

NOW = 1_736_935_504_000  # 2025-01-15T10:05:04Z
SETTINGS = Settings(kafka_bootstrap="unused:9092", topic_dlq="alerts.dlq", topic_alerts="alerts")


def letter(reason: str = "unknown_provider", *, value: bytes = b'{"name": "x"}', headers: dict[str, bytes] | None = None,
           partition: int = 2, offset: int = 17, timestamp_ms: int = NOW, source_offset: int = 40) -> dlq.DeadLetterRecord:
    """A DLQ record exactly as the worker writes it (core.errors.ErrorRouter.dead_letter)."""
    raw = RawRecord("alerts", 1, source_offset, timestamp_ms - 5, b"key", value,
                    {"provider": b"generic-v2", "tenant": b"acme"} if headers is None else headers)
    written = ErrorRouter("alerts.dlq", ()).dead_letter(raw, reason, f"no normalizer for {reason}", timestamp_ms).headers
    return dlq.DeadLetterRecord("alerts.dlq", partition, offset, timestamp_ms, raw.key, value, list(written.items()))


# ---------------------------------------------------------------------------------------- time


@pytest.mark.parametrize(("text", "expected"), [
    ("2025-01-15T10:05:04Z", NOW),
    ("2025-01-15T10:05:04", NOW),  # no offset: UTC
    ("2025-01-15T12:05:04+02:00", NOW),
    ("2025-01-15T10:05:04.250Z", NOW + 250),
    ("2025-01-15", int(datetime(2025, 1, 15, tzinfo=timezone.utc).timestamp() * 1000)),
    ("now", NOW),
    ("30m", NOW - 30 * 60_000),
    ("2h", NOW - 2 * 3_600_000),
    ("1d", NOW - 86_400_000),
    ("1.5 h", NOW - 5_400_000),
    ("45s", NOW - 45_000),
])
def test_parse_time(text: str, expected: int) -> None:
    assert dlq.parse_time(text, now_ms=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "", "10 parsecs", "2025-13-01"])
def test_parse_time_rejects_what_it_does_not_understand(text: str) -> None:
    with pytest.raises(ValueError, match="not a time"):
        dlq.parse_time(text, now_ms=NOW)


def test_minutes_ago_and_iso() -> None:
    assert dlq.minutes_ago(15, now_ms=NOW) == NOW - 15 * 60_000
    assert dlq.iso(NOW + 7) == "2025-01-15T10:05:04.007Z"


# ------------------------------------------------------------------------------------- selection


def test_record_reads_the_dlq_headers() -> None:
    record = letter()
    assert record.reason == "unknown_provider"
    assert record.source == "alerts/1@40"
    assert record.position == "2@17"
    assert record.attempts == 1
    assert record.provider() == "generic-v2" and record.tenant("default") == "acme"
    bare = letter(headers={})
    assert bare.provider() == "keep" and bare.tenant("default") == "default"  # the normalizer's defaults


def test_headers_that_are_not_utf8_are_escaped_not_fatal() -> None:
    record = letter("invalid_header", headers={"tenant": b"\xff\xfeacme"})
    assert record.tenant("default") == "\\xff\\xfeacme"


def test_selection_filters_combine() -> None:
    records = [
        letter("unknown_provider", offset=1),
        letter("malformed_json", offset=2),
        letter("malformed_json", offset=3, headers={"tenant": b"other"}),
        letter("missing_field", offset=4, headers={}),
        letter("malformed_json", offset=5, timestamp_ms=NOW - 3_600_000),
    ]
    def offsets(**kw) -> list[int]:  # noqa: ANN003
        return [r.offset for r in dlq.select(records, dlq.Selection(**kw))]

    assert offsets() == [1, 2, 3, 4, 5]
    assert offsets(reasons=frozenset({"malformed_json"})) == [2, 3, 5]
    assert offsets(reasons=frozenset({"malformed_json"}), tenants=frozenset({"acme"})) == [2, 5]
    assert offsets(tenants=frozenset({"default"})) == [4]  # no tenant header: the default tenant
    assert offsets(providers=frozenset({"keep"})) == [3, 4]  # no provider header: keep
    assert offsets(since_ms=NOW - 60_000) == [1, 2, 3, 4]
    assert offsets(until_ms=NOW) == [5]  # until is exclusive
    assert offsets(since_ms=NOW, until_ms=NOW + 1, reasons=frozenset({"malformed_json"})) == [2, 3]
    assert offsets(limit=2) == [1, 2]
    assert offsets(limit=0) == []


def test_select_stops_reading_at_the_limit() -> None:
    read = []

    def source():  # noqa: ANN202
        for i in range(1000):
            read.append(i)
            yield letter(offset=i)

    assert len(list(dlq.select(source(), dlq.Selection(limit=3)))) == 3
    assert len(read) == 3


# ----------------------------------------------------------------------------------------- replay


def test_replay_headers_restore_the_original_and_record_the_replay() -> None:
    record = letter(headers={"provider": b"generic-v2", "tenant": b"acme", "trace": b"t1"})
    headers = dlq.replay_headers(record)
    names = [k for k, _ in headers]
    assert not {n for n in names if n.startswith("dlq_")} - {"dlq_first_failure_ms", "dlq_replayed_from", "dlq_attempts"}
    assert dict(headers) == {
        "provider": b"generic-v2", "tenant": b"acme", "trace": b"t1",
        "dlq_first_failure_ms": str(NOW).encode(),  # the history of the failure travels with it
        "dlq_replayed_from": b"2@17", "dlq_attempts": b"2",
    }


def test_replay_headers_set_and_drop() -> None:
    record = letter(headers={"provider": b"generic-v2", "tenant": b"acme", "x": b"1"})
    record.headers.append(("provider", b"again"))  # a repeated header is replaced as a whole
    headers = dlq.replay_headers(record, {"provider": "keep", "region": "eu"}, drop_headers=["x"])
    assert [v for k, v in headers if k == "provider"] == [b"keep"]
    assert dict(headers)["region"] == b"eu"
    assert "x" not in dict(headers)
    assert dict(headers)["tenant"] == b"acme"


def test_replay_headers_count_attempts_across_replays() -> None:
    record = letter()
    record.headers = [(k, b"3" if k == "dlq_attempts" else v) for k, v in record.headers]
    assert dict(dlq.replay_headers(record))["dlq_attempts"] == b"4"
    record.headers = [(k, b"garbage" if k == "dlq_attempts" else v) for k, v in record.headers]
    assert dict(dlq.replay_headers(record))["dlq_attempts"] == b"2"


@pytest.mark.parametrize(("text", "expected"), [("provider=keep", ("provider", "keep")), ("a=b=c", ("a", "b=c")), ("tenant=", ("tenant", ""))])
def test_header_assignment(text: str, expected: tuple[str, str]) -> None:
    assert dlq.parse_header_assignment(text) == expected


@pytest.mark.parametrize("text", ["provider", "=keep", "dlq_attempts=5"])
def test_header_assignment_refused(text: str) -> None:
    with pytest.raises(ValueError):
        dlq.parse_header_assignment(text)


def test_dry_run_replay_targets_the_source_topic_and_refuses_the_dlq() -> None:
    records = [letter("unknown_provider", offset=1), letter("malformed_json", offset=2), letter("malformed_json", offset=3)]
    no_source = letter("empty", offset=4)
    no_source.headers = [(k, v) for k, v in no_source.headers if k != "dlq_topic"]
    seen = []
    report = dlq.replay(SETTINGS, records + [no_source], dry_run=True, set_headers={"provider": "keep"},
                        on_record=lambda r, target, headers: seen.append((r.offset, target, dict(headers)["provider"])))
    assert seen == [(1, "alerts", b"keep"), (2, "alerts", b"keep"), (3, "alerts", b"keep")]
    assert report.replayed == {"unknown_provider": 1, "malformed_json": 2}
    assert report.targets == {"alerts": 3}
    assert report.failed == {"empty": 1} and not report.ok
    assert "pass --to" in report.errors[0]
    assert dlq.replay(SETTINGS, [no_source], dry_run=True, to="alerts.retry").targets == {"alerts.retry": 1}
    with pytest.raises(ValueError, match="dead-letter topic"):
        dlq.replay(SETTINGS, records, dry_run=True, to="alerts.dlq")


# ------------------------------------------------------------------------------------ end of read


def test_end_tracker_stops_on_eof_of_every_partition() -> None:
    t = dlq.EndTracker({0: 0, 1: 0}, {0: 5, 1: 0}, settle_s=1, idle_s=10, now=0)
    for offset in range(5):
        t.on_record(0, offset, 0.1)
    assert not t.finished(0.2)
    t.on_eof(0, 5, 0.2)
    assert not t.finished(0.2)  # partition 1 is empty, but give it its settle time or its EOF
    t.on_eof(1, 0, 0.3)
    assert t.finished(0.3)


def test_end_tracker_keeps_reading_past_an_under_reported_watermark() -> None:
    # the broker reports 11 (first offset of the last batch + 1) for 15 records
    t = dlq.EndTracker({0: 0}, {0: 11}, settle_s=1, idle_s=10, now=0)
    for offset in range(11):
        t.on_record(0, offset, 0.1)
    assert not t.finished(0.5)  # at the reported end, but records may still come
    for offset in range(11, 15):
        t.on_record(0, offset, 0.6)
    assert not t.finished(1.5)
    assert t.finished(1.7)  # quiet for settle_s at or past the reported end


def test_end_tracker_record_after_eof_reopens_the_partition_and_idle_ends_everything() -> None:
    t = dlq.EndTracker({0: 0}, {0: 100}, settle_s=1, idle_s=5, now=0)
    t.on_eof(0, 3, 1)
    t.on_record(0, 3, 1.5)
    assert not t.finished(2)  # 4 < 100 and no EOF since
    assert not t.finished(6)
    assert t.finished(6.6)  # nothing at all for idle_s


# ----------------------------------------------------------------------------------------- output


def test_printable_escapes_terminal_controls_only() -> None:
    assert dlq.printable("naïve ✓ 日本\n\tok") == "naïve ✓ 日本\n\tok"
    assert dlq.printable("\x1b[2Jred\x9b\x00") == "\\x1b[2Jred\\x9b\\x00"
    assert dlq.printable("abc\u202eevil") == "abc\\u202eevil"  # bidi override


def test_render_value_json_text_binary_and_caps() -> None:
    kind, body = dlq.render_value(b'{"name":"x","labels":{"a":"\\u001b[31m"}}', 10_000)
    assert kind.startswith("JSON") and '"name": "x"' in body and "\x1b" not in body
    kind, body = dlq.render_value(b"cut off {", 10_000)
    assert kind.startswith("text") and body == "cut off {"
    kind, body = dlq.render_value(b"\xff\xfe\x1b[31m", 10_000)
    assert kind.startswith("not UTF-8") and "ff fe 1b 5b" in body and "\x1b" not in body
    big = orjson.dumps({"blob": "é" * 5_000_000})  # 10 MB, multi-byte characters
    started = time.monotonic()
    kind, body = dlq.render_value(big, 1000)
    assert time.monotonic() - started < 5
    assert len(body) < 1200 and "truncated: showed 1000 of" in body
    kind, body = dlq.render_value(b"\xff" * 10_000_000, 64 * 1024)
    assert body.count("\n") < 300 and "more bytes not shown" in body


def test_list_row_and_line() -> None:
    record = letter("unknown_provider", value=b"x" * 2048)
    row = dlq.record_row(record, "default")
    assert row == {"time": "2025-01-15T10:05:04.000Z", "at": "2@17", "reason": "unknown_provider", "provider": "generic-v2",
                   "tenant": "acme", "size": "2.0 KB", "source": "alerts/1@40", "detail": "no normalizer for unknown_provider"}
    line = dlq_cli.format_line(row)
    assert line.startswith("2025-01-15T10:05:04.000Z  2@17") and line.endswith("no normalizer for unknown_provider")
    long = letter("malformed_json")
    long.headers.append(("dlq_detail", b"line one\nline two " + b"y" * 500))
    assert len(dlq.record_row(long, "default")["detail"]) == 60 and "\n" not in dlq.record_row(long, "default")["detail"]


def test_json_row_has_every_header_and_no_value() -> None:
    item = dlq.record_json(letter(), "default")
    assert item["source"] == {"topic": "alerts", "partition": 1, "offset": 40}
    assert ["dlq_reason", "unknown_provider"] in item["headers"]
    assert "value" not in item and item["size"] == len(b'{"name": "x"}')


def test_show_prints_every_header_and_the_value() -> None:
    text = dlq_cli.format_show(letter(), "default", 64 * 1024)
    for name in ("provider", "tenant", "dlq_reason", "dlq_detail", "dlq_topic", "dlq_partition", "dlq_offset",
                 "dlq_first_failure_ms", "dlq_attempts"):
        assert f"\n  {name} " in text
    assert "2025-01-15T10:05:04.000Z" in text and '"name": "x"' in text


def test_summary_counts_by_reason() -> None:
    from collections import Counter

    text = dlq_cli.format_summary(Counter({"malformed_json": 3, "unknown_provider": 1}), "alerts.dlq",
                                  dlq.Selection(reasons=frozenset({"malformed_json", "unknown_provider"})))
    assert text.splitlines() == ["4 records in alerts.dlq (reason=malformed_json,unknown_provider)",
                                 "         3  malformed_json", "         1  unknown_provider"]


# ------------------------------------------------------------------------------------ command line


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="alertstream")
    dlq_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["dlq", *argv])


def test_cli_parses_selections() -> None:
    args = parse("list", "--reason", "a", "--reason", "b", "--tenant", "t", "--since", "2025-01-15T10:05:04Z", "--limit", "5")
    selection = dlq_cli.selection_from(args, SETTINGS)
    assert selection.reasons == {"a", "b"} and selection.tenants == {"t"} and selection.limit == 5
    assert selection.since_ms == NOW and selection.until_ms is None
    args = parse("list", "--since-minutes", "10")
    assert abs(dlq_cli.selection_from(args, SETTINGS).since_ms - (time.time() * 1000 - 600_000)) < 5_000
    with pytest.raises(SystemExit):
        parse("list", "--since", "1h", "--since-minutes", "5")
    with pytest.raises(SystemExit):
        dlq_cli.selection_from(parse("list", "--since", "1h", "--until", "2h"), SETTINGS)


def test_cli_replay_caps_until_at_its_start() -> None:
    args = parse("replay", "--set-header", "provider=keep", "--dry-run")
    assert args.set_header == [("provider", "keep")] and args.dry_run
    assert dlq_cli.selection_from(args, SETTINGS, until_cap_ms=NOW).until_ms == NOW
    with pytest.raises(SystemExit):
        parse("replay", "--set-header", "dlq_reason=x")


@pytest.mark.parametrize(("text", "expected"), [("2:17", (2, 17)), ("2@17", (2, 17))])
def test_cli_show_position(text: str, expected: tuple[int, int]) -> None:
    assert parse("show", text).position == expected


def test_cli_show_position_refused() -> None:
    with pytest.raises(SystemExit):
        parse("show", "alerts.dlq")
