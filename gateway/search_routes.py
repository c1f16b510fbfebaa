"""`GET /alerts/search`: federated search over Postgres (recent) and the search store (history).

Same API keys as ingestion; the tenant comes from the key and is applied by both readers on the
server side, on every page (a cursor carries no tenant). Newest first; `next_cursor` continues
the same query (docs/search.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Annotated, Any

import asyncpg
from elastic_transport import TransportError
from elasticsearch import ApiError
from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from prometheus_client import Histogram

from config.settings import Settings
from gateway.auth import Tenant
from query.federated import BadCursor, Reader, SearchFilter, decode_cursor, encode_cursor, search
from query.postgres_reader import PostgresReader
from query.search_reader import SearchReader
from schemas.alert import SEVERITIES, STATUSES

QUERY_SECONDS = Histogram(
    "alertstream_search_query_duration_seconds", "Time to answer one GET /alerts/search page, by tenant.", ["tenant"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


class FederatedSearch:
    """The readers and the cursor key of one gateway process."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool, client: Any | None) -> None:
        self.settings, self.pool, self.client = settings, pool, client
        self.readers: dict[str, Reader] = {"postgres": PostgresReader(pool)}  # Postgres first: see query.federated.search
        if client is not None:
            self.readers["search"] = SearchReader(client, settings.search_index)
        secret = settings.search_cursor_secret or settings.database_url
        self.secret = hashlib.sha256(b"alertstream-cursor:" + (secret.get_secret_value() if secret else "").encode()).digest()

    @classmethod
    async def open(cls, settings: Settings) -> FederatedSearch:
        from sinks.search import client_from_settings

        # min_size=0: the gateway starts and takes webhooks while Postgres is down (docs/gateway.md);
        # a connection attempt gives up after 5 s, a query after QUERY_TIMEOUT_S: 503, never a hung request
        pool = await asyncpg.create_pool(settings.require_database_url(), min_size=0, max_size=4, timeout=5,
                                         command_timeout=QUERY_TIMEOUT_S)
        client = client_from_settings(settings) if settings.search_enabled and settings.search_url else None
        return cls(settings, pool, client)

    async def close(self) -> None:
        await self.pool.close()
        if self.client is not None:
            await self.client.close()


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.federated = await FederatedSearch.open(app.state.gateway.settings)
    try:
        yield
    finally:
        await app.state.federated.close()


router = APIRouter(lifespan=_lifespan)

QUERY_TIMEOUT_S = 30.0  # one page, both stores: past this the answer is 503, not a request hanging on a store
RETRY_AFTER_S = "5"
# the times both stores can hold and Python can convert back: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z
MIN_MS = int(datetime(1, 1, 1, tzinfo=timezone.utc).timestamp() * 1000)
MAX_MS = int(datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=timezone.utc).timestamp() * 1000)
_EPOCH_MS = re.compile(r"[0-9]{1,15}")  # ASCII digits only: str.isdigit() also takes '²' and other digits int() refuses

# a store that cannot answer now: the client should retry (asyncpg's connection-class errors and the
# search client's transport errors: refused, reset, timed out, DNS)
_UNAVAILABLE = (OSError, TimeoutError, asyncpg.PostgresConnectionError, asyncpg.CannotConnectNowError,
                asyncpg.TooManyConnectionsError, asyncpg.AdminShutdownError, asyncpg.CrashShutdownError,
                asyncpg.QueryCanceledError, asyncpg.InterfaceError, TransportError)


