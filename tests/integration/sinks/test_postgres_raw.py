"""alert_raw writes against the real Postgres: policy rows in, replays add nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from config.settings import RetryConfig
from core.records import DeadLetter, RawRecord
from sinks.base import CircuitBreaker
from sinks.raw_storage import RawBatch, RawPolicy, RawSink, raw_rows_for

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def dsn(stack_env: dict[str, str]) -> str:
    return stack_env["ALERTSTREAM_DATABASE_URL"]


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(dsn)
    yield conn
    await conn.close()


async def test_raw_rows_are_written_once_and_errors_are_findable(dsn: str, db: asyncpg.Connection) -> None:
    tenant = f"raw-{uuid.uuid4().hex[:8]}"
    topic = f"alerts-{tenant}"  # positions unique to this test
    policy = RawPolicy.from_yaml(f"default: 'off'\nrules:\n  - tenant: {tenant}\n    mode: all\n    deny: [secret]\n")
    records = [RawRecord(topic, 0, i, 1_763_800_000_000 + i, None, b'{"name": "n", "secret": "s", "pad": "' + b"x" * 3000 + b'"}',
                         {"tenant": tenant.encode(), "provider": b"keep"}) for i in range(50)]
    records.append(RawRecord(topic, 0, 50, 1_763_800_000_050, None, b"\x00\xff not json", {"tenant": tenant.encode()}))
    letters = [DeadLetter(records[-1], "malformed_json", "unexpected byte")]
    rows = raw_rows_for(records, letters, policy, default_tenant="default")
    assert len(rows) == 51

    sink = RawSink(dsn, pool_size=1)
    await sink.start()
    try:
        async def no_dead_letters(item, reason):  # noqa: ANN001, ANN202
            raise AssertionError("raw rows are never dead-lettered")

        await CircuitBreaker(sink, RetryConfig(), no_dead_letters).write(RawBatch(rows))
        assert await sink.write(RawBatch(rows)) == 0  # the replayed batch adds nothing
    finally:
        await sink.close()

    assert await db.fetchval("SELECT count(*) FROM alert_raw WHERE tenant = $1", tenant) == 51
    assert b"secret" not in await db.fetchval("SELECT raw FROM alert_raw WHERE tenant = $1 AND error IS NULL LIMIT 1", tenant)
    errors = await db.fetch("SELECT raw, error FROM alert_raw WHERE tenant = $1 AND error IS NOT NULL ORDER BY received_at DESC", tenant)
    # under a deny list a payload that is not JSON cannot be filtered: withheld, its error kept
    assert [(r["raw"], r["error"]) for r in errors] == [(None, "malformed_json: unexpected byte")]
    # the 3 KB payloads are compressed in place (lz4 where the server has it, else pglz)
    stored = await db.fetchval("SELECT max(pg_column_size(raw)) FROM alert_raw WHERE tenant = $1 AND error IS NULL", tenant)
    assert stored < 1000
