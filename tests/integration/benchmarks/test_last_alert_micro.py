"""`benchmarks.last_alert_micro` on the session's real PostgreSQL: the variants are what they claim
(HOT updates only where no indexed column changes), every sighting lands, and the scratch schemas go."""

from __future__ import annotations

import asyncpg
import pytest

from benchmarks.last_alert_micro import BEFORE, FILLFACTOR_ONLY, MIGRATED, markdown, run

pytestmark = pytest.mark.integration


async def test_only_the_table_as_migrated_updates_in_place(stack_env) -> None:  # noqa: ANN001
    dsn = stack_env["ALERTSTREAM_DATABASE_URL"]
    result = await run(dsn, identities=500, batches=4, per_batch=200)
    variants = result["variants"]
    assert variants[BEFORE]["hot_update_share"] == 0.0
    assert variants[FILLFACTOR_ONLY]["hot_update_share"] == 0.0  # room on the page is not enough
    assert variants[MIGRATED]["hot_update_share"] > 0.9  # a full page: not HOT
    for v in variants.values():  # every identity's first sighting, and each one written since
        assert v["sightings_counted"] == 500 + 4 * 200
    assert f"| {MIGRATED} |" in markdown(result)
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname LIKE 'lamicro_%'") == 0
    finally:
        await conn.close()
