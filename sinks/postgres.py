"""Postgres sink: one transaction per batch, COPY into staging, then set-based SQL.

- `alert`: COPY into a temp staging table, then INSERT ... ON CONFLICT DO
  NOTHING. Row ids come from source positions, so a replayed batch adds nothing.
- `last_alert`: sightings coalesced to one staging row per (tenant, fingerprint)
  and applied in key order (rows locked in key order first), so workers with
  overlapping fingerprints cannot deadlock. A sighting at or before the highest
  source position counted in its flow (`source_marks`) was sent again after a
  crash and is not counted again.
- `alert_raw` is the raw store's own sink (sinks/raw_storage.py `RawSink`).
- Isolation: READ COMMITTED. Every statement either inserts with a unique key
  or updates rows it has locked, so the stronger levels would only add
  serialization failures to retry (docs/postgres.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from functools import lru_cache

import asyncpg

from core.records import Sighting, WriteBatch
from schemas.alert import NormalizedAlert, PackedAlert

ALERT_COLUMNS = (
    "id", "received_at", "tenant", "fingerprint", "provider_type", "provider_id",
    "name", "status", "severity", "content_hash", "event",
)
LAST_STAGE_COLUMNS = (
    "tenant", "fingerprint", "alert_id", "name", "status", "severity", "provider_type",
    "content_hash", "stored_flow", "stored_position", "first_received", "last_received",
    "flows", "positions",
)

CREATE_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS alert_stage (LIKE alert INCLUDING DEFAULTS INCLUDING COMPRESSION) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE IF NOT EXISTS last_alert_stage (
    tenant text, fingerprint text, alert_id uuid, name text, status text, severity text,
    provider_type text, content_hash text, stored_flow text, stored_position bigint,
    first_received timestamptz, last_received timestamptz,
    flows text[], positions bigint[]
) ON COMMIT DELETE ROWS;
"""

INSERT_ALERTS = f"""
INSERT INTO alert ({", ".join(ALERT_COLUMNS)})
SELECT {", ".join(ALERT_COLUMNS)} FROM alert_stage
ORDER BY id, received_at
ON CONFLICT DO NOTHING
"""

# New identities get a row that has "seen nothing yet"; the UPDATE below then
# applies the batch to old and new rows alike.
_INSERT_NEW_LAST = """
INSERT INTO last_alert (tenant, fingerprint, alert_id, name, status, severity, provider_type, content_hash,
                        first_received, last_received, received_count, source_marks)
SELECT tenant, fingerprint, alert_id, name, status, severity, provider_type, content_hash,
       first_received, first_received, 0, '{}'::jsonb
FROM last_alert_stage WHERE alert_id IS NOT NULL
ORDER BY tenant, fingerprint
ON CONFLICT (tenant, fingerprint) DO NOTHING
"""

_LOCK_LAST = """
SELECT 1 FROM last_alert la JOIN last_alert_stage s USING (tenant, fingerprint)
ORDER BY la.tenant, la.fingerprint FOR UPDATE OF la
"""

# `source_marks` holds, per flow, the highest source position counted (pipeline/deduplicator.py
# `sighting_flow`): a sighting at or below its flow's mark was counted before a crash and is not
# counted again; the stored alert is taken only from a sighting past its mark. A sighting twice in one
# batch (its record read again beside the copy a restarted normalizer sent) counts once: DISTINCT.
_APPLY_LAST = """
UPDATE last_alert AS la SET
    alert_id       = CASE WHEN u.take_stored THEN u.alert_id      ELSE la.alert_id      END,
    name           = CASE WHEN u.take_stored THEN u.name          ELSE la.name          END,
    status         = CASE WHEN u.take_stored THEN u.status        ELSE la.status        END,
    severity       = CASE WHEN u.take_stored THEN u.severity      ELSE la.severity      END,
    provider_type  = CASE WHEN u.take_stored THEN u.provider_type ELSE la.provider_type END,
    content_hash   = CASE WHEN u.take_stored THEN u.content_hash  ELSE la.content_hash  END,
    first_received = LEAST(la.first_received, u.first_received),
    last_received  = GREATEST(la.last_received, u.last_received),
    received_count = la.received_count + u.new_sightings,
    source_marks   = la.source_marks || u.advanced
FROM (
    SELECT s.*, n.new_sightings, n.advanced,
           (s.alert_id IS NOT NULL AND s.stored_position > coalesce((cur.source_marks ->> s.stored_flow)::bigint, -1)) AS take_stored
    FROM last_alert_stage s JOIN last_alert cur USING (tenant, fingerprint)
    CROSS JOIN LATERAL (
        SELECT coalesce(sum(g.fresh), 0) AS new_sightings,
               coalesce(jsonb_object_agg(g.flow, g.top) FILTER (WHERE g.fresh > 0), '{}'::jsonb) AS advanced
        FROM (SELECT x.flow, max(x.position) AS top,
                     count(DISTINCT x.position) FILTER (WHERE x.position > coalesce((cur.source_marks ->> x.flow)::bigint, -1)) AS fresh
              FROM unnest(s.flows, s.positions) AS x(flow, position) GROUP BY x.flow) AS g
    ) AS n
) AS u
WHERE la.tenant = u.tenant AND la.fingerprint = u.fingerprint AND u.new_sightings > 0
"""


