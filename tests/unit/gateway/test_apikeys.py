"""API keys: their shape, hashing, and the key store's TTL cache (the lookup itself runs against
real Postgres in tests/integration/gateway/test_gateway.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from gateway.apikeys import KeyStore, key_hash, looks_like_key, new_key
from tests.conftest import REPO


def test_keys_are_random_well_formed_and_only_their_hash_is_kept() -> None:
    keys = {new_key() for _ in range(100)}
    assert len({k for _, k in keys}) == 100
    for key_id, key in keys:
        assert looks_like_key(key) and key.startswith(f"as_{key_id}_")
        assert len(key_hash(key)) == 32 and key_hash(key) != key.encode()
    assert not looks_like_key("as_123_short") and not looks_like_key("Bearer x") and not looks_like_key("")


async def tenant_for(store: KeyStore, key: str) -> str | None:
    """What gateway/auth.py does with a key, less its lookup rate limit: the cache's answer while
    fresh, else Postgres' (`lookup`)."""
    if not looks_like_key(key):
        return None
    hit = store.cached(key)
    if hit.fresh:
        return hit.tenant
    return await store.lookup(key)


class CountingStore(KeyStore):
    """The real store with the database lookup replaced by a dict: this test is about the cache."""

    def __init__(self, table: dict[bytes, str], **kw) -> None:  # noqa: ANN003
        super().__init__(None, **kw)
        self.table, self.lookups = table, 0

    async def _lookup(self, digest: bytes) -> str | None:
        self.lookups += 1
        return self.table.get(digest)


def test_lookups_are_cached_for_the_ttl_misses_too_and_garbage_never_looked_up() -> None:
    _, key = new_key()
    _, unknown = new_key()
    store = CountingStore({key_hash(key): "acme"}, ttl_s=60)

    async def go() -> None:
        assert await tenant_for(store, key) == "acme"
        assert await tenant_for(store, key) == "acme"
        assert await tenant_for(store, unknown) is None
        assert await tenant_for(store, unknown) is None
        assert await tenant_for(store, "not-a-key") is None
    asyncio.run(go())
    assert store.lookups == 2


def test_ttl_zero_always_asks_and_both_caches_are_bounded() -> None:
    _, key = new_key()
    store = CountingStore({key_hash(key): "acme"}, ttl_s=0, max_entries=10, max_negative_entries=10)

    async def go() -> None:
        for _ in range(3):
            await tenant_for(store, key)
        for _ in range(50):
            await tenant_for(store, new_key()[1])
    asyncio.run(go())
    assert store.lookups == 53
    assert len(store._cache) == 1 and len(store._negative) == 10


def test_gateway_settings_from_the_environment() -> None:
    env = {**os.environ, "ALERTSTREAM_GATEWAY_PORT": "18080",
           "ALERTSTREAM_GATEWAY_PROVIDER_RATE_LIMITS": '{"grafana": {"rate_per_s": 2, "burst": 4}}',
           "ALERTSTREAM_GATEWAY_TENANT_RATE_LIMIT__BURST": "9"}
    code = ("from config.settings import Settings; s = Settings(); "
            "print(s.gateway_port, s.gateway_provider_rate_limits['grafana'].burst, s.gateway_tenant_rate_limit.burst, "
            "s.gateway_tenant_rate_limit.rate_per_s, s.gateway_bind)")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["18080", "4.0", "9.0", "200.0", "127.0.0.1"]  # a partial block keeps its other defaults


class FlakyStore(CountingStore):
    """The database goes away after the first lookup (a fault the unit test can only simulate;
    the integration test points a gateway at a port where no Postgres listens)."""

    async def _lookup(self, digest: bytes) -> str | None:
        if self.lookups >= 1:
            raise ConnectionRefusedError("postgres is down")
        return await super()._lookup(digest)


def test_known_keys_keep_working_while_postgres_is_down_unknown_ones_get_unavailable() -> None:
    import pytest

    from gateway.apikeys import KeyStoreUnavailable

    _, key = new_key()
    store = FlakyStore({key_hash(key): "acme"}, ttl_s=0)

    async def go() -> None:
        assert await tenant_for(store, key) == "acme"
        assert await tenant_for(store, key) == "acme"  # expired (TTL 0), Postgres down: the stale entry
        with pytest.raises(KeyStoreUnavailable):
            await tenant_for(store, new_key()[1])
    asyncio.run(go())


def test_unknown_keys_never_evict_a_valid_one_so_it_works_while_postgres_is_down() -> None:
    """Issue 14, finding 5: 10,001 random well-formed keys used to fill the one LRU and evict the valid
    key; with Postgres down that key then got 503. Unknown keys now have a cache of their own."""
    from gateway.apikeys import KeyStoreUnavailable

    _, key = new_key()
    store = CountingStore({key_hash(key): "acme"}, ttl_s=0)  # every entry expired at once: only the stale fallback helps
    down = False

    async def lookup(digest: bytes) -> str | None:
        if down:
            raise ConnectionRefusedError("postgres is down")
        return store.table.get(digest)

    store._lookup = lookup  # type: ignore[method-assign]

    async def go() -> None:
        nonlocal down
        assert await tenant_for(store, key) == "acme"
        for _ in range(10_001):
            assert await tenant_for(store, new_key()[1]) is None
        down = True
        assert await tenant_for(store, key) == "acme"
        import pytest

        with pytest.raises(KeyStoreUnavailable):
            await tenant_for(store, new_key()[1])
    asyncio.run(go())


class _Conn:
    def __init__(self, pool: "_Pool") -> None:
        self.pool = pool

    async def fetchval(self, sql: str) -> int:
        self.pool.queries += 1
        return 1


class _Pool:
    """An asyncpg pool as far as KeyStore.ready uses it: counts the queries it is asked."""

    def __init__(self) -> None:
        self.queries = 0

    def acquire(self, timeout: float | None = None):  # noqa: ANN201
        pool = self

        class _Ctx:
            async def __aenter__(self) -> _Conn:
                return _Conn(pool)

            async def __aexit__(self, *exc: object) -> None:
                return None
        return _Ctx()


def test_readiness_asks_postgres_at_most_once_per_interval_however_often_it_is_called() -> None:
    """/readyz needs no key: 1,000 calls (100 of them at once) must not be 1,000 queries."""
    pool = _Pool()
    store = KeyStore(pool)  # type: ignore[arg-type]

    async def go() -> None:
        for _ in range(900):
            assert await store.ready() is True
        assert all(await asyncio.gather(*(store.ready() for _ in range(100))))
    asyncio.run(go())
    assert pool.queries == 1
    store._ready = (store._ready[0] - KeyStore.READY_CACHE_S - 1, True)  # the interval is over
    asyncio.run(store.ready())
    assert pool.queries == 2
