"""The archiver on the real stack: Postgres (a database of its own) → the search store (an index
of its own). Verified before delete, resumable after a store outage mid-run, idempotent, retention
held back until a day is archived, and archived alerts found by federated search exactly once."""

from __future__ import annotations

import asyncio
import uuid
from datetime import date, datetime, timedelta, timezone

import asyncpg
import pytest
from aiohttp import ClientSession, web

from config.settings import RetryConfig, Settings
from query.federated import SearchFilter, search
from query.postgres_reader import PostgresReader
from query.search_reader import SearchReader
from schemas.alert import Alert, NormalizedAlert
from sinks.archiver import archive
from sinks.maintenance import ensure_partition, partitions_of, run_maintenance_on
from sinks.postgres import alert_rows
from sinks.search import make_client
from tests.integration.sinks.test_postgres_maintenance import fresh_database as migrated_database

pytestmark = pytest.mark.integration

TODAY = datetime.now(timezone.utc).date()
OLD_DAYS = [TODAY - timedelta(days=d) for d in (12, 11, 10)]  # 10 and 11 get partitions, 12 stays in DEFAULT
PER_DAY = 25


async def fresh_database(dsn: str) -> str:
    """A new, migrated database of its own (archiving empties days: no other test's rows)."""
    return await migrated_database(dsn, "archive")


def alert_on(day: date, n: int, tenant: str) -> NormalizedAlert:
    ms = int(datetime(day.year, day.month, day.day, 8, tzinfo=timezone.utc).timestamp() * 1000) + n * 1000
    a = Alert(name=f"disk full {n}", last_received="2025-01-15T10:00:00Z", fingerprint=f"fp-{day}-{n}", tenant=tenant,
              severity="critical", labels={"cluster": "c1"}, message=f"volume {n} is full")
    return NormalizedAlert(str(uuid.uuid4()), ms, f"h{n}", a)


async def seed(dsn: str) -> dict[str, list[NormalizedAlert]]:
    """PER_DAY alerts of tenant acme (and 5 of tenant other) on each old day, and 10 of today."""
    conn = await asyncpg.connect(dsn)
    try:
        for day in OLD_DAYS[1:]:
            await ensure_partition(conn, "alert", day)
        await ensure_partition(conn, "alert", TODAY)
        out = {"old": [], "recent": [], "other": []}
        for day in OLD_DAYS:
            out["old"] += [alert_on(day, n, "acme") for n in range(PER_DAY)]
            out["other"] += [alert_on(day, n, "other") for n in range(5)]
        out["recent"] = [alert_on(TODAY, n, "acme") for n in range(10)]
        rows = alert_rows(out["old"] + out["other"] + out["recent"])
        await conn.copy_records_to_table("alert", records=rows, columns=[
            "id", "received_at", "tenant", "fingerprint", "provider_type", "provider_id",
            "name", "status", "severity", "content_hash", "event"])
        return out
    finally:
        await conn.close()


@pytest.fixture
async def env(stack_env: dict[str, str]) -> tuple[Settings, dict[str, list[NormalizedAlert]]]:
    dsn = await fresh_database(stack_env["ALERTSTREAM_DATABASE_URL"])
    settings = Settings(database_url=dsn, search_url=stack_env["ALERTSTREAM_SEARCH_URL"],
                        search_index=f"arch-{uuid.uuid4().hex[:8]}", search_replicas=0, archive_batch_size=10,
                        archive_enabled=True, pg_alert_retention_days=5,
                        sink_retry=RetryConfig(initial_backoff_s=0.05, max_backoff_s=0.2, attempt_timeout_s=10))
    return settings, await seed(dsn)


async def pg_ids(settings: Settings) -> set[str]:
    conn = await asyncpg.connect(settings.require_database_url())
    try:
        return {str(r["id"]) for r in await conn.fetch("SELECT id FROM alert")}
    finally:
        await conn.close()


async def store_ids(settings: Settings) -> list[str]:
    client = make_client(settings.search_url)
    try:
        await client.indices.refresh(index=settings.search_index)
        response = await client.search(index=settings.search_index, size=1000, query={"match_all": {}})
        return [h["_id"] for h in response["hits"]["hits"]]
    finally:
        await client.close()


