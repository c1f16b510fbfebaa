"""`alertstream maintain` and `alertstream migrate-from-keep`: the Postgres store's commands.

cli/main.py registers them with `add_parsers(sub)`; each handler takes (args, settings).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import datetime, timedelta, timezone

from config.settings import Settings


def _cmd_maintain(args: argparse.Namespace, settings: Settings) -> int:
    from sinks.maintenance import run_maintenance

    report = asyncio.run(run_maintenance(settings))
    print(f"maintenance: {report.summary()}", file=sys.stderr)
    return 0


def _parse_tenant_map(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        keep_id, sep, tenant = pair.partition("=")
        if not sep or not keep_id or not tenant:
            raise SystemExit(f"--tenant wants KEEP_TENANT_ID=TENANT, got {pair!r}")
        out[keep_id] = tenant
    return out


def _cmd_migrate_from_keep(args: argparse.Namespace, settings: Settings) -> int:
    from schemas.rules import load_rules
    from sinks.keep_import import import_from_keep
    from sinks.migrate import migrate

    dsn = settings.require_database_url()
    if args.all:
        since = None
    elif args.since:
        since = datetime.fromisoformat(args.since)
        since = since.replace(tzinfo=timezone.utc) if since.tzinfo is None else since
    elif settings.pg_alert_retention_days:
        today = datetime.now(timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
        since = today - timedelta(days=settings.pg_alert_retention_days)  # older partitions would be dropped
    else:
        since = None

    async def run() -> str:
        await migrate(dsn)
        report = await import_from_keep(
            args.keep_url, dsn, default_tenant=settings.default_tenant, tenant_map=_parse_tenant_map(args.tenant),
            rules=load_rules(settings.fingerprint_rules_path), since=since, include_raw=not args.no_raw,
            batch=args.batch, keep_schema=args.keep_schema)
        return report.summary()

    print(f"keep import{' since ' + since.isoformat() if since else ''}: {asyncio.run(run())}", file=sys.stderr)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sub.add_parser(
        "maintain", help="run the Postgres maintenance jobs once: partitions ahead, retention, last_alert TTL",
    ).set_defaults(func=_cmd_maintain)
    keep = sub.add_parser("migrate-from-keep",
                          help="copy Keep's alert, lastalert and alertraw tables into alertstream's (idempotent)")
    keep.add_argument("--keep-url", required=True, help="Keep's database, postgresql://user:pass@host:port/db")
    keep.add_argument("--keep-schema", help="the schema of Keep's tables, if not on the search path")
    keep.add_argument("--tenant", action="append", default=[], metavar="KEEP_ID=TENANT",
                      help="map a Keep tenant id to an alertstream tenant (repeatable); Keep's `keep` maps to "
                           "ALERTSTREAM_DEFAULT_TENANT unless given")
    keep.add_argument("--since", help="import alert/alertraw rows from this UTC date or time on "
                                      "(default: the start of the alert retention)")
    keep.add_argument("--all", action="store_true", help="import every row, ignoring the retention")
    keep.add_argument("--no-raw", action="store_true", help="skip Keep's alertraw table")
    keep.add_argument("--batch", type=int, default=5000, help="rows per read and per write transaction")
    keep.set_defaults(func=_cmd_migrate_from_keep)