@lru_cache(maxsize=4096)
def _ts(ms: int) -> datetime:
    """Cached: a record's alerts share its timestamp, and a batch's records share milliseconds."""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def alert_rows(stored: Sequence[NormalizedAlert | PackedAlert]) -> list[tuple]:
    # ids as text: asyncpg parses a uuid from a str in C; building `uuid.UUID` per row cost ~1 µs (timeit)
    return [
        (
            item.uid, _ts(item.received_at_ms), a.tenant, a.fingerprint, a.provider_type,
            a.provider_id, a.name, a.status, a.severity, item.content_hash, item.alert_json(),
        )
        for item in stored
        for a in (item.alert,)
    ]


_NO_ALERT = (None,) * 8  # alert_id .. stored_position of an identity whose sightings stored nothing


def last_alert_rows(sightings: list[Sighting]) -> list[tuple]:
    """One row per identity, in key order: its newest stored alert and every sighting's flow and position.

    "Newest" is the order of the sightings (the internal topic's order): an identity has one
    internal partition, so the list is already in the order the sightings arrived. Most identities
    are seen once per batch: that case takes a short path (a sixth of the worker's row building).
    """
    by_key: dict[tuple[str, str], Sighting | list[Sighting]] = {}
    for s in sightings:
        key = (s.tenant, s.fingerprint)
        seen = by_key.get(key)
        if seen is None:
            by_key[key] = s
        elif type(seen) is list:
            seen.append(s)
        else:
            by_key[key] = [seen, s]
    rows = []
    for key in sorted(by_key):
        seen = by_key[key]
        if type(seen) is list:
            newest = next((s for s in reversed(seen) if s.stored is not None), None)
            received = [s.received_at_ms for s in seen]
            first, last = _ts(min(received)), _ts(max(received))
            flows, positions = [s.flow for s in seen], [s.position for s in seen]
        else:
            newest = seen if seen.stored is not None else None
            first = last = _ts(seen.received_at_ms)
            flows, positions = [seen.flow], [seen.position]
        if newest is None:
            rows.append((*key, *_NO_ALERT, first, last, flows, positions))
        else:
            item = newest.stored
            a = item.alert
            rows.append((*key, item.uid, a.name, a.status, a.severity, a.provider_type, item.content_hash,
                         newest.flow, newest.position, first, last, flows, positions))
    return rows


class PostgresSink:
    name = "postgres"

    def __init__(self, dsn: str, pool_size: int = 4) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(
            self._dsn, min_size=1, max_size=self._pool_size, init=self._init_connection
        )

    @staticmethod
    async def _init_connection(conn: asyncpg.Connection) -> None:
        await conn.execute(CREATE_STAGING)

    async def write(self, batch: WriteBatch) -> int:
        if not batch.sightings and not batch.stored:
            return 0
        assert self._pool is not None, "start() first"
        async with self._pool.acquire() as conn, conn.transaction():
            if batch.stored:
                await conn.copy_records_to_table("alert_stage", records=alert_rows(batch.stored), columns=ALERT_COLUMNS)
                await conn.execute(INSERT_ALERTS)
            if batch.sightings:
                await conn.copy_records_to_table(
                    "last_alert_stage", records=last_alert_rows(batch.sightings), columns=LAST_STAGE_COLUMNS
                )
                await conn.execute(_INSERT_NEW_LAST)
                await conn.execute(_LOCK_LAST)
                await conn.execute(_APPLY_LAST)
        return len(batch.stored)

    def is_permanent(self, exc: Exception) -> bool:
        # 22xxx data exceptions (bad value, NUL byte) and 54xxx limits (index row too large) are
        # about the rows, not the server: retrying cannot help.
        return isinstance(exc, (asyncpg.exceptions.DataError, asyncpg.exceptions.ProgramLimitExceededError))

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