async def progress(settings: Settings) -> dict[date, asyncpg.Record]:
    conn = await asyncpg.connect(settings.require_database_url())
    try:
        return {r["day"]: r for r in await conn.fetch("SELECT * FROM archive_progress")}
    finally:
        await conn.close()


async def test_retention_keeps_unarchived_days_and_the_archiver_moves_them(env) -> None:  # noqa: ANN001
    settings, seeded = env
    conn = await asyncpg.connect(settings.require_database_url())
    try:
        report = await run_maintenance_on(conn, settings)  # retention 5 days, nothing archived yet
        assert report.partitions["alert"].retired == [] and report.partitions["alert"].default_rows_deleted == 0
        assert set(OLD_DAYS[1:]) <= set(await partitions_of(conn, "alert"))
    finally:
        await conn.close()
    everything = {a.uid for group in seeded.values() for a in group}
    assert await pg_ids(settings) == everything  # nothing dropped

    report = await archive(settings)
    assert [d.archived for d in report.days] == [True, True, True]
    assert sum(d.verified for d in report.days) == len(seeded["old"]) + len(seeded["other"])
    assert await pg_ids(settings) == {a.uid for a in seeded["recent"]}
    ids = await store_ids(settings)
    assert sorted(ids) == sorted(a.uid for a in seeded["old"] + seeded["other"])  # each exactly once
    conn = await asyncpg.connect(settings.require_database_url())
    try:
        assert not set(OLD_DAYS) & set(await partitions_of(conn, "alert"))  # partitions dropped after the verify
    finally:
        await conn.close()
    assert {d: (r["state"], r["verified"], r["missing"]) for d, r in (await progress(settings)).items()} == {
        d: ("archived", PER_DAY + 5, 0) for d in OLD_DAYS}

    again = await archive(settings)  # idempotent: nothing left to do, nothing doubled
    assert again.days == [] and sorted(await store_ids(settings)) == sorted(ids)


class FailingProxy:
    """A real HTTP proxy to the store that forwards the first `bulks` bulk requests, then answers
    503 to everything: the store going away in the middle of an archiver run (osmem cannot be
    made to fail on cue)."""

    def __init__(self, upstream: str, bulks: int) -> None:
        self.upstream, self.bulks = upstream.rstrip("/"), bulks

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.endswith("/_bulk"):
            if self.bulks <= 0:
                return web.json_response({"error": "unavailable", "status": 503}, status=503)
            self.bulks -= 1
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("content-type", "accept")}
        async with ClientSession() as s, s.request(request.method, self.upstream + request.path_qs,
                                                   data=await request.read(), headers=headers) as up:
            keep = {k: v for k, v in up.headers.items() if k.lower() in ("content-type", "x-elastic-product")}
            return web.Response(body=await up.read(), status=up.status, headers=keep)


async def test_a_run_stopped_by_a_store_outage_resumes_from_its_checkpoint(env) -> None:  # noqa: ANN001
    settings, seeded = env
    proxy = FailingProxy(settings.search_url, bulks=4)  # 40 rows of the first day (30 rows) and the next
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # noqa: SLF001
    try:
        with pytest.raises(Exception, match="503"):
            await archive(settings.model_copy(update={"search_url": url}))
    finally:
        await runner.cleanup()
    stopped = await progress(settings)
    first = stopped[OLD_DAYS[0]]
    assert first["state"] == "archived"
    second = stopped[OLD_DAYS[1]]
    assert second["state"] == "copying" and second["copied"] == 10 and second["last_id"] is not None
    assert len(await pg_ids(settings)) == len(seeded["old"]) + len(seeded["other"]) + len(seeded["recent"]) - (PER_DAY + 5)

    report = await archive(settings)  # the store is back: resume
    assert [d.day for d in report.days] == OLD_DAYS[1:]
    assert report.days[0].copied == PER_DAY + 5 - 10  # only what was not copied before the outage
    assert await pg_ids(settings) == {a.uid for a in seeded["recent"]}
    assert sorted(await store_ids(settings)) == sorted(a.uid for a in seeded["old"] + seeded["other"])


