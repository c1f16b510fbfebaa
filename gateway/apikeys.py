"""API keys: created, listed and revoked in Postgres, stored as sha256 only.

A key is `as_<key_id>_<secret>`: `key_id` (public, 12 hex) names the key in
listings and revocations; the secret is 32 random bytes (256 bits), so a plain
sha256 is enough: there is nothing to brute-force, unlike a password, and a
lookup by hash is one index probe. The gateway compares by hash only and caches
lookups for `ttl_s` (a revoked key stops working at most that long after); keys that
authenticated and keys that did not are cached apart (see KeyStore).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

import asyncpg

log = logging.getLogger(__name__)

KEY_PREFIX = "as_"
_KEY_SHAPE = re.compile(r"^as_[0-9a-f]{12}_[A-Za-z0-9_-]{43}$")


class KeyStoreUnavailable(RuntimeError):
    """Postgres cannot be asked and the key is not in the cache (not even a stale entry)."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    key_id: str
    tenant: str
    name: str | None
    created_at: datetime
    revoked_at: datetime | None


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def new_key() -> tuple[str, str]:
    """(key_id, full key). Only the caller ever sees the full key."""
    key_id = secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def looks_like_key(key: str) -> bool:
    # rejects garbage before it costs a database round trip or a cache slot
    return bool(_KEY_SHAPE.match(key))


async def create_key(conn: asyncpg.Connection, tenant: str, name: str | None = None) -> tuple[str, str]:
    if not tenant or "\x00" in tenant:
        raise ValueError("tenant must be a non-empty string without NUL")
    key_id, key = new_key()
    await conn.execute("INSERT INTO api_key (key_id, tenant, name, key_sha256) VALUES ($1, $2, $3, $4)",
                       key_id, tenant, name, key_hash(key))
    return key_id, key


async def list_keys(conn: asyncpg.Connection, tenant: str | None = None) -> list[KeyInfo]:
    rows = await conn.fetch(
        "SELECT key_id, tenant, name, created_at, revoked_at FROM api_key"
        " WHERE $1::text IS NULL OR tenant = $1 ORDER BY tenant, created_at", tenant)
    return [KeyInfo(**dict(r)) for r in rows]


async def revoke_key(conn: asyncpg.Connection, key_id: str) -> bool:
    status = await conn.execute("UPDATE api_key SET revoked_at = now() WHERE key_id = $1 AND revoked_at IS NULL", key_id)
    return status.endswith(" 1")


@dataclass(frozen=True, slots=True)
class Cached:
    """What the cache knows of a key, without asking Postgres."""

    known: bool  # an entry exists (fresh or not)
    fresh: bool  # within its TTL: the answer stands
    tenant: str | None  # None: unknown or revoked (a negative entry), or no entry


class KeyStore:
    """Key → tenant, from Postgres, with two bounded TTL caches.

    Keys that authenticated are kept in one LRU (`max_entries`); keys Postgres did not know in another
    (`max_negative_entries`), so a flood of random keys can evict only other unknown keys, never a
    sender's valid one. While Postgres is unreachable an expired valid entry is still used: ingestion
    goes on for every key seen recently (a revocation then waits for Postgres); an unknown key gets
    KeyStoreUnavailable. Who may cause a lookup at all is decided before (gateway/ratelimit.py AuthGuard).
    """

    READY_CACHE_S = 5.0  # /readyz asks Postgres at most this often, however often it is called

    def __init__(self, pool: asyncpg.Pool | None, *, ttl_s: float = 30.0, max_entries: int = 10_000,
                 max_negative_entries: int = 10_000) -> None:
        self._pool = pool
        self._ttl_s = ttl_s
        self._max = max_entries
        self._max_negative = max_negative_entries
        self._cache: OrderedDict[bytes, tuple[float, str]] = OrderedDict()  # authenticated keys only
        self._negative: OrderedDict[bytes, float] = OrderedDict()  # unknown or revoked keys: expiry
        self._ready: tuple[float, bool] | None = None
        self._ready_lock: asyncio.Lock | None = None

    @classmethod
    async def connect(cls, dsn: str, *, ttl_s: float = 30.0) -> "KeyStore":
        # min_size=0: the gateway starts (and answers 503 for unknown keys) while Postgres is down
        return cls(await asyncpg.create_pool(dsn, min_size=0, max_size=4, timeout=5), ttl_s=ttl_s)

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    def cached(self, key: str) -> Cached:
        digest = key_hash(key)
        now = time.monotonic()
        entry = self._cache.get(digest)
        if entry is not None:
            self._cache.move_to_end(digest)
            return Cached(True, entry[0] > now, entry[1])
        expiry = self._negative.get(digest)
        if expiry is not None:
            return Cached(True, expiry > now, None)
        return Cached(False, False, None)

    async def lookup(self, key: str) -> str | None:
        """Ask Postgres (the caller decided it may) and cache the answer. Postgres unreachable: an
        expired valid entry is used, else KeyStoreUnavailable."""
        if not looks_like_key(key):  # garbage never costs a database round trip or a cache slot
            return None
        digest = key_hash(key)
        now = time.monotonic()
        try:
            tenant = await self._lookup(digest)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            stale = self._cache.get(digest)
            if stale is not None:
                log.warning("key store unreachable (%s); using a cached entry past its TTL", type(exc).__name__)
                self._remember(digest, stale[1], now)  # ask again after a TTL, not on every request
                return stale[1]
            raise KeyStoreUnavailable(f"{type(exc).__name__}: {exc}") from None
        self._remember(digest, tenant, now)
        return tenant

    async def _lookup(self, digest: bytes) -> str | None:
        assert self._pool is not None
        async with self._pool.acquire(timeout=5) as conn:
            return await conn.fetchval("SELECT tenant FROM api_key WHERE key_sha256 = $1 AND revoked_at IS NULL", digest)

    def _remember(self, digest: bytes, tenant: str | None, now: float) -> None:
        expiry = now + self._ttl_s
        if tenant is None:
            self._cache.pop(digest, None)  # revoked
            self._negative[digest] = expiry
            self._negative.move_to_end(digest)
            while len(self._negative) > self._max_negative:
                self._negative.popitem(last=False)
            return
        self._negative.pop(digest, None)
        self._cache[digest] = (expiry, tenant)
        self._cache.move_to_end(digest)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)

    async def ready(self) -> bool:
        """Whether Postgres answers, asked at most once per READY_CACHE_S (concurrent callers share
        one probe): /readyz needs no authentication, so it must not be a way to load Postgres."""
        if self._pool is None:
            return True
        now = time.monotonic()
        if self._ready is not None and now - self._ready[0] < self.READY_CACHE_S:
            return self._ready[1]
        if self._ready_lock is None:
            self._ready_lock = asyncio.Lock()
        async with self._ready_lock:
            if self._ready is not None and time.monotonic() - self._ready[0] < self.READY_CACHE_S:
                return self._ready[1]
            try:
                async with self._pool.acquire(timeout=2) as conn:
                    await conn.fetchval("SELECT 1")
                ok = True
            except Exception:  # noqa: BLE001 - readiness reports any failure as "not ready"
                ok = False
            self._ready = (time.monotonic(), ok)
            return ok
