"""`alertstream gateway` and `alertstream apikey create|list|revoke`."""

from __future__ import annotations

import argparse
import asyncio
import sys

import asyncpg

from config.settings import Settings


def _cmd_gateway(args: argparse.Namespace, settings: Settings) -> int:
    from gateway.server import run

    return run(settings)


async def _with_conn(settings: Settings, fn):  # noqa: ANN001, ANN202
    conn = await asyncpg.connect(settings.require_database_url())
    try:
        return await fn(conn)
    finally:
        await conn.close()


def _cmd_apikey(args: argparse.Namespace, settings: Settings) -> int:
    from gateway import apikeys

    if args.apikey_command == "create":
        key_id, key = asyncio.run(_with_conn(settings, lambda c: apikeys.create_key(c, args.tenant, args.name)))
        print(f"created key {key_id} for tenant {args.tenant}; it is shown only now:", file=sys.stderr)
        print(key)
    elif args.apikey_command == "list":
        for k in asyncio.run(_with_conn(settings, lambda c: apikeys.list_keys(c, args.tenant))):
            state = f"revoked {k.revoked_at:%Y-%m-%d %H:%M}" if k.revoked_at else "active"
            print(f"{k.key_id}  {k.tenant:20} {state:24} {k.created_at:%Y-%m-%d %H:%M}  {k.name or ''}")
    else:
        if not asyncio.run(_with_conn(settings, lambda c: apikeys.revoke_key(c, args.key_id))):
            print(f"no active key {args.key_id}", file=sys.stderr)
            return 1
        print(f"revoked {args.key_id} (gateways stop taking it within ALERTSTREAM_GATEWAY_APIKEY_CACHE_TTL_S)", file=sys.stderr)
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("gateway", help="run the HTTP gateway (Keep-compatible webhooks → Kafka; docs/gateway.md)").set_defaults(func=_cmd_gateway)
    apikey = sub.add_parser("apikey", help="API keys of the gateway").add_subparsers(dest="apikey_command", required=True)
    create = apikey.add_parser("create", help="create a key for a tenant and print it (stored hashed)")
    create.add_argument("--tenant", required=True)
    create.add_argument("--name", help="a label: who or what uses the key")
    create.set_defaults(func=_cmd_apikey)
    listing = apikey.add_parser("list", help="list keys (ids, tenants, state; never the keys)")
    listing.add_argument("--tenant")
    listing.set_defaults(func=_cmd_apikey)
    revoke = apikey.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    revoke.set_defaults(func=_cmd_apikey)
