"""Custom fingerprint and ignore rules are honoured by the running worker (Keep #5370, #6793),
and `alertstream dedup suggest` proposes the field that varies within identities."""

from __future__ import annotations

import asyncio
import copy
import subprocess
import sys

import asyncpg
import orjson
import pytest

from streams.demo import example
from tests.conftest import REPO, settings_env, wait_until
from tests.integration.streams.test_pipeline_e2e import produce

pytestmark = pytest.mark.integration


def alert(name: str, cluster: str, lag: int, fingerprint: str) -> bytes:
    body = copy.deepcopy(example("keep_generic_alertdto.json"))
    body.update(name=name, lag=lag, fingerprint=fingerprint)
    body["labels"]["cluster"] = cluster
    return orjson.dumps(body)


def rows(dsn: str, tenant: str) -> tuple[dict[str, int], int]:
    async def query():  # noqa: ANN202
        conn = await asyncpg.connect(dsn)
        try:
            last = await conn.fetch("SELECT fingerprint, received_count FROM last_alert WHERE tenant = $1", tenant)
            stored = await conn.fetchval("SELECT count(*) FROM alert WHERE tenant = $1", tenant)
            return {r["fingerprint"]: r["received_count"] for r in last}, stored
        finally:
            await conn.close()
    return asyncio.run(query())


def test_rules_file_sets_identity_and_ignored_fields(worker, pipeline_settings) -> None:  # noqa: ANN001
    records = [
        # the producer's own `fingerprint` differs each time: the rule's fields decide identity
        ("keep", b"a", alert("disk full", "eu-1", 10, "x1")),
        ("keep", b"a", alert("disk full", "eu-1", 99, "x2")),   # only extra.lag differs: ignored → duplicate
        ("keep", b"b", alert("disk full", "us-2", 10, "x3")),   # another cluster: another identity
    ]
    produce(pipeline_settings.require_kafka(), pipeline_settings.topic_alerts, records, tenant="ruled")
    # the same payloads in a tenant without rules: Keep's default (the given fingerprint, lag counts)
    produce(pipeline_settings.require_kafka(), pipeline_settings.topic_alerts, records, tenant="unruled")
    dsn = pipeline_settings.require_database_url()
    wait_until(lambda: sum(rows(dsn, "ruled")[0].values()) == 3 and sum(rows(dsn, "unruled")[0].values()) == 3,
               timeout=120, what="both tenants processed")
    ruled, ruled_stored = rows(dsn, "ruled")
    assert sorted(ruled.values()) == [1, 2] and ruled_stored == 2
    assert not {"x1", "x2", "x3"} & set(ruled)
    unruled, unruled_stored = rows(dsn, "unruled")
    assert set(unruled) == {"x1", "x2", "x3"} and unruled_stored == 3


def test_dedup_suggest_names_the_varying_field(pipeline_settings) -> None:  # noqa: ANN001
    records = []
    for i in range(6):  # six identities, each re-sent with a new `reading` value
        for reading in (1, 2, 3):
            body = copy.deepcopy(example("keep_generic_alertdto.json"))
            body.update(name=f"temperature {i}", fingerprint=f"temp-{i}", reading=reading * 7 + i)
            records.append(("keep", f"t{i}".encode(), orjson.dumps(body)))
    produce(pipeline_settings.require_kafka(), pipeline_settings.topic_alerts, records, tenant="suggest")
    result = subprocess.run([sys.executable, "-m", "cli.main", "dedup", "suggest", "--idle-s", "3"], cwd=REPO,
                            env=settings_env(pipeline_settings), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "suggest/keep: ignore extra.reading" in result.stderr
    assert "extra.reading" in result.stdout  # the rules file to apply, as a config change
    assert "labels." not in "".join(line for line in result.stderr.splitlines() if line.startswith("# suggest/"))
