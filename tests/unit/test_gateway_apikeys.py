"""API keys: their shape, hashing, and the key store's TTL cache (the lookup itself runs against
real Postgres in tests/integration/test_gateway.py)."""

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
        assert await store.tenant_for(key) == "acme"
        assert await store.tenant_for(key) == "acme"
        assert await store.tenant_for(unknown) is None
        assert await store.tenant_for(unknown) is None
        assert await store.tenant_for("not-a-key") is None
    asyncio.run(go())
    assert store.lookups == 2


def test_ttl_zero_always_asks_and_the_cache_is_bounded() -> None:
    _, key = new_key()
    store = CountingStore({key_hash(key): "acme"}, ttl_s=0, max_entries=10)

    async def go() -> None:
        for _ in range(3):
            await store.tenant_for(key)
        for _ in range(50):
            await store.tenant_for(new_key()[1])
    asyncio.run(go())
    assert store.lookups == 53
    assert len(store._cache) == 10


def test_gateway_settings_from_the_environment() -> None:
    env = {**os.environ, "ALERTSTREAM_GATEWAY_PORT": "18080",
           "ALERTSTREAM_GATEWAY_PROVIDER_RATE_LIMITS": '{"grafana": {"rate_per_s": 2, "burst": 4}}',
           "ALERTSTREAM_GATEWAY_TENANT_RATE_LIMIT__BURST": "9"}
    code = ("from streams.settings import Settings; s = Settings(); "
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
        assert await store.tenant_for(key) == "acme"
        assert await store.tenant_for(key) == "acme"  # expired (TTL 0), Postgres down: the stale entry
        with pytest.raises(KeyStoreUnavailable):
            await store.tenant_for(new_key()[1])
    asyncio.run(go())
