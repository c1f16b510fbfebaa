"""`alertstream dlq list | show | replay`: the command line over streams/dlq.py."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from typing import Any

from config.settings import Settings
from core.errors import FIRST_FAILURE
from streams import dlq

REPLAY_HELP = """\
Re-produce the selected records' original key, value and headers to the topic they came from
(their dlq_topic header, normally the input topic) or to --to, once the cause is fixed: a deployed
normalizer fix, or a header corrected with --set-header/--drop-header. The failure's dlq_* headers
are removed; dlq_replayed_from (PARTITION@OFFSET in the DLQ) and dlq_attempts (one more than the
DLQ record's) are added, so a record that fails again shows where it came from and how often it was
tried. Produced with acks=all; the exit status is 1 if any record was not delivered.

Replay is at-least-once and the pipeline is idempotent: replaying a record twice is harmless (the
second copy is an exact duplicate for deduplication: no second alert row, one more sighting counted
in last_alert). Records dead-lettered after the replay started are never replayed by it. Use
--dry-run first to see what would be sent."""


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `dlq` and its subcommands on the `alertstream` subparsers."""
    selection = argparse.ArgumentParser(add_help=False)
    group = selection.add_argument_group("selection (all given filters must match)")
    group.add_argument("--reason", action="append", default=[], metavar="R",
                       help="dlq_reason, e.g. malformed_json, unknown_provider, missing_field (repeatable)")
    group.add_argument("--tenant", action="append", default=[], metavar="T", help="tenant (repeatable)")
    group.add_argument("--provider", action="append", default=[], metavar="P",
                       help="provider header; records without one are `keep` (repeatable)")
    since = group.add_mutually_exclusive_group()
    since.add_argument("--since", type=_time, metavar="TIME",
                       help="dead-lettered at or after TIME: ISO 8601 (UTC unless it has an offset) or an age (30m, 2h, 1d)")
    since.add_argument("--since-minutes", type=float, metavar="N", help="dead-lettered in the last N minutes")
    group.add_argument("--until", type=_time, metavar="TIME", help="dead-lettered before TIME (same forms as --since)")
    group.add_argument("--limit", type=int, metavar="N", help="at most N records (the first ones read)")
    group.add_argument("--idle-s", type=float, default=10.0, help=argparse.SUPPRESS)

    parser = sub.add_parser("dlq", help="list, inspect and replay dead-letter records",
                            description="The dead-letter topic (ALERTSTREAM_TOPIC_DLQ): list, inspect and replay its records.")
    commands = parser.add_subparsers(dest="dlq_command", required=True)

    listing = commands.add_parser("list", parents=[selection], help="one line per record and a count per reason",
                                  description="One line per selected record (time, DLQ partition@offset, reason, provider, "
                                              "tenant, size, source topic/partition@offset, detail), then a count per reason.")
    listing.add_argument("--json", action="store_true", help="one JSON object per line (no value); summary on stderr")
    listing.set_defaults(func=cmd_list)

    show = commands.add_parser("show", help="every header and the value of one record",
                               description="Every header and the value of one record: pretty JSON if it parses, "
                                           "else the text, else a hex dump; at most --max-bytes of it.")
    show.add_argument("position", type=_position, metavar="PARTITION:OFFSET", help="as printed by `dlq list` (2:17 or 2@17)")
    show.add_argument("--max-bytes", type=int, default=64 * 1024, help="print at most this much of the value (default 64 KiB)")
    show.set_defaults(func=cmd_show)

    replay = commands.add_parser("replay", parents=[selection], help="re-produce records to their source topic after a fix",
                                 description=REPLAY_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    replay.add_argument("--to", metavar="TOPIC", help="produce to TOPIC instead of each record's dlq_topic")
    replay.add_argument("--set-header", action="append", default=[], type=_assignment, metavar="NAME=VALUE",
                        help="replace or add a header on every replayed record, e.g. provider=prometheus (repeatable)")
    replay.add_argument("--drop-header", action="append", default=[], metavar="NAME",
                        help="remove a header from every replayed record (repeatable)")
    replay.add_argument("--dry-run", action="store_true", help="print what would be replayed; produce nothing")
    replay.set_defaults(func=cmd_replay)


# ---------------------------------------------------------------------------------- argument types


def _time(text: str) -> int:
    try:
        return dlq.parse_time(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _position(text: str) -> tuple[int, int]:
    for sep in (":", "@"):
        partition, found, offset = text.partition(sep)
        if found and partition.strip().isdigit() and offset.strip().isdigit():
            return int(partition), int(offset)
    raise argparse.ArgumentTypeError(f"expected PARTITION:OFFSET, got {text!r}")


def _assignment(text: str) -> tuple[str, str]:
    try:
        return dlq.parse_header_assignment(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def selection_from(args: argparse.Namespace, settings: Settings, *, until_cap_ms: int | None = None) -> dlq.Selection:
    since = args.since if args.since is not None else (
        dlq.minutes_ago(args.since_minutes) if args.since_minutes is not None else None)
    until = args.until
    if until_cap_ms is not None:
        until = until_cap_ms if until is None else min(until, until_cap_ms)
    if since is not None and until is not None and since >= until:
        raise SystemExit("alertstream dlq: --since must be before --until")
    if args.limit is not None and args.limit < 0:
        raise SystemExit("alertstream dlq: --limit must be 0 or more")
    return dlq.Selection(reasons=frozenset(args.reason), tenants=frozenset(args.tenant), providers=frozenset(args.provider),
                         since_ms=since, until_ms=until, limit=args.limit, default_tenant=settings.default_tenant)


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


def _describe(selection: dlq.Selection) -> str:
    parts = [f"{name}={','.join(sorted(values))}" for name, values in
             (("reason", selection.reasons), ("tenant", selection.tenants), ("provider", selection.providers)) if values]
    if selection.since_ms is not None:
        parts.append(f"since {dlq.iso(selection.since_ms)}")
    if selection.until_ms is not None:
        parts.append(f"until {dlq.iso(selection.until_ms)}")
    return " ".join(parts) or "all records"


# ---------------------------------------------------------------------------------------- commands


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    selection = selection_from(args, settings)
    counts: Counter[str] = Counter()
    rows = []
    tty = sys.stdout.isatty() and not args.json
    for record in dlq.read_selected(settings, selection, idle_s=args.idle_s):
        counts[record.reason] += 1
        if args.json:
            print(json.dumps(dlq.record_json(record, settings.default_tenant)))
        elif tty:
            rows.append(dlq.record_row(record, settings.default_tenant))
        else:
            print(format_line(dlq.record_row(record, settings.default_tenant)))
    summary = format_summary(counts, settings.topic_dlq, selection)
    if args.json:
        sys.stdout.flush()
        print(summary, file=sys.stderr)
    elif tty:
        _print_table(rows, counts, summary)
    else:
        print(summary)
    return 0


COLUMNS = ("time", "at", "reason", "provider", "tenant", "size", "source", "detail")
PLAIN_WIDTHS = {"time": 24, "at": 10, "reason": 18, "provider": 12, "tenant": 16, "size": 9, "source": 24}


def format_line(row: dict[str, str]) -> str:
    """A plain-text line of `dlq list` (not a terminal): fixed-width columns, detail last."""
    return "  ".join(f"{row[c]:<{PLAIN_WIDTHS[c]}}" if c in PLAIN_WIDTHS else row[c] for c in COLUMNS).rstrip()


def format_summary(counts: Counter[str], topic: str, selection: dlq.Selection) -> str:
    lines = [f"{sum(counts.values())} records in {topic} ({_describe(selection)})"]
    lines += [f"  {count:>8}  {reason}" for reason, count in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    return "\n".join(lines)


def _print_table(rows: list[dict[str, str]], counts: Counter[str], summary: str) -> None:
    from rich.table import Table
    from rich.text import Text

    console = _console()
    if rows:
        table = Table(*COLUMNS, header_style="bold", box=None, pad_edge=False)
        for row in rows:
            table.add_row(*(Text(row[c]) for c in COLUMNS))  # Text: never interpret a record's content as markup
        console.print(table)
    console.print(Text(summary))


def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    partition, offset = args.position
    record = dlq.fetch_one(settings, partition, offset)
    if record is None:
        print(f"no record at {partition}:{offset} in {settings.topic_dlq}", file=sys.stderr)
        return 1
    print(format_show(record, settings.default_tenant, max(0, args.max_bytes)))
    return 0


def format_show(record: dlq.DeadLetterRecord, default_tenant: str, max_bytes: int) -> str:
    lines = [f"{record.topic} {record.position}  {dlq.iso(record.timestamp_ms)}  "
             f"reason {dlq.printable(record.reason)}  tenant {dlq.one_line(record.tenant(default_tenant), 80)}  "
             f"provider {dlq.one_line(record.provider(), 80)}",
             f"key: {'(none)' if record.key is None else dlq.one_line(record.key.decode(errors='backslashreplace'), 200)}",
             "headers:"]
    width = max((len(k) for k, _ in record.headers), default=0)
    for name, value in record.headers:
        text = "(null)" if value is None else value.decode(errors="backslashreplace")
        if name == FIRST_FAILURE and text.isdigit():
            text += f"  ({dlq.iso(int(text))})"
        lines.append(f"  {dlq.one_line(name, 80):<{width}}  {dlq.one_line(text, 4000)}")
    kind, body = dlq.render_value(record.value, max_bytes)
    lines += [f"value ({kind}):", body]
    return "\n".join(lines)


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    started_ms = int(time.time() * 1000)
    # never the records that fail again during this run (they are dead-lettered after it started)
    selection = selection_from(args, settings, until_cap_ms=started_ms)
    set_headers = dict(args.set_header)
    verb = "would replay" if args.dry_run else "replaying"

    def announce(record: dlq.DeadLetterRecord, target: str, headers: list[dlq.Header]) -> None:
        if args.dry_run:
            changes = " ".join(f"{k}={v}" for k, v in set_headers.items())
            dropped = " ".join(f"-{k}" for k in args.drop_header)
            print(f"{verb} {record.position} {dlq.one_line(record.reason, 40)} "
                  f"tenant={dlq.one_line(record.tenant(settings.default_tenant), 40)} → {target}"
                  + (f"  [{' '.join(filter(None, (changes, dropped)))}]" if changes or dropped else ""))

    try:
        report = dlq.replay(settings, dlq.read_selected(settings, selection, idle_s=args.idle_s), to=args.to,
                            set_headers=set_headers, drop_headers=args.drop_header, dry_run=args.dry_run,
                            on_record=announce)
    except ValueError as exc:
        print(f"alertstream dlq replay: {exc}", file=sys.stderr)
        return 2
    print(format_replay(report, args.dry_run, selection))
    for error in report.errors:
        print(f"  failed {error}", file=sys.stderr)
    return 0 if report.ok else 1


def format_replay(report: dlq.ReplayReport, dry_run: bool, selection: dlq.Selection) -> str:
    done = sum(report.replayed.values())
    verb = "would replay" if dry_run else "replayed"
    targets = ", ".join(f"{n} → {t}" for t, n in sorted(report.targets.items())) or "nothing"
    lines = [f"{verb} {done} records ({_describe(selection)}): {targets}"]
    lines += [f"  {n:>8}  {reason}" for reason, n in sorted(report.replayed.items(), key=lambda kv: (-kv[1], kv[0]))]
    if report.failed:
        lines.append(f"FAILED {sum(report.failed.values())} records:")
        lines += [f"  {n:>8}  {reason}" for reason, n in sorted(report.failed.items(), key=lambda kv: (-kv[1], kv[0]))]
    return "\n".join(lines)
