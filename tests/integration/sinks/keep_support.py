"""A Keep-shaped database of its own, for the import tests: Keep's three tables, empty."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from sinks.keep_import import KEEP_SCHEMA_SQL


async def new_keep_database(admin_dsn: str, prefix: str) -> tuple[str, asyncpg.Connection]:
    """Create a database named `<prefix>_<random>` next to alertstream's, with Keep's schema; return
    its URL and an open connection to it (the caller fills it, then closes the connection)."""
    admin = await asyncpg.connect(admin_dsn)
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = urlunsplit(urlsplit(admin_dsn)._replace(path=f"/{name}"))
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(KEEP_SCHEMA_SQL)
    except BaseException:
        await conn.close()
        raise
    return url, conn
