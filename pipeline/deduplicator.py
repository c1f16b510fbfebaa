"""Stage 2: deduplicate canonical alerts against the state table and write the sinks.

Per batch, in this order (the order is what makes at-least-once safe):
1. decide each alert against the table (new, changed, exact duplicate);
2. write the sinks, all in parallel, until durable (retrying, never dropping);
3. only then write the changed table entries, with each flow's position decided up to;
4. the events are acked when the batch returns, and their offsets committed.
A crash before 3 replays the batch: the sinks ignore rows they already hold.
A crash after 3 finds the table ahead: the replayed sightings are at or below their flow's
position, so they are skipped rather than decided again against a state that moved past them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import msgspec

from core.records import Sighting, WriteBatch
from pipeline.normalizer import source_position, unpack
from schemas.alert import NormalizedAlert, PackedAlert
from schemas.rules import DEFAULT_RULES, RuleSet
from tables.dedup_state import DedupState, FlowPositions, Outcome, decide, state_key

@dataclass(slots=True)
class PackedRecord:
    partition: int
    offset: int
    value: bytes
    event: Any  # the Faust event, needed to route table writes to this partition


@dataclass(slots=True)
class StageTwoPlan:
    batch: WriteBatch[PackedAlert] = field(default_factory=WriteBatch)
    state_writes: dict[bytes, tuple[DedupState, Any]] = field(default_factory=dict)
    outcomes: dict[tuple[str, str, Outcome], int] = field(default_factory=dict)
    # internal records that do not decode (written by a foreign producer, or corrupted): to the DLQ
    undecodable: list[tuple[PackedRecord, str]] = field(default_factory=list)
    # internal partition → every flow's highest position decided, this batch included; only the
    # partitions where a position moved (checkpointed with the state)
    flow_positions: dict[int, FlowPositions] = field(default_factory=dict)
    replayed: int = 0  # sightings skipped: their position was decided before (a replay after a crash)


def sighting_flow(item: NormalizedAlert | PackedAlert, lane: str) -> str:
    """The ordered stream a sighting travelled: its source partition, into one internal topic (`lane`).

    Within a flow the normalize stage sends in source order, and a crash makes it send a suffix
    again, never skip ahead: `last_alert` keeps the highest source position counted per flow and
    counts a sighting only past it. Several flows per identity: a producer's key does not follow the
    fingerprint, and critical alerts travel their own internal topic.
    """
    return f"{item.source_topic}:{item.source_partition}{lane}"


def _no_positions(partition: int) -> FlowPositions:
    return {}


def plan_batch(records: list[PackedRecord], read_state: Callable[[bytes, Any], DedupState | None],
               rules: RuleSet = DEFAULT_RULES, refresh_after_ms: int | None = None, lane: str = "",
               read_positions: Callable[[int], FlowPositions] = _no_positions) -> StageTwoPlan:
    """Pure apart from `read_state` and `read_positions`: what to write, and which state changes.
    `lane` names the internal topic the records came from (see `sighting_flow`).

    A sighting at or below its flow's decided position (`read_positions`, per internal partition)
    was decided and made durable before: the dedup stage reads it again after a crash (its offsets
    are committed after its state), or the normalize stage sent it twice. It is skipped whole:
    decided again against the state that already moved past it, an exact re-send would count as
    changed and be stored a second time, under its own row id.
    """
    plan = StageTwoPlan()
    seen: dict[bytes, DedupState | None] = {}  # state as of earlier alerts in this batch
    decided: dict[int, FlowPositions] = {}  # per internal partition, this batch included
    for record in records:
        try:
            items = unpack(record.value)
        except msgspec.DecodeError as exc:
            plan.undecodable.append((record, f"{type(exc).__name__}: {exc}"))
            continue
        flows = decided.get(record.partition)
        if flows is None:
            flows = decided[record.partition] = dict(read_positions(record.partition))
        advanced = False
        for index, item in enumerate(items):
            if item.source_partition >= 0:
                flow, position = sighting_flow(item, lane), item.source_position
            else:  # sent by a version before source positions: its position on the internal topic
                flow, position = f"internal:{record.partition}{lane}", source_position(record.offset, index)
            if position <= flows.get(flow, -1):
                plan.replayed += 1
                continue
            flows[flow] = position
            advanced = True
            alert = item.alert
            key = state_key(alert.tenant, alert.fingerprint)
            previous = seen[key] if key in seen else read_state(key, record.event)
            outcome, new_state = decide(previous, item.content_hash, alert.status, item.received_at_ms, refresh_after_ms)
            if new_state is not None:
                seen[key] = new_state
                plan.state_writes[key] = (new_state, record.event)
            else:
                seen[key] = previous
            if outcome is Outcome.DUPLICATE and not rules.for_(alert.tenant, alert.provider_type).dedup_enabled:
                outcome = Outcome.CHANGED  # a rule with `mode: none` stores every sighting
            stored = item if outcome is not Outcome.DUPLICATE else None
            if stored is not None:
                plan.batch.stored.append(item)
            plan.batch.sightings.append(Sighting(
                alert.tenant, alert.fingerprint, item.received_at_ms, record.partition, position, stored, flow,
            ))
            counter = (alert.tenant, alert.provider_type, outcome)
            plan.outcomes[counter] = plan.outcomes.get(counter, 0) + 1
        if advanced:
            plan.flow_positions[record.partition] = flows
    return plan
