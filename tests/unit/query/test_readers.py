"""The readers' queries: parameterized, tenant always applied, the same keyset order in both stores."""

from __future__ import annotations

from datetime import datetime, timezone

from query.federated import SearchFilter
from query.postgres_reader import build_query
from query.search_reader import build_body

EVIL = "x' OR 1=1; DROP TABLE alert; --"


def test_postgres_query_is_parameterized_and_tenant_first() -> None:
    flt = SearchFilter(tenant=EVIL, since_ms=1000, until_ms=2000, fingerprint=EVIL, severity=("critical",),
                       status=("firing", "resolved"), provider=(EVIL,), text=EVIL)
    sql, args = build_query(flt, (1500, "00000000-0000-0000-0000-000000000001"), 11)
    assert EVIL not in sql
    assert sql.split("WHERE ")[1].startswith("tenant = $1") and args[0] == EVIL
    assert "(received_at, id) < (" in sql and sql.rstrip().endswith(f"LIMIT ${len(args)}") and args[-1] == 11
    assert "ORDER BY received_at DESC, id DESC" in sql
    assert args[1] == datetime(1970, 1, 1, 0, 0, 1, tzinfo=timezone.utc)
    assert sql.count("$") == len(args)


def test_postgres_query_without_filters_is_still_tenant_scoped() -> None:
    sql, args = build_query(SearchFilter(tenant="acme"), None, 5)
    assert args == ["acme", 5] and "tenant = $1" in sql and "<" not in sql


def test_search_body_always_filters_the_tenant_and_sorts_like_postgres() -> None:
    body = build_body(SearchFilter(tenant="acme", severity=("high",), text="disk full", since_ms=5), (1500, "abc"), 11)
    filters = body["query"]["bool"]["filter"]
    assert filters[0] == {"term": {"tenant": "acme"}}
    assert {"terms": {"severity": ["high"]}} in filters and {"range": {"receivedAt": {"gte": 5}}} in filters
    assert body["sort"] == [{"receivedAt": {"order": "desc"}}, {"alertId": {"order": "desc"}}]
    assert body["search_after"] == [1500, "abc"] and body["size"] == 11
    assert body["query"]["bool"]["must"][0]["multi_match"]["operator"] == "and"
    assert build_body(SearchFilter(tenant="t"), None, 3)["query"] == {"bool": {"filter": [{"term": {"tenant": "t"}}]}}
