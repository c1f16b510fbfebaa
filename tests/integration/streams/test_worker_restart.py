"""Dedup state survives a worker restart: a new worker with an empty local store
recovers the table from its changelog and still recognises every identity."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from config.settings import Settings
from streams.topics import ensure_topics
from tests.conftest import WorkerProcess, free_port, isolated, wait_until
from tests.integration.streams.test_pipeline_e2e import generic_alert, produce

pytestmark = pytest.mark.integration

TENANT = "restart"


def restart_settings(stack_env: dict[str, str], data_dir, name: str = "restart") -> Settings:  # noqa: ANN001
    return isolated(Settings(
        kafka_bootstrap=stack_env["ALERTSTREAM_KAFKA_BOOTSTRAP"],
        database_url=stack_env["ALERTSTREAM_DATABASE_URL"],
        search_enabled=False,
        data_dir=data_dir,
        worker_web_port=free_port(),
        broker_session_timeout_s=10,
        # exact changelog end offsets on the local broker (INFRA.md): recovery must be complete
        producer_one_record_batches=True,
    ), name)


def sighted_and_rows(dsn: str, tenant: str = TENANT) -> tuple[int, int]:
    async def query() -> tuple[int, int]:
        conn = await asyncpg.connect(dsn)
        try:
            sighted = await conn.fetchval("SELECT coalesce(sum(received_count), 0) FROM last_alert WHERE tenant = $1", tenant)
            rows = await conn.fetchval("SELECT count(*) FROM alert WHERE tenant = $1", tenant)
            return sighted, rows
        finally:
            await conn.close()
    return asyncio.run(query())


def test_dedup_state_is_recovered_from_the_changelog(stack_env, tmp_path) -> None:  # noqa: ANN001
    first = restart_settings(stack_env, tmp_path / "first")
    ensure_topics(first)
    dsn = first.require_database_url()
    alerts = [("keep", f"r{i}".encode(), generic_alert(10_000 + i)) for i in range(300)]

    def send(records) -> None:  # noqa: ANN001
        produce(first.require_kafka(), first.topic_alerts, [(p, k, v) for p, k, v in records], tenant=TENANT)

    worker = WorkerProcess(first, tmp_path / "first.log")
    try:
        send(alerts)
        wait_until(lambda: sighted_and_rows(dsn)[0] >= 300, timeout=120, what="first worker processed the alerts")
    finally:
        assert worker.stop() == 0, worker.log_tail()

    # a new worker, empty local state: everything it knows comes from the changelog
    second = first.model_copy(update={"data_dir": tmp_path / "second", "worker_web_port": free_port()})
    worker = WorkerProcess(second, tmp_path / "second.log")
    try:
        fresh = [("keep", f"n{i}".encode(), generic_alert(20_000 + i)) for i in range(10)]
        send(alerts + fresh)
        wait_until(lambda: sighted_and_rows(dsn)[0] >= 610, timeout=180, what="second worker processed the re-sends")
    finally:
        worker.stop()
    sighted, rows = sighted_and_rows(dsn)
    assert sighted == 610
    assert rows == 310, "exact re-sends after the restart were stored again: the dedup state was not recovered"
