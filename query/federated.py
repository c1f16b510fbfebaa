"""Federated alert search: one query over Postgres (recent) and the search store (history).

Pure logic, no I/O: the filter, the sort key, the opaque cursor, and the merge of the stores'
pages. The readers (query/postgres_reader.py, query/search_reader.py) fetch; `search()` drives.

Order: newest first, by the key (received_at_ms, alert id), descending. An alert has the same key
in both stores (the search document's `receivedAt` is Postgres' `received_at`, `alertId` its `id`),
so the copy of one alert in both stores meets itself in the merge and is kept once.

Paging is keyset paging on that key: a page asks every store for the `limit + 1` newest alerts
strictly after the cursor's key. A store that answered a full page may hold more alerts after its
last one, so only alerts not older than the earliest such "horizon" are emitted (the per-store
positions); the cursor is the key of the last alert emitted. Nothing after it was emitted, and
everything before it was, in every store: pages have no gaps and no repeats, whichever store an
alert is in, even when it moves from Postgres to the search store between two pages (docs/search.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

Key = tuple[int, str]  # (received_at_ms, alert id)


@dataclass(frozen=True)
class SearchFilter:
    """What the caller asked for. `tenant` is the authenticated tenant, never a client field."""

    tenant: str
    since_ms: int | None = None  # inclusive
    until_ms: int | None = None  # exclusive
    fingerprint: str | None = None
    severity: tuple[str, ...] = ()
    status: tuple[str, ...] = ()
    provider: tuple[str, ...] = ()
    text: str | None = None

    def digest(self) -> str:
        """Identifies the query a cursor belongs to: a cursor reused with other filters is refused."""
        return hashlib.sha256(orjson.dumps(self.__dict__, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


@dataclass(frozen=True)
class Hit:
    alert_id: str
    received_at_ms: int
    store: str  # where this copy came from: postgres | search
    document: dict[str, Any] = field(compare=False, hash=False)

    @property
    def key(self) -> Key:
        return (self.received_at_ms, self.alert_id)


Reader = Callable[[SearchFilter, Key | None, int], Awaitable[list[Hit]]]
"""Fetch up to `limit` hits of `filter`, newest first, strictly older than `after` (None: from the newest)."""


@dataclass
class Page:
    hits: list[Hit]
    next_key: Key | None  # None: no more results
    per_store: dict[str, int]  # hits fetched from each store for this page


def merge(pages: dict[str, list[Hit]], limit: int) -> tuple[list[Hit], Key | None]:
    """Merge the stores' pages (each newest first, at most `limit + 1` long) into one page.

    Returns the distinct hits to emit (at most `limit`) and the key to continue after, or None
    when every store is exhausted and all was emitted.
    """
    full = [hits for hits in pages.values() if len(hits) > limit]
    # a store that filled its page may have more after its last hit: emit nothing older than that
    horizon = max((hits[-1].key for hits in full), default=None)
    merged = sorted((h for hits in pages.values() for h in hits), key=lambda h: h.key, reverse=True)
    out: list[Hit] = []
    seen: set[str] = set()
    more = bool(full)
    for hit in merged:
        if hit.alert_id in seen:
            continue  # the same alert in both stores (same key), or in two indices of one store
        if (horizon is not None and hit.key < horizon) or len(out) == limit:
            more = True
            break
        seen.add(hit.alert_id)
        out.append(hit)
    if more and out:
        return out, out[-1].key
    return out, None


async def search(readers: dict[str, Reader], flt: SearchFilter, after: Key | None, limit: int) -> Page:
    """One page. The stores are read one after another, in the order given (Postgres first): an
    alert the archiver moves meanwhile is indexed in the store before it leaves Postgres, so it
    is found in one or the other (both is fine: deduplicated), never in neither."""
    pages = {name: await read(flt, after, limit + 1) for name, read in readers.items()}
    hits, next_key = merge(pages, limit)
    return Page(hits, next_key, {name: len(p) for name, p in pages.items()})


# ------------------------------------------------------------------------------------------ cursor

class BadCursor(ValueError):
    pass


def encode_cursor(key: Key, flt: SearchFilter, secret: bytes) -> str:
    """Opaque, URL-safe: the last key emitted and the query's digest, signed so that a client
    cannot forge positions (it could not read another tenant's data anyway: the tenant filter is
    applied from the API key on every page)."""
    payload = orjson.dumps({"v": 1, "k": [key[0], key[1]], "q": flt.digest()})
    mac = hmac.new(secret, payload, hashlib.sha256).digest()[:12]
    return base64.urlsafe_b64encode(payload + mac).decode().rstrip("=")


def decode_cursor(cursor: str, flt: SearchFilter, secret: bytes) -> Key:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload, mac = raw[:-12], raw[-12:]
    except (ValueError, TypeError) as exc:
        raise BadCursor("cursor is not valid base64") from exc
    if not hmac.compare_digest(mac, hmac.new(secret, payload, hashlib.sha256).digest()[:12]):
        raise BadCursor("cursor was not issued by this service")
    data = orjson.loads(payload)
    if data.get("q") != flt.digest():
        raise BadCursor("cursor belongs to a query with other filters: repeat the same filters, or drop the cursor")
    ms, alert_id = data["k"]
    return int(ms), str(alert_id)

