"""`alertstream dlq` against the session's real broker, worker and Postgres: bad records reach the
DLQ, are listed by reason and tenant, inspected, and replayed after a fix (a corrected header)."""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import subprocess
import sys
import uuid

import asyncpg
import orjson
import pytest
from confluent_kafka import Producer

from config.settings import Settings
from streams import dlq, dlq_cli
from streams.demo import example
from tests.conftest import REPO, settings_env, wait_until

pytestmark = pytest.mark.integration

TENANT = f"dlq-{uuid.uuid4().hex[:8]}"  # other tests write to the same DLQ: everything here is filtered by it
MALFORMED = b'{"name": "cut off", "status": '
NAMELESS = orjson.dumps({"status": "firing", "severity": "high"})
FINGERPRINT = f"dlq-replay-{uuid.uuid4().hex[:8]}"


def fixable_alert() -> bytes:
    body = copy.deepcopy(example("keep_generic_alertdto.json"))
    body.update(name="replayed after a fix", fingerprint=FINGERPRINT)
    return orjson.dumps(body)


def produce(settings: Settings, records: list[tuple[str, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": settings.require_kafka(), "acks": "all"})
    failures = []
    for provider, value in records:
        producer.produce(settings.topic_alerts, key=provider.encode(), value=value,
                         headers=[("provider", provider.encode()), ("tenant", TENANT.encode())],
                         on_delivery=lambda err, _msg: failures.append(err) if err else None)
    assert producer.flush(30) == 0 and not failures


def ours(settings: Settings, **selection) -> list[dlq.DeadLetterRecord]:  # noqa: ANN003
    """Our tenant's DLQ records, read with the module the CLI uses."""
    chosen = dlq.Selection(tenants=frozenset({TENANT}), default_tenant=settings.default_tenant, **selection)
    return list(dlq.read_selected(settings, chosen, idle_s=5))


def cli(capsys: pytest.CaptureFixture[str], settings: Settings, *argv: str) -> tuple[int, str, str]:
    """`alertstream dlq ...` in this process: the subcommands registered on a bare parser, as cli.py does."""
    parser = argparse.ArgumentParser(prog="alertstream")
    dlq_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["dlq", *argv])
    capsys.readouterr()
    code = args.func(args, settings)
    out, err = capsys.readouterr()
    return code, out, err


def last_alert(dsn: str) -> list[asyncpg.Record]:
    async def query():  # noqa: ANN202
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetch("SELECT fingerprint, name, provider_type, received_count FROM last_alert WHERE tenant = $1", TENANT)
        finally:
            await conn.close()
    return asyncio.run(query())


@pytest.fixture(scope="module")
def dead_lettered(worker, pipeline_settings: Settings) -> dict[str, dlq.DeadLetterRecord]:  # noqa: ANN001
    """Three bad records of our tenant, waited for until they are in the DLQ; by reason."""
    produce(pipeline_settings, [("keep", MALFORMED), ("keep", NAMELESS), ("generic-v2", fixable_alert())])

    def arrived() -> list[dlq.DeadLetterRecord] | None:
        assert worker.proc.poll() is None, f"worker died:\n{worker.log_tail()}"
        found = ours(pipeline_settings)
        return found if len(found) >= 3 else None

    found = wait_until(arrived, timeout=120, interval=1, what="three records of our tenant in the DLQ")
    assert len(found) == 3
    return {r.reason: r for r in found}


def test_bad_records_are_dead_lettered_with_their_reason(dead_lettered, pipeline_settings: Settings) -> None:  # noqa: ANN001
    assert set(dead_lettered) == {"malformed_json", "missing_field", "unknown_provider"}
    assert dead_lettered["malformed_json"].value == MALFORMED
    assert dead_lettered["unknown_provider"].provider() == "generic-v2"
    for record in dead_lettered.values():
        assert record.header("dlq_topic") == pipeline_settings.topic_alerts and record.attempts == 1


def test_list_filters_by_reason_and_tenant(dead_lettered, pipeline_settings: Settings, capsys) -> None:  # noqa: ANN001
    code, out, _ = cli(capsys, pipeline_settings, "list", "--tenant", TENANT, "--reason", "malformed_json",
                       "--reason", "unknown_provider")
    assert code == 0
    lines = out.splitlines()
    expected = {dead_lettered["malformed_json"].position, dead_lettered["unknown_provider"].position}
    assert {line.split()[1] for line in lines[:2]} == expected
    assert lines[2].startswith("2 records in ")
    assert sorted(line.split() for line in lines[3:]) == [["1", "malformed_json"], ["1", "unknown_provider"]]
    unknown = next(line for line in lines[:2] if "unknown_provider" in line)
    assert "generic-v2" in unknown and TENANT in unknown and "no normalizer" in unknown
    assert f"{pipeline_settings.topic_alerts}/" in unknown  # the source topic/partition@offset

    code, out, err = cli(capsys, pipeline_settings, "list", "--tenant", TENANT, "--since-minutes", "30", "--json")
    items = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and sorted(i["reason"] for i in items) == ["malformed_json", "missing_field", "unknown_provider"]
    assert all(i["tenant"] == TENANT and i["source"]["topic"] == pipeline_settings.topic_alerts for i in items)
    assert err.startswith("3 records in ")

    code, out, _ = cli(capsys, pipeline_settings, "list", "--tenant", TENANT, "--until", "2020-01-01T00:00:00Z")
    assert code == 0 and out.startswith("0 records in ")


def test_show_prints_every_header_and_the_value(dead_lettered, pipeline_settings: Settings, capsys) -> None:  # noqa: ANN001
    record = dead_lettered["unknown_provider"]
    code, out, _ = cli(capsys, pipeline_settings, "show", f"{record.partition}:{record.offset}")
    assert code == 0
    headers = {line.split()[0]: line.split()[1] for line in out.split("\nheaders:\n")[1].split("\nvalue")[0].splitlines()}
    assert headers["provider"] == "generic-v2" and headers["tenant"] == TENANT
    assert headers["dlq_reason"] == "unknown_provider" and headers["dlq_topic"] == pipeline_settings.topic_alerts
    assert {"dlq_detail", "dlq_partition", "dlq_offset", "dlq_first_failure_ms", "dlq_attempts"} <= set(headers)
    assert "value (JSON" in out and '"name": "replayed after a fix"' in out

    malformed = dead_lettered["malformed_json"]
    code, out, _ = cli(capsys, pipeline_settings, "show", malformed.position)
    assert code == 0 and "value (text, not JSON" in out and MALFORMED.decode() in out

    code, _, err = cli(capsys, pipeline_settings, "show", f"{record.partition}:{10**9}")
    assert code == 1 and "no record" in err


def test_replay_with_a_corrected_header_stores_the_alert(dead_lettered, pipeline_settings: Settings, capsys) -> None:  # noqa: ANN001
    dsn = pipeline_settings.require_database_url()
    selection = ("--tenant", TENANT, "--reason", "unknown_provider", "--set-header", "provider=keep")
    code, out, _ = cli(capsys, pipeline_settings, "replay", *selection, "--dry-run")
    assert code == 0 and "would replay 1 records" in out and f"→ {pipeline_settings.topic_alerts}" in out

    code, out, _ = cli(capsys, pipeline_settings, "replay", *selection, "--to", pipeline_settings.topic_alerts)
    assert code == 0, out
    assert out.splitlines()[0].startswith("replayed 1 records") and "unknown_provider" in out
    rows = wait_until(lambda: last_alert(dsn), timeout=120, interval=1, what="the replayed alert in last_alert")
    assert [(r["fingerprint"], r["name"], r["provider_type"]) for r in rows] == [(FINGERPRINT, "replayed after a fix", "keep")]

    # the replayed input record: original value, corrected header, where it came from, one more attempt
    source = dead_lettered["unknown_provider"]
    replayed = [r for r in dlq.read_topic(pipeline_settings, pipeline_settings.topic_alerts, idle_s=5)
                if r.header("tenant") == TENANT and r.header(dlq.REPLAYED_FROM)]
    assert len(replayed) == 1  # the dry run sent nothing
    assert replayed[0].value == source.value and replayed[0].key == source.key
    assert dict(replayed[0].headers) == {
        "provider": b"keep", "tenant": TENANT.encode(),
        "dlq_first_failure_ms": source.header("dlq_first_failure_ms").encode(),
        "dlq_replayed_from": source.position.encode(), "dlq_attempts": b"2",
    }


def test_a_replay_that_fails_again_is_dead_lettered_again(dead_lettered, pipeline_settings: Settings, capsys) -> None:  # noqa: ANN001
    """No fix for a missing `name`: replaying it sends it back to the DLQ, marked as replayed."""
    original = dead_lettered["missing_field"]
    code, out, _ = cli(capsys, pipeline_settings, "replay", "--tenant", TENANT, "--reason", "missing_field")
    assert code == 0 and out.startswith("replayed 1 records")

    def again() -> dlq.DeadLetterRecord | None:
        found = [r for r in ours(pipeline_settings, reasons=frozenset({"missing_field"})) if r.header(dlq.REPLAYED_FROM)]
        return found[0] if found else None

    second = wait_until(again, timeout=120, interval=1, what="the replayed record back in the DLQ")
    assert second.header(dlq.REPLAYED_FROM) == original.position
    assert second.value == original.value
    assert len(ours(pipeline_settings, reasons=frozenset({"missing_field"}))) == 2


def test_a_record_that_fails_again_shows_how_often_it_was_tried(dead_lettered, pipeline_settings: Settings) -> None:  # noqa: ANN001
    original = dead_lettered["missing_field"]
    found = wait_until(lambda: [r for r in ours(pipeline_settings, reasons=frozenset({"missing_field"}))
                                if r.header(dlq.REPLAYED_FROM)], timeout=60, interval=1, what="the replayed record")
    assert found[0].attempts == 2
    assert found[0].header(dlq.FIRST_FAILURE) == original.header(dlq.FIRST_FAILURE)


def test_command_runs_from_the_environment(dead_lettered, pipeline_settings: Settings) -> None:  # noqa: ANN001
    """As an operator runs it: a fresh process, settings from ALERTSTREAM_* only."""
    harness = ("import argparse, sys\n"
               "from streams import dlq_cli\nfrom config.settings import Settings\n"
               "p = argparse.ArgumentParser(prog='alertstream'); dlq_cli.add_parser(p.add_subparsers(dest='command'))\n"
               "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a, Settings()))")
    done = subprocess.run([sys.executable, "-c", harness, "dlq", "list", "--tenant", TENANT, "--reason", "malformed_json"],
                          cwd=REPO, env=settings_env(pipeline_settings), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert dead_lettered["malformed_json"].position in done.stdout and "1 records in" in done.stdout
