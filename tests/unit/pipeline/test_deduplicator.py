"""The dedup stage's batch plan (`plan_batch`, pipeline/deduplicator.py) over `decide`."""

from __future__ import annotations

from typing import Any

import msgspec

from pipeline.deduplicator import PackedRecord, plan_batch
from pipeline.normalizer import pack, source_position
from schemas.alert import WIRE_VERSION, Alert, NormalizedAlert, PackedBatch
from tables.dedup_state import DedupState, Outcome, state_key

# ---------------------------------------------------------------- plan_batch


def item(uid: str, fingerprint: str, content: str, *, tenant: str = "t1", status: str = "firing",
         received: int = 1000, provider: str = "keep") -> NormalizedAlert:
    alert = Alert(name=f"alert {fingerprint}", status=status, last_received="2025-01-15T10:00:00.000Z",
                  fingerprint=fingerprint, tenant=tenant, provider_type=provider)
    return NormalizedAlert(uid, received, content, alert)


class Event:
    """Stands in for a Faust event: only its identity matters."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Event({self.name})"


def record(partition: int, offset: int, alerts: list[NormalizedAlert]) -> PackedRecord:
    value = pack(alerts, 1 << 30)[0] if alerts else msgspec.msgpack.encode(PackedBatch(WIRE_VERSION, []))
    return PackedRecord(partition, offset, value, Event(f"{partition}@{offset}"))


class State:
    """A dict-backed read_state that records every read with its event."""

    def __init__(self, initial: dict[bytes, DedupState] | None = None) -> None:
        self.data = dict(initial or {})
        self.reads: list[tuple[bytes, Any]] = []

    def __call__(self, key: bytes, event: Any) -> DedupState | None:
        self.reads.append((key, event))
        return self.data.get(key)


def test_in_batch_repeats_new_duplicate_changed() -> None:
    r1 = record(0, 10, [item("u1", "fp", "h1", received=1000), item("u2", "fp", "h1", received=2000)])
    r2 = record(0, 11, [item("u3", "fp", "h2", status="resolved", received=3000)])
    state = State()
    plan = plan_batch([r1, r2], state)

    key = state_key("t1", "fp")
    assert state.reads == [(key, r1.event)]  # read once; later alerts see the batch's own state
    assert [a.uid for a in plan.batch.stored] == ["u1", "u3"]
    assert plan.state_writes == {key: (DedupState("h2", "resolved", 1000, 3000, 3000), r2.event)}
    assert plan.state_writes[key][1] is r2.event
    assert plan.outcomes == {
        ("t1", "keep", Outcome.NEW): 1,
        ("t1", "keep", Outcome.DUPLICATE): 1,
        ("t1", "keep", Outcome.CHANGED): 1,
    }
    sightings = plan.batch.sightings
    assert [(s.received_at_ms, s.partition, s.position) for s in sightings] == [
        (1000, 0, 10 << 16 | 0), (2000, 0, 10 << 16 | 1), (3000, 0, 11 << 16 | 0),
    ]
    assert [s.stored.uid if s.stored else None for s in sightings] == ["u1", None, "u3"]
    assert all((s.tenant, s.fingerprint) == ("t1", "fp") for s in sightings)


def test_changed_then_back_is_changed_again_and_last_state_wins() -> None:
    r = record(1, 5, [item("a", "fp", "h1"), item("b", "fp", "h2"), item("c", "fp", "h1"), item("d", "fp", "h1")])
    plan = plan_batch([r], State())
    assert [a.uid for a in plan.batch.stored] == ["a", "b", "c"]
    assert plan.state_writes[state_key("t1", "fp")][0].content_hash == "h1"
    assert plan.outcomes[("t1", "keep", Outcome.CHANGED)] == 2
    assert plan.outcomes[("t1", "keep", Outcome.DUPLICATE)] == 1


def test_duplicates_of_stored_state_write_nothing() -> None:
    key = state_key("t1", "fp")
    previous = DedupState("h1", "firing", 500, 600, 600)
    r = record(2, 7, [item("a", "fp", "h1", received=1000), item("b", "fp", "h1", received=2000)])
    plan = plan_batch([r], State({key: previous}))
    assert plan.state_writes == {}
    assert plan.batch.stored == []
    assert len(plan.batch.sightings) == 2 and all(s.stored is None for s in plan.batch.sightings)
    assert plan.outcomes == {("t1", "keep", Outcome.DUPLICATE): 2}


def test_changed_against_stored_state_keeps_first_seen() -> None:
    key = state_key("t1", "fp")
    plan = plan_batch([record(0, 1, [item("a", "fp", "h2", status="resolved", received=9000)])],
                      State({key: DedupState("h1", "firing", 500, 600, 600)}))
    state, _ = plan.state_writes[key]
    assert state == DedupState("h2", "resolved", 500, 9000, 9000)
    assert plan.outcomes == {("t1", "keep", Outcome.CHANGED): 1}


def test_state_writes_carry_the_event_of_their_own_record() -> None:
    r1 = record(0, 1, [item("a", "fp-a", "h"), item("b", "fp-b", "h")])
    r2 = record(3, 1, [item("c", "fp-c", "h"), item("d", "fp-a", "h")])  # d: duplicate of a
    r3 = record(0, 2, [item("e", "fp-b", "h2")])
    plan = plan_batch([r1, r2, r3], State())
    events = {key: event for key, (_, event) in plan.state_writes.items()}
    assert events == {
        state_key("t1", "fp-a"): r1.event,
        state_key("t1", "fp-b"): r3.event,
        state_key("t1", "fp-c"): r2.event,
    }


def test_reads_go_through_the_event_of_the_record() -> None:
    r1 = record(0, 1, [item("a", "fp-a", "h")])
    r2 = record(1, 1, [item("b", "fp-b", "h")])
    state = State()
    plan_batch([r1, r2], state)
    assert state.reads == [(state_key("t1", "fp-a"), r1.event), (state_key("t1", "fp-b"), r2.event)]


def test_positions_pack_offset_and_index() -> None:
    offset = 123_456_789
    r = record(2, offset, [item(f"u{i}", f"fp{i}", "h") for i in range(3)])
    plan = plan_batch([r], State())
    assert [s.position for s in plan.batch.sightings] == [offset << 16 | i for i in range(3)]
    assert [s.position >> 16 for s in plan.batch.sightings] == [offset] * 3
    assert [s.position & 0xFFFF for s in plan.batch.sightings] == [0, 1, 2]
    assert {s.partition for s in plan.batch.sightings} == {2}
    assert {s.flow for s in plan.batch.sightings} == {"internal:2"}  # no source position: a record of an older version


def test_sightings_are_keyed_by_source_position_whatever_the_internal_offset() -> None:
    """A normalize batch sent again after a crash lands at new internal offsets; its sightings keep
    their source flow and position, so `last_alert` recognises them."""
    def sourced(uid: str, offset: int, index: int) -> NormalizedAlert:
        a = item(uid, "fp", "h")
        a.source_topic, a.source_partition, a.source_position = "alerts", 7, source_position(offset, index)
        return a

    first = plan_batch([record(2, 40, [sourced("u1", 900, 0), sourced("u2", 900, 1)])], State())
    again = plan_batch([record(2, 95, [sourced("u1", 900, 0), sourced("u2", 900, 1)])], State())
    critical = plan_batch([record(2, 95, [sourced("u1", 900, 0)])], State(), lane="!")
    key = [(s.flow, s.position) for s in first.batch.sightings]
    assert key == [("alerts:7", 900 << 16), ("alerts:7", 900 << 16 | 1)]
    assert [(s.flow, s.position) for s in again.batch.sightings] == key
    assert [(s.flow, s.position) for s in critical.batch.sightings] == [("alerts:7!", 900 << 16)]


def test_outcome_counts_per_tenant_provider_outcome() -> None:
    r = record(0, 1, [
        item("a", "fp1", "h", tenant="t1", provider="keep"),
        item("b", "fp1", "h", tenant="t1", provider="keep"),
        item("c", "fp2", "h", tenant="t1", provider="prometheus"),
        item("d", "fp2", "h", tenant="t2", provider="prometheus"),
        item("e", "fp2", "h", tenant="t2", provider="prometheus"),
        item("f", "fp2", "h", tenant="t2", provider="prometheus"),
    ])
    plan = plan_batch([r], State())
    assert plan.outcomes == {
        ("t1", "keep", Outcome.NEW): 1,
        ("t1", "keep", Outcome.DUPLICATE): 1,
        ("t1", "prometheus", Outcome.NEW): 1,
        ("t2", "prometheus", Outcome.NEW): 1,
        ("t2", "prometheus", Outcome.DUPLICATE): 2,
    }
    assert sum(plan.outcomes.values()) == len(plan.batch.sightings) == 6


def test_tenants_are_separate_identities() -> None:
    key_a, key_b = state_key("tenant-a", "same-fp"), state_key("tenant-b", "same-fp")
    # tenant-a already holds this content; tenant-b has never seen it
    state = State({key_a: DedupState("h", "firing", 1, 1, 1)})
    r = record(0, 1, [item("a", "same-fp", "h", tenant="tenant-a"), item("b", "same-fp", "h", tenant="tenant-b"),
                      item("c", "same-fp", "h", tenant="tenant-b")])
    plan = plan_batch([r], state)
    assert [a.uid for a in plan.batch.stored] == ["b"]
    assert set(plan.state_writes) == {key_b}
    assert plan.outcomes == {
        ("tenant-a", "keep", Outcome.DUPLICATE): 1,
        ("tenant-b", "keep", Outcome.NEW): 1,
        ("tenant-b", "keep", Outcome.DUPLICATE): 1,
    }
    assert [s.tenant for s in plan.batch.sightings] == ["tenant-a", "tenant-b", "tenant-b"]


def test_empty_batch_and_empty_record() -> None:
    assert plan_batch([], State()).batch.sightings == []
    plan = plan_batch([record(0, 1, [])], State())
    assert (plan.batch.stored, plan.batch.sightings, plan.state_writes, plan.outcomes) == ([], [], {}, {})


def test_a_record_that_is_not_a_batch_is_set_aside_for_the_dlq_and_the_rest_planned() -> None:
    bad = PackedRecord(0, 1, b"\xc1 not msgpack", Event("x"))
    plan = plan_batch([bad, record(0, 2, [item("u1", "fp-1", "h1")])], State())
    assert [(r.offset, why.split(":")[0]) for r, why in plan.undecodable] == [(1, "DecodeError")]
    assert [s.fingerprint for s in plan.batch.sightings] == ["fp-1"]


def test_refresh_write_is_not_a_stored_alert() -> None:
    key = state_key("t1", "fp")
    rec = record(0, 7, [item("u1", "fp", "h1", received=10_000)])
    plan = plan_batch([rec], State({key: DedupState("h1", "firing", 1, 1, 1)}), refresh_after_ms=100)
    assert plan.batch.stored == []
    assert plan.state_writes[key][0].seen_ms == 10_000
    assert plan.batch.sightings[0].stored is None
