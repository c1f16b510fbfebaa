"""Authentication in front of every gateway route (gateway/auth.py), in process over ASGI: the real
dependency, the real AuthGuard and KeyStore cache, a key table in a dict instead of Postgres."""

from __future__ import annotations

import asyncio
import math
import time

import httpx
from fastapi import FastAPI

from config.settings import RateLimit
from gateway.apikeys import KeyStore, key_hash, new_key
from gateway.app import _auth_failed
from gateway.auth import AuthError, Tenant
from gateway.ratelimit import AuthGuard


class TableStore(KeyStore):
    """The real store and cache; the Postgres query answered from a dict, counted, and able to fail."""

    def __init__(self, table: dict[bytes, str], **kw) -> None:  # noqa: ANN003
        super().__init__(None, **kw)
        self.table, self.lookups, self.down = table, 0, False

    async def _lookup(self, digest: bytes) -> str | None:
        self.lookups += 1
        if self.down:
            raise ConnectionRefusedError("postgres is down")
        return self.table.get(digest)


def make_app(store: KeyStore, failures=(1, 30), lookups=(50, 100)) -> FastAPI:  # noqa: ANN001
    app = FastAPI()
    app.state.keystore = store
    app.state.auth_guard = AuthGuard(RateLimit(rate_per_s=failures[0], burst=failures[1]),
                                     RateLimit(rate_per_s=lookups[0], burst=lookups[1]))
    app.add_exception_handler(AuthError, _auth_failed)

    async def whoami(tenant: Tenant) -> dict[str, str]:
        return {"tenant": tenant}
    app.add_api_route("/alerts/search", whoami, methods=["GET"])
    app.add_api_route("/alerts/event/cloudwatch", whoami, methods=["POST"])
    app.add_api_route("/alerts/event/prometheus", whoami, methods=["POST"])
    return app


def client(app: FastAPI, address: str = "198.51.100.1") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(address, 40000)), base_url="http://gw")


def test_a_401_never_asks_a_browser_for_credentials() -> None:
    """Finding 11: `WWW-Authenticate: Basic` made browsers prompt and then send the key by themselves
    with every request to the gateway, including those another site makes them send."""
    _, key = new_key()
    app = make_app(TableStore({key_hash(key): "acme"}))

    async def go() -> list[httpx.Response]:
        async with client(app) as c:
            return [await c.get("/alerts/search"), await c.get("/alerts/search", auth=("u", "wrong")),
                    await c.get("/alerts/search", headers={"X-API-KEY": new_key()[1]}),
                    await c.post("/alerts/event/prometheus"), await c.post("/alerts/event/cloudwatch"),
                    await c.get("/alerts/search", headers={"Authorization": "Bearer x"})]
    answers = asyncio.run(go())
    assert [r.status_code for r in answers] == [401] * 6
    assert all("www-authenticate" not in r.headers for r in answers), [dict(r.headers) for r in answers]


def test_an_sns_delivery_without_credentials_is_challenged() -> None:
    """SNS sends the user and password of its subscription URL only after a Basic challenge; its
    deliveries carry x-amz-sns-message-type, which no web page can send cross-site."""
    _, key = new_key()
    app = make_app(TableStore({key_hash(key): "acme"}))

    async def go() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with client(app) as c:
            sns = {"x-amz-sns-message-type": "Notification"}
            return (await c.post("/alerts/event/cloudwatch", headers=sns),
                    await c.post("/alerts/event/cloudwatch", headers=sns, auth=("sns", key)),
                    await c.post("/alerts/event/prometheus", headers=sns))
    challenged, authenticated, elsewhere = asyncio.run(go())
    assert challenged.status_code == 401 and challenged.headers["www-authenticate"].startswith("Basic ")
    assert authenticated.status_code == 200 and authenticated.json() == {"tenant": "acme"}
    assert elsewhere.status_code == 401 and "www-authenticate" not in elsewhere.headers


