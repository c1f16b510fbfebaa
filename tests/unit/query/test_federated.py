"""The federated merge and cursor (query/federated.py): pure logic, property-tested."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from query.federated import BadCursor, Hit, SearchFilter, decode_cursor, encode_cursor, merge, search

FLT = SearchFilter(tenant="acme")


def hit(ms: int, n: int, store: str = "postgres") -> Hit:
    return Hit(str(uuid.UUID(int=n)), ms, store, {})


class ListReader:
    """A store as a sorted list; `after` is exclusive, like the real readers' keyset queries."""

    def __init__(self, hits: list[Hit]) -> None:
        self.hits = hits

    async def __call__(self, flt, after, limit):  # noqa: ANN001
        ordered = sorted(self.hits, key=lambda h: h.key, reverse=True)
        return [h for h in ordered if after is None or h.key < after][:limit]


def paginate(readers: dict, limit: int, between=None) -> list[Hit]:  # noqa: ANN001
    out, after = [], None
    for page_no in range(10_000):
        page = asyncio.run(search(readers, FLT, after, limit))
        out.extend(page.hits)
        if page.next_key is None:
            return out
        assert page.hits, "a page with a next cursor is never empty"
        after = page.next_key
        if between:
            between(page_no)
    raise AssertionError("pagination did not end")


# alerts: (ms, id number, where: 0 postgres only, 1 search only, 2 both, 3 twice in search (two indices))
alerts_st = st.lists(st.tuples(st.integers(0, 30), st.integers(0, 10_000), st.integers(0, 3)),
                     unique_by=lambda t: t[1], max_size=60)


def split(alerts):  # noqa: ANN001, ANN201
    pg, es = [], []
    for ms, n, where in alerts:
        if where in (0, 2):
            pg.append(hit(ms, n, "postgres"))
        if where in (1, 2, 3):
            es.append(hit(ms, n, "search"))
        if where == 3:
            es.append(hit(ms, n, "search"))
    return pg, es


@settings(max_examples=300, deadline=None)
@given(alerts_st, st.integers(1, 7))
def test_pages_cover_every_alert_once_in_order(alerts, limit) -> None:  # noqa: ANN001
    pg, es = split(alerts)
    got = paginate({"postgres": ListReader(pg), "search": ListReader(es)}, limit)
    expected = sorted({(ms, str(uuid.UUID(int=n))) for ms, n, _ in alerts}, reverse=True)
    assert [h.key for h in got] == expected  # sorted, no gaps, no repeats
    assert all(len(p) <= limit for p in [got[i:i + limit] for i in range(0, len(got), limit)])


@settings(max_examples=200, deadline=None)
@given(alerts_st, st.integers(1, 5), st.data())
def test_alerts_moving_to_the_archive_between_pages_are_neither_lost_nor_repeated(alerts, limit, data) -> None:  # noqa: ANN001
    """The archiver copies an alert to the search store, then deletes it from Postgres, at any
    moment between two pages."""
    pg, es = split(alerts)
    pg_reader, es_reader = ListReader(pg), ListReader(es)

    def archive_some(_page_no: int) -> None:
        if not pg_reader.hits:
            return
        moved = data.draw(st.lists(st.sampled_from(pg_reader.hits), unique=True, max_size=3))
        for h in moved:
            es_reader.hits.append(Hit(h.alert_id, h.received_at_ms, "search", {}))
            pg_reader.hits.remove(h)

    got = paginate({"postgres": pg_reader, "search": es_reader}, limit, between=archive_some)
    expected = sorted({(ms, str(uuid.UUID(int=n))) for ms, n, _ in alerts}, reverse=True)
    assert [h.key for h in got] == expected


def test_merge_keeps_one_copy_and_stops_at_the_horizon_of_a_full_store() -> None:
    pg = [hit(10, 1), hit(9, 2), hit(1, 3)]  # full page (limit 2 → 3 fetched): may hold more below ms=1
    es = [hit(9, 2, "search"), hit(5, 4, "search")]  # not full
    hits, next_key = merge({"postgres": pg, "search": es}, limit=2)
    assert [h.alert_id for h in hits] == [str(uuid.UUID(int=1)), str(uuid.UUID(int=2))]
    assert next_key == hits[-1].key
    hits, next_key = merge({"postgres": [hit(3, 7)], "search": [hit(3, 7, "search")]}, limit=5)
    assert len(hits) == 1 and next_key is None


def test_cursor_round_trip_and_refusals() -> None:
    secret = b"s" * 32
    key = (1_700_000_000_123, str(uuid.UUID(int=42)))
    cursor = encode_cursor(key, FLT, secret)
    assert decode_cursor(cursor, FLT, secret) == key
    assert "=" not in cursor and "/" not in cursor and "+" not in cursor
    with pytest.raises(BadCursor, match="other filters"):
        decode_cursor(cursor, SearchFilter(tenant="acme", severity=("critical",)), secret)
    with pytest.raises(BadCursor, match="not issued"):
        decode_cursor(cursor, FLT, b"x" * 32)
    with pytest.raises(BadCursor):
        decode_cursor("!!!", FLT, secret)
    other_tenant = SearchFilter(tenant="evil")
    with pytest.raises(BadCursor):
        decode_cursor(cursor, other_tenant, secret)
