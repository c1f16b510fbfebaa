"""The pure row builders of the Postgres sink: `alert_rows` and `last_alert_rows`."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from core.records import Sighting
from schemas.alert import Alert, NormalizedAlert
from sinks.postgres import ALERT_COLUMNS, LAST_STAGE_COLUMNS, alert_rows, last_alert_rows

LAST = {name: i for i, name in enumerate(LAST_STAGE_COLUMNS)}
T0 = 1_736_935_560_000


def ts(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def stored(n: int, fingerprint: str, *, tenant: str = "t", status: str = "firing", received: int = T0,
           content: str | None = None) -> NormalizedAlert:
    alert = Alert(name=f"alert {fingerprint} v{n}", status=status, severity="high", last_received="2025-01-15T10:06:00.000Z",
                  fingerprint=fingerprint, tenant=tenant, provider_type="prometheus", provider_id="am-1",
                  labels={"n": str(n)})
    return NormalizedAlert(str(uuid.UUID(int=n)), received, content or f"hash-{n}", alert)


def sighting(fingerprint: str, position: int, received: int, *, tenant: str = "t", flow: str = "alerts:0",
             item: NormalizedAlert | None = None) -> Sighting:
    return Sighting(tenant, fingerprint, received, 0, position, item, flow)


def col(row: tuple, name: str):  # noqa: ANN201
    return row[LAST[name]]


# ---------------------------------------------------------------- alert_rows


def test_alert_rows() -> None:
    items = [stored(1, "fp-a"), stored(2, "fp-b", tenant="u", status="resolved", received=T0 + 5)]
    rows = alert_rows(items)
    assert len(rows) == 2 and all(len(r) == len(ALERT_COLUMNS) for r in rows)
    row = dict(zip(ALERT_COLUMNS, rows[1]))
    assert row["id"] == str(uuid.UUID(int=2))  # text: asyncpg parses it
    assert row["received_at"] == ts(T0 + 5)
    assert (row["tenant"], row["fingerprint"], row["provider_type"], row["provider_id"]) == ("u", "fp-b", "prometheus", "am-1")
    assert (row["name"], row["status"], row["severity"], row["content_hash"]) == ("alert fp-b v2", "resolved", "high", "hash-2")
    event = orjson.loads(row["event"])
    assert event["fingerprint"] == "fp-b" and event["lastReceived"] == "2025-01-15T10:06:00.000Z"
    assert event["labels"] == {"n": "2"} and event["providerType"] == "prometheus"
    assert alert_rows([]) == []


# ---------------------------------------------------------------- last_alert_rows


def test_one_row_per_identity_in_key_order() -> None:
    sightings = [
        sighting("fp-b", 1 << 16, T0, tenant="t2", item=stored(1, "fp-b", tenant="t2")),
        sighting("fp-z", 2 << 16, T0, tenant="t1", item=stored(2, "fp-z", tenant="t1")),
        sighting("fp-a", 3 << 16, T0, tenant="t2", item=stored(3, "fp-a", tenant="t2")),
        sighting("fp-b", 4 << 16, T0 + 1, tenant="t2"),
        sighting("fp-b", 5 << 16, T0 + 2, tenant="t1"),
    ]
    rows = last_alert_rows(sightings)
    assert [(col(r, "tenant"), col(r, "fingerprint")) for r in rows] == [
        ("t1", "fp-b"), ("t1", "fp-z"), ("t2", "fp-a"), ("t2", "fp-b"),
    ]
    assert all(len(r) == len(LAST_STAGE_COLUMNS) for r in rows)


def test_newest_stored_alert_is_the_last_in_arrival_order_and_every_position_listed() -> None:
    first, second = stored(1, "fp"), stored(2, "fp", status="resolved")
    sightings = [  # arrival order (the internal topic's); positions of two flows
        sighting("fp", (9 << 16) | 0, T0 + 5, item=first),
        sighting("fp", (10 << 16) | 0, T0 + 20, flow="alerts:4"),
        sighting("fp", (3 << 16) | 1, T0 + 10, item=second, flow="alerts:4"),
        sighting("fp", (10 << 16) | 3, T0 + 30),
    ]
    (row,) = last_alert_rows(sightings)
    assert col(row, "alert_id") == second.uid
    assert (col(row, "name"), col(row, "status"), col(row, "severity"), col(row, "provider_type")) == (
        "alert fp v2", "resolved", "high", "prometheus")
    assert col(row, "content_hash") == "hash-2"
    assert (col(row, "stored_flow"), col(row, "stored_position")) == ("alerts:4", (3 << 16) | 1)
    assert col(row, "flows") == ["alerts:0", "alerts:4", "alerts:4", "alerts:0"]
    assert col(row, "positions") == [9 << 16, 10 << 16, (3 << 16) | 1, (10 << 16) | 3]


def test_min_and_max_received() -> None:
    sightings = [
        sighting("fp", 1, T0 + 500),
        sighting("fp", 2, T0 - 250),  # the Kafka timestamp can go backwards
        sighting("fp", 3, T0 + 100),
    ]
    (row,) = last_alert_rows(sightings)
    assert col(row, "first_received") == ts(T0 - 250)
    assert col(row, "last_received") == ts(T0 + 500)
    assert col(row, "first_received").tzinfo is not None


def test_duplicates_only_have_no_stored_alert() -> None:
    (row,) = last_alert_rows([sighting("fp", 7, T0), sighting("fp", 8, T0 + 1)])
    for name in ("alert_id", "name", "status", "severity", "provider_type", "content_hash", "stored_flow", "stored_position"):
        assert col(row, name) is None, name
    assert col(row, "positions") == [7, 8] and col(row, "flows") == ["alerts:0", "alerts:0"]


def test_rows_and_input_are_independent() -> None:
    sightings = [sighting("fp", 2, T0), sighting("fp", 1, T0)]
    last_alert_rows(sightings)
    assert [s.position for s in sightings] == [2, 1]  # the caller's list is not reordered
    assert last_alert_rows([]) == []


# ---------------------------------------------------------------- against a plain reference


def reference_last_alert_rows(sightings: list[Sighting]) -> list[tuple]:
    """The rule written plainly (what `last_alert_rows` was before its short path for identities seen once)."""
    groups: dict[tuple[str, str], list[Sighting]] = {}
    for s in sightings:
        groups.setdefault((s.tenant, s.fingerprint), []).append(s)
    rows = []
    for (tenant, fingerprint), group in sorted(groups.items()):
        newest = next((s for s in reversed(group) if s.stored is not None), None)
        item = newest.stored if newest else None
        a = item.alert if item else None
        rows.append((tenant, fingerprint, item.uid if item else None, a.name if a else None, a.status if a else None,
                     a.severity if a else None, a.provider_type if a else None, item.content_hash if item else None,
                     newest.flow if newest else None, newest.position if newest else None,
                     ts(min(s.received_at_ms for s in group)), ts(max(s.received_at_ms for s in group)),
                     [s.flow for s in group], [s.position for s in group]))
    return rows


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(("t1", "t2")), st.sampled_from(("a", "b", "c", "d")), st.integers(0, 5_000),
                          st.integers(0, 1 << 40), st.booleans(), st.sampled_from(("alerts:0", "alerts:3"))),
                max_size=40))
def test_last_alert_rows_match_the_plain_rule(drawn: list[tuple[str, str, int, int, bool, str]]) -> None:
    sightings = [sighting(fp, position, T0 + delta, tenant=tenant, flow=flow,
                          item=stored(i, fp, tenant=tenant, received=T0 + delta) if is_stored else None)
                 for i, (tenant, fp, delta, position, is_stored, flow) in enumerate(drawn)]
    assert last_alert_rows(sightings) == reference_last_alert_rows(sightings)
