"""Versioned SQL migrations: applied once each, in order, under an advisory lock.

Two workers starting at once both call `migrate`; the lock makes the second
wait and then find nothing left to do. Each applied version is recorded with
the sha256 of its text: a migration file edited after it was applied is an
error (write a new version instead), not silently skipped.
"""

from __future__ import annotations

import hashlib
import logging
from importlib import resources

import asyncpg

log = logging.getLogger(__name__)

_LOCK_KEY = 0x616C657274  # "alert": any constant shared by every alertstream process


class MigrationChanged(RuntimeError):
    pass


def _checksum(sql: str) -> str:
    return hashlib.sha256(sql.encode()).hexdigest()


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
                "CREATE TABLE IF NOT EXISTS schema_migration (version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now(),"
                " checksum text)"
            )
            await conn.execute("ALTER TABLE schema_migration ADD COLUMN IF NOT EXISTS checksum text")  # tables made before checksums
            done = {r["version"]: r["checksum"] for r in await conn.fetch("SELECT version, checksum FROM schema_migration")}
            for version, sql in available_migrations():
                if version in done:
                    if done[version] is not None and done[version] != _checksum(sql):
                        raise MigrationChanged(
                            f"migration {version} changed after it was applied to this database; "
                            "put schema changes in a new version (a development database can be re-created)")
                    continue
                log.info("applying migration %s", version)
                await conn.execute(sql)
                await conn.execute("INSERT INTO schema_migration (version, checksum) VALUES ($1, $2)", version, _checksum(sql))
                applied.append(version)
        return applied
    finally:
        await conn.close()
