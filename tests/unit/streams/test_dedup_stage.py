"""The deduplicate stage's checkpoint order, driven without a broker: fakes for the row sink, the
indexer hand-off, the DLQ and the changelog (their failures are what is tested); the dedup table is
a real Faust table on a real RocksDB. A failure at any step raises before the state moves, so the
caller acks nothing that is not durable, and the batch run again stores nothing twice."""

from __future__ import annotations

from pathlib import Path

import asyncio

import faust
import msgspec
import pytest

from core.records import WriteBatch
from pipeline.deduplicator import PackedRecord
from pipeline.normalizer import pack
from schemas.alert import Alert, NormalizedAlert
from schemas.rules import DEFAULT_RULES
from streams.dedup_stage import BatchNotDurable, DeduplicateStage
from tables.dedup_state import DedupStore, make_table, positions_key, state_key


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
    """One sighting; "u7" sits at position 7 of source partition 0 (the same uid: the same sighting)."""
    alert = Alert(name=f"alert {fingerprint}", fingerprint=fingerprint, tenant="t", provider_type="keep",
                  last_received="2026-01-01T00:00:00.000Z")
    return NormalizedAlert(uid, 1_000, content, alert, "alerts", 0, int(uid.lstrip("u")))


def record(partition: int, offset: int, *alerts: NormalizedAlert) -> PackedRecord:
    return PackedRecord(partition, offset, pack(list(alerts), 1 << 30)[0], Event(partition, offset))


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


def restarted(stage: DeduplicateStage, steps: Steps) -> DeduplicateStage:
    """A new stage on the same table, as the process that replaces a failed one runs it."""
    return DeduplicateStage(stage.name, stage.topic, store=stage._store, rules=DEFAULT_RULES, write_rows=steps.write_rows,
                            hand_off=steps.hand_off, dead_letter_record=steps.dead_letter_record)


def batch() -> list[PackedRecord]:
    return [record(0, 10, item("u1", "fp-a", "h1"), item("u2", "fp-a", "h1")),
            record(1, 4, item("u3", "fp-b", "h1")),
            PackedRecord(1, 5, b"\xc1 not msgpack", Event(1, 5))]


async def test_durable_first_then_changelog_then_state(stage: DeduplicateStage, steps: Steps) -> None:
    plan = await stage.process(batch())
    assert set(steps.log[:3]) == {"rows", "hand_off", "dlq"} and steps.log[3:] == ["changelog"]
    assert steps.rows == steps.handed == ["u1", "u3"]  # u2: an exact repeat within the batch
    assert steps.dead == ["alerts.normalized[1]@5:undecodable"]
    assert {key for _, key, _ in steps.changelog} == {state_key("t", "fp-a"), state_key("t", "fp-b"), positions_key("")}
    assert stage._store.flow_positions(0, "") == {"alerts:0": 2} and stage._store.flow_positions(1, "") == {"alerts:0": 3}
    assert stage._store.get(state_key("t", "fp-a"), Event(0, 0)) is not None
    assert [s.stored is not None for s in plan.batch.sightings] == [True, False, True]


@pytest.mark.parametrize("failing", ["rows", "hand_off", "dlq", "changelog"])
async def test_a_failed_step_raises_before_the_state_moves_and_a_rerun_stores_nothing_twice(
        stage: DeduplicateStage, steps: Steps, failing: str) -> None:
    steps.failing = failing
    with pytest.raises(BatchNotDurable) as failed:
        await stage.process(batch())
    assert isinstance(failed.value.__cause__, ExceptionGroup if failing != "changelog" else ConnectionError)
    # not durable, so not to be acked: the table is where it was, nothing was taken as seen
    assert stage._store.get(state_key("t", "fp-a"), Event(0, 0)) is None
    assert "changelog" not in steps.log
    steps.failing = None
    stage = restarted(stage, steps)  # the spent stage takes nothing more: the next process runs it
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


# --- pipelined: the next batch is planned while the previous one is made durable -------------------


class Gate:
    """A row sink that waits until the test opens it, so a batch can be held mid-write."""

    def __init__(self, steps: Steps) -> None:
        self.steps = steps
        self.open = asyncio.Event()
        self.writing = asyncio.Event()

    async def write_rows(self, batch: WriteBatch) -> None:
        self.writing.set()
        await self.open.wait()
        await self.steps.write_rows(batch)


