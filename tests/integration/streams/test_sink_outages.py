"""Postgres and the search store stopped mid-stream, then started again: nothing is lost, the
circuit opens and closes by itself, and the worker is never restarted. A stack of its own, since
these tests stop its servers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import urllib.request

import psutil
import pytest

from config.settings import RetryConfig, Settings
from sinks.migrate import migrate
from streams import localstack
from streams.topics import ensure_topics
from tests.conftest import WorkerProcess, free_port, wait_until
from tests.integration.streams.test_pipeline_e2e import generic_alert, produce
from tests.integration.streams.test_worker_restart import sighted_and_rows

pytestmark = pytest.mark.integration
TENANT = "outage"


@pytest.fixture(scope="module")
def outage_stack(tmp_path_factory):  # noqa: ANN001, ANN201
    state_dir = tmp_path_factory.mktemp("outage-stack")
    base = Settings(kafka_bootstrap=None, database_url=None, search_url=None, data_dir=state_dir)
    env = localstack.up(base, state_dir=state_dir)
    asyncio.run(migrate(env["ALERTSTREAM_DATABASE_URL"]))
    settings = Settings(
        kafka_bootstrap=env["ALERTSTREAM_KAFKA_BOOTSTRAP"], database_url=env["ALERTSTREAM_DATABASE_URL"],
        search_url=env["ALERTSTREAM_SEARCH_URL"], data_dir=state_dir / "worker", worker_web_port=free_port(),
        broker_session_timeout_s=10, table_recovery_consistency_check=False,
        sink_retry=RetryConfig(initial_backoff_s=0.2, max_backoff_s=2, attempt_timeout_s=5),
    )
    ensure_topics(settings)
    worker = WorkerProcess(settings, state_dir / "worker.log")
    try:
        yield settings, state_dir, worker
    finally:
        worker.stop()
        localstack.down(state_dir)


def stop_service(state_dir, name: str) -> None:  # noqa: ANN001
    pid = json.loads((state_dir / "stack.json").read_text())[name]["pid"]
    os.kill(pid, signal.SIGINT if name == "postgres" else signal.SIGTERM)
    psutil.wait_procs([psutil.Process(pid)], timeout=30)


def metric(port: int, name: str, labels: str) -> float | None:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(f"{name}{{") and labels in line:
            return float(line.split()[-1])
    return None


def send(settings: Settings, start: int, count: int) -> None:
    records = [("keep", f"o{i}".encode(), generic_alert(50_000 + i)) for i in range(start, start + count)]
    produce(settings.require_kafka(), settings.topic_alerts, records, tenant=TENANT)


def test_postgres_outage_loses_nothing_and_needs_no_restart(outage_stack) -> None:  # noqa: ANN001
    settings, state_dir, worker = outage_stack
    dsn = settings.require_database_url()
    send(settings, 0, 200)
    wait_until(lambda: sighted_and_rows(dsn, TENANT)[0] >= 200, timeout=120, what="before the outage")

    stop_service(state_dir, "postgres")
    send(settings, 200, 300)  # produced while Postgres is down
    wait_until(lambda: (metric(settings.worker_web_port, "alertstream_sink_circuit_state", 'sink="postgres"') or 0) >= 1,
               timeout=60, what="postgres circuit open")
    time.sleep(3)
    localstack.up(Settings(kafka_bootstrap=None, database_url=None, search_url=None), state_dir=state_dir)  # start it again

    wait_until(lambda: sighted_and_rows(dsn, TENANT)[0] >= 500, timeout=120, what="everything written after the outage")
    assert sighted_and_rows(dsn, TENANT) == (500, 500)
    assert worker.proc.poll() is None  # the same worker process throughout
    wait_until(lambda: metric(settings.worker_web_port, "alertstream_sink_circuit_state", 'sink="postgres"') == 0,
               timeout=30, what="postgres circuit closed")


def test_search_store_outage_loses_nothing(outage_stack) -> None:  # noqa: ANN001
    settings, state_dir, worker = outage_stack
    from sinks.search import make_client

    async def indexed() -> int:
        client = make_client(settings.search_url)
        try:
            await client.indices.refresh(index=settings.search_index)
            result = await client.count(index=settings.search_index, query={"term": {"tenant": TENANT}})
            return result["count"]
        except Exception:  # noqa: BLE001 - the index may not exist yet
            return 0
        finally:
            await client.close()

    engine = next(s.engine for s in localstack.status(state_dir) if s.name == "search")
    # a real server keeps its documents across the restart; the in-memory stand-in comes back empty.
    # Every alert row of the tenant is indexed before the outage starts (the indexer lags Postgres)
    rows = sighted_and_rows(settings.require_database_url(), TENANT)[1]
    wait_until(lambda: asyncio.run(indexed()) >= rows, timeout=60, what="earlier alerts indexed")
    before = 0 if engine == "osmem" else asyncio.run(indexed())
    stop_service(state_dir, "search")
    send(settings, 1000, 150)  # new identities: 150 documents to index while the store is down
    wait_until(lambda: (metric(settings.worker_web_port, "alertstream_sink_circuit_state", 'sink="search"') or 0) >= 1,
               timeout=60, what="search circuit open")
    localstack.up(Settings(kafka_bootstrap=None, database_url=None, search_url=None), state_dir=state_dir)

    # the 150 documents of the outage must all arrive, once each
    wait_until(lambda: asyncio.run(indexed()) >= before + 150, timeout=120, what="documents indexed after the outage")
    assert asyncio.run(indexed()) == before + 150
    assert worker.proc.poll() is None
