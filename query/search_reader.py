"""Federated search, the search store side: alert history from the alert indices (via the alias).

The tenant is always a `term` filter of the query (from the API key). Sorted by
(receivedAt, alertId) descending, `search_after` the cursor's key: the same keyset order as
Postgres. `alertId` is a keyword, so ties sort like Postgres' uuid order (lowercase hex).
"""

from __future__ import annotations

from typing import Any

from elasticsearch import AsyncElasticsearch, NotFoundError

from query.federated import Hit, Key, SearchFilter

STORE = "search"


def build_body(flt: SearchFilter, after: Key | None, limit: int) -> dict[str, Any]:
    filters: list[dict[str, Any]] = [{"term": {"tenant": flt.tenant}}]
    if flt.since_ms is not None or flt.until_ms is not None:
        bounds: dict[str, int] = {}
        if flt.since_ms is not None:
            bounds["gte"] = flt.since_ms
        if flt.until_ms is not None:
            bounds["lt"] = flt.until_ms
        filters.append({"range": {"receivedAt": bounds}})
    if flt.fingerprint:
        filters.append({"term": {"fingerprint": flt.fingerprint}})
    for field_name, values in (("severity", flt.severity), ("status", flt.status), ("providerType", flt.provider)):
        if values:
            filters.append({"terms": {field_name: list(values)}})
    query: dict[str, Any] = {"bool": {"filter": filters}}
    if flt.text:
        query["bool"]["must"] = [{"multi_match": {"query": flt.text, "fields": ["name", "message", "description"],
                                                  "operator": "and"}}]
    body: dict[str, Any] = {
        "query": query,
        "sort": [{"receivedAt": {"order": "desc"}}, {"alertId": {"order": "desc"}}],
        "size": limit,
        "track_total_hits": False,
    }
    if after is not None:
        body["search_after"] = [after[0], after[1]]
    return body


class SearchReader:
    def __init__(self, client: AsyncElasticsearch, index: str) -> None:
        self._client = client
        self._index = index

    async def __call__(self, flt: SearchFilter, after: Key | None, limit: int) -> list[Hit]:
        try:
            response = await self._client.search(index=self._index, ignore_unavailable=True, **build_body(flt, after, limit))
        except NotFoundError:
            return []  # no alert index yet: nothing archived or indexed
        hits = []
        for h in response["hits"]["hits"]:
            doc = h["_source"]
            hits.append(Hit(doc["alertId"], int(doc["receivedAt"]), STORE, doc))
        return hits
