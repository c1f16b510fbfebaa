"""`last_alert` under a steady stream of sightings: the table as migrated against variants that let
Postgres update rows in place (HOT: heap-only tuples, no index entry per update).

    .venv/bin/python -m benchmarks.last_alert_micro [--dsn URL] [--identities 110000] [--batches 300] [--per-batch 1400]

Every sighting updates its identity's row (`received_count`, `last_received`, `source_marks`). An
update can be HOT only when no indexed column changes and the page has room for the new version;
`last_received` is indexed (`last_alert_tenant_last_received`), so as migrated every update writes
a new entry into both indexes, and the table and its indexes bloat until vacuum catches up.

Variants, each a scratch schema with every migration but 0005 applied, then:
- the table before 0005: `last_received` indexed, pages filled;
- fill factor 70 alone: room on each page, the index kept;
- 0005 applied (as deployed): no index on `last_received`, fill factor 70; every update can be HOT.
The same sightings (random identities of a heavy-mix-sized population, all known: duplicates) go
through the real sink (`PostgresSink.write`, one connection per variant), interleaved batch by
batch so that the machine's drift hits every variant alike. Reported per variant: ms per batch
(p50, p90, last tenth), the Postgres backend's CPU per 1000 sightings, the share of HOT updates
(`pg_stat_user_tables`), and the table's and its indexes' size at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import time
from typing import Any

import asyncpg

from benchmarks.micro import publish, variants_table
from benchmarks.pg_micro import backend_cpu, with_search_path
from core.records import Sighting, WriteBatch
from sinks.migrate import available_migrations
from sinks.postgres import PostgresSink

HOT_MIGRATION = "0005_last_alert_hot"  # the change measured here
BEFORE = "index on last_received (before 0005)"
FILLFACTOR_ONLY = "fillfactor 70, index kept"
MIGRATED = "as migrated (0005: no index on last_received, fillfactor 70)"
VARIANTS = {
    BEFORE: [],
    FILLFACTOR_ONLY: ["ALTER TABLE last_alert SET (fillfactor = 70)"],
    MIGRATED: [dict(available_migrations())[HOT_MIGRATION]],
}
T0_MS = 1_767_225_600_000  # 2026-01-01


async def _prepare(dsn: str, schema: str, statements: list[str], identities: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
        await conn.execute(f"SET search_path = {schema}")
        for version, sql in available_migrations():
            if version != HOT_MIGRATION:
                await conn.execute(sql)
        for statement in statements:
            await conn.execute(statement)
        # the population, as the sink's first sightings would have left it (the fill factor applies)
        await conn.execute("""
            INSERT INTO last_alert (tenant, fingerprint, alert_id, name, status, severity, provider_type,
                                    content_hash, first_received, last_received, received_count, source_marks)
            SELECT 'bench', 'fp-' || i, gen_random_uuid(), 'HighLatency ' || i, 'firing', 'warning', 'prometheus',
                   md5(i::text), to_timestamp($2 / 1000.0), to_timestamp($2 / 1000.0), 1, jsonb_build_object('alerts:0', i)
            FROM generate_series(0, $1 - 1) AS i""", identities, T0_MS)
        await conn.execute("VACUUM ANALYZE last_alert")
    finally:
        await conn.close()


async def _stats(dsn: str, schema: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("""
            SELECT n_tup_upd, n_tup_hot_upd, pg_table_size(relid) AS heap, pg_indexes_size(relid) AS indexes
            FROM pg_stat_user_tables WHERE schemaname = $1 AND relname = 'last_alert'""", schema)
        counted = await conn.fetchval(f"SELECT sum(received_count) FROM {schema}.last_alert")
        return {**dict(row), "counted": int(counted)}
    finally:
        await conn.close()


async def run(dsn: str, identities: int, batches: int, per_batch: int, seed: int = 1) -> dict[str, Any]:
    rng = random.Random(seed)
    schemas = {name: f"lamicro_{os.getpid()}_{i}" for i, name in enumerate(VARIANTS)}
    sinks: dict[str, PostgresSink] = {}
    try:
        for name, statements in VARIANTS.items():
            await _prepare(dsn, schemas[name], statements, identities)
            sinks[name] = PostgresSink(with_search_path(dsn, schemas[name]), pool_size=1)
            await sinks[name].start()
        pids = {name: await sink._pool.fetchval("SELECT pg_backend_pid()") for name, sink in sinks.items()}
        cpu = {name: 0.0 for name in VARIANTS}
        walls: dict[str, list[float]] = {name: [] for name in VARIANTS}
        position = identities
        for b in range(batches):
            sightings = []
            for _ in range(per_batch):
                position += 1
                i = rng.randrange(identities)
                sightings.append(Sighting("bench", f"fp-{i}", T0_MS + position, 0, position, None, "alerts:0"))
            batch = WriteBatch(sightings=sightings)
            order = list(VARIANTS)
            rng.shuffle(order)  # no variant always first after the shared pause
            for name in order:
                before = backend_cpu(pids[name])
                started = time.perf_counter()
                await sinks[name].write(batch)
                walls[name].append(time.perf_counter() - started)
                cpu[name] += (backend_cpu(pids[name]) or 0.0) - (before or 0.0)
            if (b + 1) % max(1, batches // 10) == 0:
                print(f"  {b + 1}/{batches} batches", flush=True)
        for sink in sinks.values():  # a backend flushes its statistics when it disconnects
            await sink.close()
        await asyncio.sleep(0.5)
        result: dict[str, Any] = {"identities": identities, "batches": batches, "sightings_per_batch": per_batch,
                                  "variants": {}}
        for name in VARIANTS:
            stats = await _stats(dsn, schemas[name])
            ms = sorted(w * 1000 for w in walls[name])
            tail = [w * 1000 for w in walls[name][-max(1, batches // 10):]]
            result["variants"][name] = {
                "ms_per_batch_p50": round(statistics.median(ms), 1),
                "ms_per_batch_p90": round(ms[int(len(ms) * 0.9)], 1),
                "ms_per_batch_last_tenth": round(statistics.mean(tail), 1),
                "server_cpu_ms_per_1000_sightings": round(cpu[name] * 1000 / (batches * per_batch) * 1000, 1),
                "hot_update_share": round(stats["n_tup_hot_upd"] / max(1, stats["n_tup_upd"]), 3),
                "heap_mib": round(stats["heap"] / 2**20, 1), "indexes_mib": round(stats["indexes"] / 2**20, 1),
                "sightings_counted": stats["counted"],
            }
        return result
    finally:
        for sink in sinks.values():
            await sink.close()
        conn = await asyncpg.connect(dsn)
        try:
            for schema in schemas.values():
                await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        finally:
            await conn.close()


def markdown(r: dict[str, Any]) -> str:
    return variants_table(
        f"{r['batches']} batches of {r['sightings_per_batch']:,} sightings over {r['identities']:,} identities",
        [("ms/batch p50", lambda v: v["ms_per_batch_p50"]), ("p90", lambda v: v["ms_per_batch_p90"]),
         ("last tenth", lambda v: v["ms_per_batch_last_tenth"]),
         ("server CPU ms / 1000 sightings", lambda v: v["server_cpu_ms_per_1000_sightings"]),
         ("HOT updates", lambda v: f"{v['hot_update_share']:.1%}"), ("heap MiB", lambda v: v["heap_mib"]),
         ("indexes MiB", lambda v: v["indexes_mib"])],
        r["variants"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dsn", default=os.environ.get("ALERTSTREAM_DATABASE_URL"))
    parser.add_argument("--identities", type=int, default=110_000, help="the heavy mix's population")
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--per-batch", type=int, default=1400, help="sightings per sink write (the heavy mix: ~1,400)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if not args.dsn:
        parser.error("no --dsn and no ALERTSTREAM_DATABASE_URL (`alertstream stack up` starts one)")
    result = asyncio.run(run(args.dsn, args.identities, args.batches, args.per_batch))
    publish(result, markdown(result), args.json)


if __name__ == "__main__":
    main()