def pipelined(tmp_path: Path, steps: Steps, write_rows, **kwargs) -> DeduplicateStage:  # noqa: ANN001
    app = faust.App("stage-pipe", store="rocksdb://", datadir=str(tmp_path), broker="kafka://127.0.0.1:1")
    return DeduplicateStage("deduplicate", "alerts.normalized", store=DedupStore(make_table(app, 2), steps),
                            rules=DEFAULT_RULES, write_rows=write_rows, hand_off=steps.hand_off,
                            dead_letter_record=steps.dead_letter_record, window=2, **kwargs)


def acked_into(acked: list[str], name: str):  # noqa: ANN201
    async def on_durable(plan) -> None:  # noqa: ANN001
        acked.append(name)
    return on_durable


async def test_the_next_batch_is_planned_on_the_state_in_flight_and_written_after_it(tmp_path: Path, steps: Steps) -> None:
    gate = Gate(steps)
    stage = pipelined(tmp_path, steps, gate.write_rows)
    acked: list[str] = []
    await stage.submit([record(0, 1, item("u1", "fp-a", "h1"))], acked_into(acked, "first"))
    await gate.writing.wait()
    # the first batch is mid-write; the second is taken and planned now, against the first's state
    await stage.submit([record(0, 2, item("u2", "fp-a", "h1"), item("u3", "fp-b", "h1"))], acked_into(acked, "second"))
    assert acked == [] and steps.rows == [] and "changelog" not in steps.log
    gate.open.set()
    await stage.drain()
    assert acked == ["first", "second"]  # acked in order, each once durable
    assert steps.rows == ["u1", "u3"]  # u2 repeats u1, still in flight when it was planned: a duplicate
    # the durable phases never overlap: the second batch's writes start after the first's changelog
    assert [sorted(steps.log[:2]), steps.log[2], sorted(steps.log[3:5]), steps.log[5]] == \
        [["hand_off", "rows"], "changelog", ["hand_off", "rows"], "changelog"]


async def test_a_batch_that_fails_for_good_stops_every_later_batch_unacked(tmp_path: Path, steps: Steps) -> None:
    gate = Gate(steps)
    told: list[BatchNotDurable] = []
    stage = pipelined(tmp_path, steps, gate.write_rows, attempts=2, on_failure=told.append)
    acked: list[str] = []
    await stage.submit([record(0, 1, item("u1", "fp-a", "h1"))], acked_into(acked, "first"))
    await gate.writing.wait()
    await stage.submit([record(0, 2, item("u2", "fp-b", "h1"))], acked_into(acked, "second"))
    steps.failing = "rows"
    gate.open.set()
    for _ in range(100):  # the caller is told without submitting again (it may be waiting for records)
        if told:
            break
        await asyncio.sleep(0.01)
    assert len(told) == 1 and "failed 2 times" in str(told[0])
    with pytest.raises(BatchNotDurable):
        await stage.drain()
    assert acked == [] and steps.rows == [] and steps.changelog == []
    assert stage.failures == 2  # both attempts of the first batch; the second was never written
    assert stage._store.get(state_key("t", "fp-b"), Event(0, 0)) is None


async def test_a_stage_whose_batch_failed_for_good_takes_no_later_batch(tmp_path: Path, steps: Steps) -> None:
    """Seen in CI: the agent went on submitting after a failure, the later batch was made durable and
    moved partition 0's flow position past the failed one, so the next process took the failed
    batch's replay for sightings already counted and stored none of it."""
    stage = pipelined(tmp_path, steps, steps.write_rows, attempts=2)
    steps.failing = "changelog"  # the rows are written, the state is not
    with pytest.raises(BatchNotDurable):
        await stage.process([record(0, 1, item("u1", "fp-a", "h1"))])
    assert stage.spent
    steps.failing = None
    rows_before = list(steps.rows)
    acked: list[str] = []
    for attempt in (stage.submit([record(0, 2, item("u2", "fp-b", "h1"))], acked_into(acked, "later")), stage.drain()):
        with pytest.raises(BatchNotDurable, match="failed for good"):
            await attempt
    assert acked == [] and steps.rows == rows_before and steps.changelog == []
    assert stage._store.flow_positions(0, stage.lane) == {}  # nothing moved past the failed batch
    assert stage._store.get(state_key("t", "fp-b"), Event(0, 0)) is None


