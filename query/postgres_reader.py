"""Federated search, the Postgres side: recent alerts from the `alert` table.

Parameterized SQL only; the tenant is always the first condition (from the API key). Free text
uses PostgreSQL's `simple` text search over name, message and description: word matches,
case-insensitive, like the search store's `standard` analyzer (no stemming in either).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
import orjson

from query.federated import Hit, Key, SearchFilter

STORE = "postgres"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_TEXT = ("to_tsvector('simple', name || ' ' || coalesce(event->>'message', '') || ' ' || "
         "coalesce(event->>'description', '')) @@ plainto_tsquery('simple', ${})")


def _ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def build_query(flt: SearchFilter, after: Key | None, limit: int) -> tuple[str, list[Any]]:
    """The SQL and its arguments: newest first, strictly older than `after`."""
    where, args = ["tenant = $1"], [flt.tenant]

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    if flt.since_ms is not None:
        where.append(f"received_at >= {arg(_ts(flt.since_ms))}")
    if flt.until_ms is not None:
        where.append(f"received_at < {arg(_ts(flt.until_ms))}")
    if flt.fingerprint:
        where.append(f"fingerprint = {arg(flt.fingerprint)}")
    for column, values in (("severity", flt.severity), ("status", flt.status), ("provider_type", flt.provider)):
        if values:
            where.append(f"{column} = ANY({arg(list(values))}::text[])")
    if flt.text:
        args.append(flt.text)
        where.append(_TEXT.format(len(args)))
    if after is not None:
        where.append(f"(received_at, id) < ({arg(_ts(after[0]))}, {arg(after[1])}::uuid)")
    sql = (f"SELECT id, received_at, content_hash, event FROM alert WHERE {' AND '.join(where)} "
           f"ORDER BY received_at DESC, id DESC LIMIT {arg(limit)}")
    return sql, args


def row_document(row: asyncpg.Record) -> dict[str, Any]:
    """The same shape as a search document (sinks/search.py `alert_document`)."""
    doc = orjson.loads(row["event"])
    doc["alertId"] = str(row["id"])
    doc["receivedAt"] = (row["received_at"] - _EPOCH) // timedelta(milliseconds=1)  # exact, as the search document
    doc["contentHash"] = row["content_hash"]
    return doc


class PostgresReader:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def __call__(self, flt: SearchFilter, after: Key | None, limit: int) -> list[Hit]:
        sql, args = build_query(flt, after, limit)
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(sql, *args)
        hits = []
        for row in rows:
            doc = row_document(row)
            hits.append(Hit(doc["alertId"], doc["receivedAt"], STORE, doc))
        return hits
