"""The deduplicate stage's checkpoint order, driven without a broker: fakes for the row sink, the
indexer hand-off, the DLQ and the changelog (their failures are what is tested); the dedup table is
a real Faust table on a real RocksDB. A failure at any step raises before the state moves, so the
caller acks nothing that is not durable, and the batch run again stores nothing twice."""

from __future__ import annotations

from pathlib import Path

import faust
import msgspec
import pytest

from core.records import WriteBatch
from pipeline.deduplicator import PackedRecord
from schemas.alert import Alert, NormalizedAlert, NormalizedBatch
from schemas.rules import DEFAULT_RULES
from streams.dedup_stage import DeduplicateStage
from tables.dedup_state import DedupStore, make_table, state_key

_encode = msgspec.msgpack.Encoder().encode


class Steps:
    """Every collaborator in one place: what ran, in order, and which step fails next."""

    def __init__(self) -> None:
        self.log: list[str] = []
        self.rows: list[str] = []
        self.handed: list[str] = []
        self.dead: list[str] = []
        self.changelog: list[tuple[int, bytes, bytes | None]] = []
        self.failing: str | None = None

    def _step(self, name: str) -> None:
        if self.failing == name:
            raise ConnectionError(f"{name} unavailable")
        self.log.append(name)

    async def write_rows(self, batch: WriteBatch) -> None:
        self._step("rows")
        self.rows += [i.uid for i in batch.stored]

    async def hand_off(self, plan) -> None:  # noqa: ANN001
        self._step("hand_off")
        self.handed += [i.uid for i in plan.batch.stored]

    async def dead_letter_record(self, record, *, reason: str, detail: str) -> None:  # noqa: ANN001
        self._step("dlq")
        self.dead.append(f"{record.topic}[{record.partition}]@{record.offset}:{reason}")

    async def send(self, records: list[tuple[int, bytes, bytes | None]]) -> dict[int, int]:
        self._step("changelog")
        self.changelog += records
        return {partition: len(self.changelog) - 1 for partition, _, _ in records}


class Event:
    def __init__(self, partition: int, offset: int) -> None:
        self.message = type("Message", (), {"partition": partition, "offset": offset})()


def item(uid: str, fingerprint: str, content: str) -> NormalizedAlert:
    alert = Alert(name=f"alert {fingerprint}", fingerprint=fingerprint, tenant="t", provider_type="keep",
                  last_received="2026-01-01T00:00:00.000Z")
    return NormalizedAlert(uid, 1_000, content, alert, "alerts", 0, 0)


def record(partition: int, offset: int, *alerts: NormalizedAlert) -> PackedRecord:
    return PackedRecord(partition, offset, _encode(NormalizedBatch(list(alerts))), Event(partition, offset))


@pytest.fixture
def steps() -> Steps:
    return Steps()


@pytest.fixture
def stage(tmp_path: Path, steps: Steps) -> DeduplicateStage:
    app = faust.App("stage-test", store="rocksdb://", datadir=str(tmp_path), broker="kafka://127.0.0.1:1")
    store = DedupStore(make_table(app, 2), steps)
    return DeduplicateStage("deduplicate", "alerts.normalized", store=store, rules=DEFAULT_RULES,
                            write_rows=steps.write_rows, hand_off=steps.hand_off,
                            dead_letter_record=steps.dead_letter_record)


def batch() -> list[PackedRecord]:
    return [record(0, 10, item("u1", "fp-a", "h1"), item("u2", "fp-a", "h1")),
            record(1, 4, item("u3", "fp-b", "h1")),
            PackedRecord(1, 5, b"\xc1 not msgpack", Event(1, 5))]


async def test_durable_first_then_changelog_then_state(stage: DeduplicateStage, steps: Steps) -> None:
    plan = await stage.process(batch())
    assert set(steps.log[:3]) == {"rows", "hand_off", "dlq"} and steps.log[3:] == ["changelog"]
    assert steps.rows == steps.handed == ["u1", "u3"]  # u2: an exact repeat within the batch
    assert steps.dead == ["alerts.normalized[1]@5:undecodable"]
    assert {key for _, key, _ in steps.changelog} == {state_key("t", "fp-a"), state_key("t", "fp-b")}
    assert stage._store.get(state_key("t", "fp-a"), Event(0, 0)) is not None
    assert [s.stored is not None for s in plan.batch.sightings] == [True, False, True]


@pytest.mark.parametrize("failing", ["rows", "hand_off", "dlq", "changelog"])
async def test_a_failed_step_raises_before_the_state_moves_and_a_rerun_stores_nothing_twice(
        stage: DeduplicateStage, steps: Steps, failing: str) -> None:
    steps.failing = failing
    with pytest.raises(ExceptionGroup if failing != "changelog" else ConnectionError):
        await stage.process(batch())
    # not durable, so not to be acked: the table is where it was, nothing was taken as seen
    assert stage._store.get(state_key("t", "fp-a"), Event(0, 0)) is None
    assert "changelog" not in steps.log
    steps.failing = None
    await stage.process(batch())  # the same batch again, as after a restart
    assert stage._store.get(state_key("t", "fp-a"), Event(0, 0)) is not None
    assert sorted(set(steps.rows)) == ["u1", "u3"]  # a repeat of a written row: the sink ignores it (ids)
    again = await stage.process(batch())  # a third time, now that the state holds them: duplicates only
    assert again.batch.stored == []


async def test_rows_the_sink_refused_keep_their_old_state(stage: DeduplicateStage, steps: Steps) -> None:
    async def refuse_u3(batch: WriteBatch) -> None:
        stage.rejected.add("u3")  # dead-lettered by the breaker: its identity must stay unknown

    stage._write_rows = refuse_u3
    await stage.process(batch())
    assert stage._store.get(state_key("t", "fp-b"), Event(1, 0)) is None
    assert stage._store.get(state_key("t", "fp-a"), Event(0, 0)) is not None


async def test_expired_identities_are_deleted_in_the_same_checkpoint(tmp_path: Path, steps: Steps) -> None:
    app = faust.App("stage-ttl", store="rocksdb://", datadir=str(tmp_path), broker="kafka://127.0.0.1:1")
    store = DedupStore(make_table(app, 2), steps)
    now = [1_000]
    stage = DeduplicateStage("deduplicate", "alerts.normalized", store=store, rules=DEFAULT_RULES,
                             write_rows=steps.write_rows, hand_off=steps.hand_off,
                             dead_letter_record=steps.dead_letter_record, ttl_ms=10_000, clock_ms=lambda: now[0])
    await stage.process([record(0, 1, item("u1", "fp-old", "h1"))])
    now[0] = 1_000 + 60_000
    await stage.process([record(0, 2, item("u2", "fp-new", "h1"))])
    assert (0, state_key("t", "fp-old"), None) in steps.changelog  # a tombstone
    assert store.get(state_key("t", "fp-old"), Event(0, 0)) is None
    assert store.get(state_key("t", "fp-new"), Event(0, 0)) is not None