async def test_a_failed_attempt_is_tried_again_and_acked_once(tmp_path: Path, steps: Steps) -> None:
    calls = []

    async def flaky_rows(batch: WriteBatch) -> None:
        calls.append(len(batch.stored))
        if len(calls) == 1:
            raise ConnectionError("reset by peer")
        await steps.write_rows(batch)

    stage = pipelined(tmp_path, steps, flaky_rows, attempts=3)
    acked: list[str] = []
    await stage.submit(batch(), acked_into(acked, "only"))
    await stage.drain()
    assert acked == ["only"] and calls == [2, 2] and steps.rows == ["u1", "u3"] and stage.failures == 1


async def test_a_refused_row_makes_the_batch_planned_on_it_plan_again(tmp_path: Path, steps: Steps) -> None:
    """The sink refused u1 (dead-lettered): fp-a keeps no state, so u2 with the same content, planned
    as a duplicate of the refused u1 while it was in flight, is planned again and stored."""
    gate = Gate(steps)
    stage = pipelined(tmp_path, steps, None)

    async def refuse_u1(batch: WriteBatch) -> None:
        await gate.write_rows(batch)
        if any(i.uid == "u1" for i in batch.stored):
            stage.rejected.add("u1")

    stage._write_rows = refuse_u1
    plans: list = []

    async def keep(plan) -> None:  # noqa: ANN001
        plans.append(plan)

    await stage.submit([record(0, 1, item("u1", "fp-a", "h1"))], keep)
    await gate.writing.wait()
    await stage.submit([record(0, 2, item("u2", "fp-a", "h1"))], keep)
    gate.open.set()
    await stage.drain()
    assert [i.uid for i in plans[1].batch.stored] == ["u2"]
    assert stage._store.get(state_key("t", "fp-a"), Event(0, 0)) is not None  # from u2


async def test_window_one_is_durable_when_submit_returns(stage: DeduplicateStage, steps: Steps) -> None:
    stage._window = 1
    acked: list[str] = []
    await stage.submit(batch(), acked_into(acked, "only"))
    assert acked == ["only"] and stage.in_flight == 0


async def test_a_durable_batch_still_queued_keeps_no_identity_alive(tmp_path: Path, steps: Steps) -> None:
    """The worker does not drain between batches: a batch that is durable stays queued until the next
    submit. Its planned state must not stop the TTL sweep of the next batch (nor shadow the table)."""
    now = [1_000]
    stage = pipelined(tmp_path, steps, steps.write_rows, ttl_ms=10_000, clock_ms=lambda: now[0])
    acked: list[str] = []
    await stage.submit([record(0, 1, item("u1", "fp-old", "h1"))], acked_into(acked, "first"))
    for _ in range(100):
        if acked:
            break
        await asyncio.sleep(0.01)
    assert acked == ["first"] and stage.in_flight == 1  # durable, still queued
    now[0] = 1_000 + 60_000
    await stage.submit([record(0, 2, item("u2", "fp-new", "h1"))], acked_into(acked, "second"))
    for _ in range(100):  # as the worker does: no drain, the loop goes on taking records
        if len(acked) == 2:
            break
        await asyncio.sleep(0.01)
    assert acked == ["first", "second"]
    assert (0, state_key("t", "fp-old"), None) in steps.changelog  # the tombstone
    assert stage._store.get(state_key("t", "fp-old"), Event(0, 0)) is None


# --- replays: a sighting whose flow position was decided before is skipped --------------------------


def flapping() -> tuple[list[PackedRecord], list[PackedRecord], list[PackedRecord]]:
    """fp-a: new (u1), an exact repeat (u2), then changed (u3), one internal record each."""
    return ([record(0, 1, item("u1", "fp-a", "h1"))], [record(0, 2, item("u2", "fp-a", "h1"))],
            [record(0, 3, item("u3", "fp-a", "h2"))])


async def test_a_record_read_again_after_the_state_moved_past_it_is_skipped(stage: DeduplicateStage, steps: Steps) -> None:
    """After a crash the stage reads again what it made durable but had not committed: u2, an exact
    repeat when it was decided, would now be decided against u3's content and stored as changed."""
    first, repeat, changed = flapping()
    for records in (first, repeat, changed):
        await stage.process(records)
    assert steps.rows == ["u1", "u3"]
    plan = await stage.process(repeat + changed)  # the same internal records, read again
    assert plan.replayed == 2 and plan.batch.sightings == [] and plan.batch.stored == []
    assert steps.rows == ["u1", "u3"]