def test_random_keys_cost_one_address_a_bounded_number_of_lookups_and_evict_nothing() -> None:
    """Finding 5: 10,001 random well-formed keys were 10,001 Postgres lookups and evicted the cache, so
    a valid key got 503 once Postgres went down. Now the address is cut off after its burst (429,
    before any lookup), the valid key stays cached, and it keeps working with Postgres down."""
    _, key = new_key()
    store = TableStore({key_hash(key): "acme"}, ttl_s=3600)
    app = make_app(store, failures=(1, 30))

    async def go() -> dict[int, int]:
        nonlocal elapsed
        statuses: dict[int, int] = {}
        started = time.monotonic()
        async with client(app, "203.0.113.9") as c:
            assert (await c.get("/alerts/search", headers={"X-API-KEY": key})).status_code == 200
            for _ in range(10_001):
                r = await c.get("/alerts/search", headers={"X-API-KEY": new_key()[1]})
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            limited = await c.get("/alerts/search", headers={"X-API-KEY": new_key()[1]})
            assert limited.json()["reason"] == "auth_rate_limited" and int(limited.headers["Retry-After"]) >= 1
            store.down = True
            again = await c.get("/alerts/search", headers={"X-API-KEY": key})  # from the very same address
            assert again.status_code == 200 and again.json() == {"tenant": "acme"}
        elapsed = time.monotonic() - started
        return statuses
    elapsed = 0.0
    statuses = asyncio.run(go())
    # the valid key, the burst of 30, and the tokens refilled (1/s) while the 10,001 requests took their time
    assert store.lookups <= 1 + 30 + math.ceil(elapsed), (store.lookups, elapsed)
    assert statuses[429] >= 9_900 and statuses[401] <= 30 + math.ceil(elapsed)
    assert len(store._cache) == 1


def test_alertmanager_gets_503_where_api_clients_get_429() -> None:
    store = TableStore({}, ttl_s=3600)
    app = make_app(store, failures=(0.001, 1))

    async def go() -> tuple[httpx.Response, httpx.Response]:
        async with client(app) as c:
            await c.get("/alerts/search", headers={"X-API-KEY": new_key()[1]})
            return (await c.get("/alerts/search", headers={"X-API-KEY": new_key()[1]}),
                    await c.post("/alerts/event/prometheus", headers={"X-API-KEY": new_key()[1]}))
    search, alertmanager = asyncio.run(go())
    assert search.status_code == 429 and alertmanager.status_code == 503  # Alertmanager retries on 5xx only
    assert alertmanager.json()["reason"] == "auth_rate_limited" and alertmanager.headers["Retry-After"]


def test_many_addresses_together_cannot_make_postgres_look_up_more_than_the_process_budget() -> None:
    _, key = new_key()
    store = TableStore({key_hash(key): "acme"}, ttl_s=0)  # expires at once: only a stale entry remains
    app = make_app(store, failures=(1, 30), lookups=(1, 20))

    async def go() -> list[int]:
        async with client(app, "192.0.2.1") as c:
            assert (await c.get("/alerts/search", headers={"X-API-KEY": key})).status_code == 200
        statuses = []
        for i in range(200):
            async with client(app, f"10.1.{i // 200}.{i % 200}") as c:
                statuses.append((await c.get("/alerts/search", headers={"X-API-KEY": new_key()[1]})).status_code)
        async with client(app, "192.0.2.1") as c:
            # the budget is spent: the known key is served from its (stale) entry instead of waiting
            stale = await c.get("/alerts/search", headers={"X-API-KEY": key})
            assert stale.status_code == 200 and stale.json() == {"tenant": "acme"}
            busy = await c.get("/alerts/search", headers={"X-API-KEY": new_key()[1]})
            assert busy.status_code == 503 and busy.json()["reason"] == "keystore_busy" and busy.headers["Retry-After"]
        return statuses
    statuses = asyncio.run(go())
    assert store.lookups <= 1 + 20 + 1
    assert statuses.count(503) >= 170