def parse_time(value: str | None, name: str) -> int | None:
    """ISO 8601 (UTC without an offset) or epoch milliseconds → epoch ms; 400 with the reason otherwise."""
    if value is None:
        return None
    if len(value) > 64:  # the longest ISO 8601 form Python reads, 2025-01-15T10:05:00.123456+05:30:00.123456, has 42
        raise HTTPException(400, detail=f"{name}: too long for a time ({len(value)} characters)")
    if value.isascii() and value.isdigit():
        if not _EPOCH_MS.fullmatch(value):
            raise HTTPException(400, detail=f"{name}: epoch milliseconds have at most 15 digits: {value[:64]!r}")
        ms = int(value)
    else:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            ms = int((parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)).timestamp() * 1000)
        except (ValueError, OverflowError):
            raise HTTPException(400, detail=f"{name}: not an ISO 8601 time or epoch milliseconds: {value[:64]!r}") from None
    if not MIN_MS <= ms <= MAX_MS:
        raise HTTPException(400, detail=f"{name}: out of range: times from year 1 to 9999 only ({value[:64]!r})")
    return ms


def _check(values: list[str], allowed: tuple[str, ...], name: str) -> tuple[str, ...]:
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise HTTPException(400, detail=f"{name}: unknown value(s) {unknown}; one of {list(allowed)}")
    return tuple(sorted(set(values)))


@router.get("/alerts/search", summary="Search alerts in Postgres and the search store as one",
            responses={400: {"description": "a bad filter or cursor, with the reason"},
                       503: {"description": "a store is unavailable; retry later"}})
async def search_alerts(
    request: Request,
    tenant: Tenant,
    since: Annotated[str | None, Query(description="From this time (inclusive): ISO 8601 or epoch ms.")] = None,
    until: Annotated[str | None, Query(description="Up to this time (exclusive): ISO 8601 or epoch ms.")] = None,
    fingerprint: Annotated[str | None, Query(max_length=1024)] = None,
    severity: Annotated[list[str], Query(description="Repeatable: any of them.")] = [],  # noqa: B006 - FastAPI copies it
    status: Annotated[list[str], Query(description="Repeatable: any of them.")] = [],  # noqa: B006
    provider: Annotated[list[str], Query(description="Provider type, repeatable.", max_length=64)] = [],  # noqa: B006
    q: Annotated[str | None, Query(description="Free text: all words in name, message or description.", max_length=512)] = None,
    limit: Annotated[int, Query(ge=1, description="Page size (at most ALERTSTREAM_SEARCH_QUERY_MAX_LIMIT).")] = 50,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page, with the same filters.", max_length=512)] = None,
) -> dict[str, Any]:
    fed: FederatedSearch = request.app.state.federated
    if limit > fed.settings.search_query_max_limit:
        raise HTTPException(400, detail=f"limit: at most {fed.settings.search_query_max_limit}")
    flt = SearchFilter(
        tenant=tenant, since_ms=parse_time(since, "since"), until_ms=parse_time(until, "until"),
        fingerprint=fingerprint or None, severity=_check(severity, SEVERITIES, "severity"),
        status=_check(status, STATUSES, "status"), provider=tuple(sorted(set(provider))), text=(q or "").strip() or None,
    )
    try:
        after = decode_cursor(cursor, flt, fed.secret) if cursor else None
    except BadCursor as exc:
        raise HTTPException(400, detail=f"cursor: {exc}") from None
    started = time.perf_counter()
    try:
        page = await asyncio.wait_for(search(fed.readers, flt, after, limit), QUERY_TIMEOUT_S)
    except _UNAVAILABLE as exc:
        raise HTTPException(503, detail=f"a store is unavailable: {type(exc).__name__}",
                            headers={"Retry-After": RETRY_AFTER_S}) from None
    except ApiError as exc:
        if exc.meta.status == 429 or exc.meta.status >= 500:  # throttling or failing: both are "retry later"
            raise HTTPException(503, detail=f"the search store answered {exc.meta.status}; retry later",
                                headers={"Retry-After": RETRY_AFTER_S}) from None
        raise
    QUERY_SECONDS.labels(tenant).observe(time.perf_counter() - started)
    return {
        "alerts": [h.document for h in page.hits],
        "next_cursor": encode_cursor(page.next_key, flt, fed.secret) if page.next_key else None,
        "stores": page.per_store,
    }
