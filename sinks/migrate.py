"""Versioned SQL migrations: applied once each, in order, under an advisory lock.

Two workers starting at once both call `migrate`; the lock makes the second
wait and then find nothing left to do.
"""

from __future__ import annotations

import logging
from importlib import resources

import asyncpg

log = logging.getLogger(__name__)

_LOCK_KEY = 0x616C657274  # "alert": any constant shared by every alertstream process


def available_migrations() -> list[tuple[str, str]]:
    folder = resources.files("sinks") / "migrations"
    files = sorted(p for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(p.name.removesuffix(".sql"), p.read_text()) for p in files]


async def migrate(dsn: str) -> list[str]:
    """Apply what is missing; return the versions applied by this call."""
    conn = await asyncpg.connect(dsn)
    try:
        applied: list[str] = []
        async with conn.transaction():
            # lock first: even CREATE TABLE IF NOT EXISTS races between two sessions
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migration (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migration")}
            for version, sql in available_migrations():
                if version in done:
                    continue
                log.info("applying migration %s", version)
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migration (version) VALUES ($1)", version)
                applied.append(version)
        return applied
    finally:
        await conn.close()