async def test_archived_alerts_are_found_by_federated_search_exactly_once(env, stack_env) -> None:  # noqa: ANN001
    settings, seeded = env
    # the live indexer has already written the recent alerts and some old ones to the store too
    from core.records import WriteBatch
    from sinks.search import SearchSink

    sink = SearchSink(make_client(settings.search_url), settings.search_index, settings)
    await sink.start()
    await sink.write(WriteBatch(stored=seeded["recent"] + seeded["old"][:7]))
    await sink.close()
    await archive(settings)

    pool = await asyncpg.create_pool(settings.require_database_url(), min_size=1, max_size=2)
    client = make_client(settings.search_url)
    try:
        readers = {"postgres": PostgresReader(pool), "search": SearchReader(client, settings.search_index)}
        target = seeded["old"][3]
        flt = SearchFilter(tenant="acme", fingerprint=target.alert.fingerprint)
        page = await search(readers, flt, None, 10)
        assert [(h.alert_id, h.store) for h in page.hits] == [(target.uid, "search")] and page.next_key is None

        # every acme alert, 7 per page, across the boundary between the stores: no gap, no repeat
        flt = SearchFilter(tenant="acme")
        got, after, stores = [], None, set()
        while True:
            page = await search(readers, flt, after, 7)
            got += page.hits
            stores |= {h.store for h in page.hits}
            if page.next_key is None:
                break
            after = page.next_key
        expected = sorted(seeded["recent"] + seeded["old"], key=lambda a: (a.received_at_ms, a.uid), reverse=True)
        assert [h.alert_id for h in got] == [a.uid for a in expected]
        assert stores == {"postgres", "search"}
        assert all(h.document["tenant"] == "acme" for h in got)  # tenant `other` never shows
    finally:
        await pool.close()
        await client.close()


async def test_alertstream_archive_command(env) -> None:  # noqa: ANN001
    import subprocess
    import sys

    from tests.conftest import REPO, settings_env

    settings, seeded = env
    proc = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "cli.main", "archive", "--older-than-days", "11"], cwd=REPO,
        env=settings_env(settings.model_copy(update={"archive_enabled": False})), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[:2] for line in lines] == [[str(OLD_DAYS[0]), "archived"]]  # only the day older than 11 days
    assert "verified and deleted 30" in proc.stderr
    assert len(await pg_ids(settings)) == len(seeded["old"]) + len(seeded["other"]) + len(seeded["recent"]) - (PER_DAY + 5)


def test_the_worker_runs_the_archiver_on_its_schedule(stack_env, pipeline_settings, tmp_path) -> None:  # noqa: ANN001
    """A real worker process with archiving enabled archives the old days of its database by itself."""
    from pydantic import SecretStr

    from streams.topics import ensure_topics
    from tests.conftest import WorkerProcess, free_port, isolated, wait_until

    dsn = asyncio.run(fresh_database(stack_env["ALERTSTREAM_DATABASE_URL"]))
    seeded = asyncio.run(seed(dsn))
    settings = isolated(pipeline_settings, f"arch{uuid.uuid4().hex[:6]}").model_copy(update={
        "database_url": SecretStr(dsn), "search_index": f"archw-{uuid.uuid4().hex[:8]}", "search_replicas": 0,
        "archive_enabled": True, "archive_interval_s": 3600.0, "data_dir": tmp_path / "worker", "worker_web_port": free_port()})
    ensure_topics(settings)
    worker = WorkerProcess(settings, tmp_path / "worker.log")
    try:
        wait_until(lambda: asyncio.run(pg_ids(settings)) == {a.uid for a in seeded["recent"]}, timeout=90, interval=1,
                   what="old days archived by the worker")
        assert sorted(asyncio.run(store_ids(settings))) == sorted(a.uid for a in seeded["old"] + seeded["other"])
        assert worker.proc.poll() is None
    finally:
        worker.stop()
