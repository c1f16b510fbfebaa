"""Search-store sink: bulk-indexes stored alerts into Elasticsearch 8/9 or OpenSearch.

Documents are indexed with `_id` = the alert row id, so re-indexing a
replayed batch overwrites the same documents. No per-document failure is
logged and dropped (Keep's failure mode): throttled documents (429, 5xx) are
retried after the circuit breaker's wait, refused ones (a 400 mapping error)
go to the DLQ with the store's reason.
"""

from __future__ import annotations

from typing import Any

import msgspec
from elastic_transport import AiohttpHttpNode
from elasticsearch import AsyncElasticsearch, BadRequestError, ConnectionError

from schemas.alert import NormalizedAlert
from sinks.base import RejectedAlerts, WriteBatch

_VENDOR_JSON = "application/vnd.elasticsearch+json"
_VENDOR_NDJSON = "application/vnd.elasticsearch+x-ndjson"


class PlainJsonNode(AiohttpHttpNode):
    """Sends plain JSON media types instead of Elasticsearch's versioned ones.

    The official client always asks for `application/vnd.elasticsearch+json;
    compatible-with=N`, which OpenSearch (and osmem) answer with 406, and it
    rewrites any header we set. Real Elasticsearch accepts plain JSON too, so
    this node works against both.
    """

    async def perform_request(self, method, target, body=None, headers=None, request_timeout=None, **kwargs):  # type: ignore[override]
        if headers:
            headers = headers.copy()
            for name in ("accept", "content-type"):
                value = headers.get(name)
                if value and value.startswith(_VENDOR_NDJSON):
                    headers[name] = "application/x-ndjson"
                elif value and value.startswith(_VENDOR_JSON):
                    headers[name] = "application/json"
        if request_timeout is None:
            return await super().perform_request(method, target, body=body, headers=headers, **kwargs)
        return await super().perform_request(method, target, body=body, headers=headers, request_timeout=request_timeout, **kwargs)


def make_client(url: str, *, username: str | None = None, password: str | None = None, api_key: str | None = None) -> AsyncElasticsearch:
    auth: dict[str, Any] = {}
    if api_key:
        auth["api_key"] = api_key
    elif username:
        auth["basic_auth"] = (username, password or "")
    return AsyncElasticsearch(url, node_class=PlainJsonNode, request_timeout=30, **auth)


def alert_document(item: NormalizedAlert) -> dict[str, Any]:
    doc = msgspec.to_builtins(item.alert)
    doc["alertId"] = item.uid
    doc["receivedAt"] = item.received_at_ms
    doc["contentHash"] = item.content_hash
    return doc


_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}


class SearchSink:
    name = "search"

    def __init__(self, client: AsyncElasticsearch, index: str) -> None:
        self._client = client
        self._index = index
        self._index_ready = False

    async def start(self) -> None:
        await self._ensure_index()

    async def _ensure_index(self) -> None:
        if not await self._client.indices.exists(index=self._index):
            await self._client.indices.create(index=self._index, mappings=_MAPPINGS)
        self._index_ready = True

    async def write(self, batch: WriteBatch) -> int:
        if not batch.stored:
            return 0
        if not self._index_ready:  # after an outage the store may be a new, empty one
            await self._ensure_index()
        operations: list[dict[str, Any]] = []
        for item in batch.stored:
            operations.append({"index": {"_index": self._index, "_id": item.uid}})
            operations.append(alert_document(item))
        try:
            response = await self._client.bulk(operations=operations)
        except ConnectionError:
            self._index_ready = False
            raise
        if not response.get("errors"):
            return len(batch.stored)
        rejected: dict[str, str] = {}
        retry: list[NormalizedAlert] = []
        for item, result in zip(batch.stored, response["items"]):
            outcome = result.get("index", {})
            if not outcome.get("error"):
                continue
            if outcome.get("status") in _RETRYABLE_STATUS:
                retry.append(item)  # throttled or unavailable: written again after the circuit's wait
            else:
                rejected[item.uid] = f"{outcome.get('status')} {outcome.get('error')}"
        raise RejectedAlerts(rejected, WriteBatch(stored=retry))

    def is_permanent(self, exc: Exception) -> bool:
        # a 400 for the whole request (bad body): bisect to find the document at fault
        return isinstance(exc, BadRequestError)

    async def close(self) -> None:
        await self._client.close()


# Keywords for exact filters, text for free-text search, labels as a keyword map.
# (The full template with lifecycle policies belongs to the search-store work.)
_MAPPINGS: dict[str, Any] = {
    "dynamic": False,
    "properties": {
        "alertId": {"type": "keyword"},
        "tenant": {"type": "keyword"},
        "fingerprint": {"type": "keyword"},
        "name": {"type": "text", "fields": {"raw": {"type": "keyword", "ignore_above": 512}}},
        "status": {"type": "keyword"},
        "severity": {"type": "keyword"},
        "providerType": {"type": "keyword"},
        "providerId": {"type": "keyword"},
        "environment": {"type": "keyword"},
        "service": {"type": "keyword"},
        "source": {"type": "keyword"},
        "message": {"type": "text"},
        "description": {"type": "text"},
        "lastReceived": {"type": "date"},
        "receivedAt": {"type": "date", "format": "epoch_millis"},
        "contentHash": {"type": "keyword"},
        "labels": {"type": "object", "enabled": False},  # kept in _source; searchable labels need `flattened` (search-store work)
    },
}