async def test_the_normalizers_second_copy_is_skipped(stage: DeduplicateStage, steps: Steps) -> None:
    """The normalize stage sent the same source records again (it crashed before committing them):
    new internal offsets, the same source positions."""
    first, repeat, changed = flapping()
    await stage.process(first + repeat + changed)
    copy = [record(0, 50, item("u2", "fp-a", "h1")), record(0, 51, item("u3", "fp-a", "h2"), item("u4", "fp-a", "h1"))]
    plan = await stage.process(copy)
    assert plan.replayed == 2 and [i.uid for i in plan.batch.stored] == ["u4"]  # u4 is new: past the position
    assert [s.position for s in plan.batch.sightings] == [4]


async def test_the_same_position_twice_in_one_batch_is_decided_once(stage: DeduplicateStage, steps: Steps) -> None:
    plan = await stage.process([record(0, 1, item("u1", "fp-a", "h1")), record(0, 9, item("u1", "fp-a", "h1"))])
    assert plan.replayed == 1 and len(plan.batch.sightings) == 1


async def test_positions_are_per_internal_partition_and_lane(tmp_path: Path, steps: Steps) -> None:
    """A flow reaches every internal partition, each at its own pace; the critical lane's stage shares
    the table but keeps its own positions."""
    app = faust.App("stage-lanes", store="rocksdb://", datadir=str(tmp_path), broker="kafka://127.0.0.1:1")
    store = DedupStore(make_table(app, 2), steps)

    def stage_for(name: str) -> DeduplicateStage:
        return DeduplicateStage(name, "alerts.normalized", store=store, rules=DEFAULT_RULES, write_rows=steps.write_rows,
                                hand_off=steps.hand_off, dead_letter_record=steps.dead_letter_record)
    bulk, critical = stage_for("deduplicate"), stage_for("deduplicate-critical")
    await bulk.process([record(0, 1, item("u9", "fp-a", "h1"))])
    plan = await bulk.process([record(1, 1, item("u5", "fp-b", "h1"))])  # an earlier position, another partition
    assert plan.replayed == 0
    plan = await critical.process([record(0, 1, item("u7", "fp-c", "h1"))])  # below u9, another lane
    assert plan.replayed == 0
    assert store.flow_positions(0, "") == {"alerts:0": 9} and store.flow_positions(0, "!") == {"alerts:0!": 7}


async def test_positions_survive_a_restart(tmp_path: Path, steps: Steps) -> None:
    """Written with the state: a new process on the same RocksDB skips what the old one decided."""
    first, repeat, changed = flapping()
    app = faust.App("stage-restart", store="rocksdb://", datadir=str(tmp_path), broker="kafka://127.0.0.1:1")
    table = make_table(app, 2)
    old = DeduplicateStage("deduplicate", "alerts.normalized", store=DedupStore(table, steps), rules=DEFAULT_RULES,
                           write_rows=steps.write_rows, hand_off=steps.hand_off, dead_letter_record=steps.dead_letter_record)
    await old.process(first + repeat + changed)
    new = DeduplicateStage("deduplicate", "alerts.normalized", store=DedupStore(table, steps), rules=DEFAULT_RULES,
                           write_rows=steps.write_rows, hand_off=steps.hand_off, dead_letter_record=steps.dead_letter_record)
    plan = await new.process(repeat)
    assert plan.replayed == 1 and steps.rows == ["u1", "u3"]
    # the changelog carries them too, so a worker that rebuilds the table from it skips the same
    assert (0, positions_key(""), msgspec.msgpack.encode({"alerts:0": 3})) in steps.changelog


async def test_a_batch_planned_in_flight_skips_the_positions_of_the_batch_before_it(tmp_path: Path, steps: Steps) -> None:
    gate = Gate(steps)
    stage = pipelined(tmp_path, steps, gate.write_rows)
    first, repeat, changed = flapping()
    await stage.submit(first + repeat + changed)
    await gate.writing.wait()
    plans: list = []

    async def keep(plan) -> None:  # noqa: ANN001
        plans.append(plan)
    await stage.submit([record(0, 60, item("u2", "fp-a", "h1"))], keep)  # the normalizer's copy, while u2 is in flight
    gate.open.set()
    await stage.drain()
    assert plans[0].replayed == 1 and plans[0].batch.stored == [] and steps.rows == ["u1", "u3"]
