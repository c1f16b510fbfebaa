"""Search-store sink: bulk-indexes stored alerts into Elasticsearch 8/9 or OpenSearch.

Documents are indexed with `_id` = the alert row id, through the write alias
that `sinks/search_schema.py` sets up with the index template and lifecycle
policy, so re-indexing a replayed batch overwrites the same documents. No
per-document failure is logged and dropped (Keep's failure mode): throttled
documents (429, 5xx) are handed back to the circuit breaker, which tries them
again with the shared jittered backoff and then parks them on a retry topic;
refused ones (a 400 mapping error) go to the DLQ with the store's reason
(docs/search.md).
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from elastic_transport import AiohttpHttpNode
from elasticsearch import ApiError, AsyncElasticsearch, BadRequestError, ConnectionError
from prometheus_client import Counter

from config.metrics import observe_indexed
from config.settings import Settings
from core.records import RejectedAlerts, WriteBatch
from schemas.alert import NormalizedAlert, PackedAlert
from sinks.search_schema import SchemaReport, install_schema

log = logging.getLogger(__name__)

THROTTLED = Counter(
    "alertstream_search_throttled_documents_total",
    "Documents the search store throttled (a 429 for the bulk request, or 429/5xx per document), retried with jittered backoff.",
    ["reason"],
)

_VENDOR_JSON = "application/vnd.elasticsearch+json"
_VENDOR_NDJSON = "application/vnd.elasticsearch+x-ndjson"


class PlainJsonNode(AiohttpHttpNode):
    """Lets the official client speak to OpenSearch as well as Elasticsearch.

    1. Sends plain JSON media types instead of Elasticsearch's versioned ones. The
       official client always asks for `application/vnd.elasticsearch+json;
       compatible-with=N`, which OpenSearch (and osmem) answer with 406, and it
       rewrites any header we set. Real Elasticsearch accepts plain JSON too.
    2. Passes the client's product check on OpenSearch. The client raises
       UnsupportedProductError on the first 2xx response without
       `X-Elastic-Product: Elasticsearch` (elasticsearch-py #1677); Elasticsearch
       sends it, OpenSearch does not. The node adds it where it is missing, so the
       check no longer tells the two apart: `sinks/search_schema.py` does that
       itself from `GET /` (`version.distribution`) and uses only the APIs both
       have, or the flavour's own (ILM vs ISM). Checked against a real OpenSearch
       2.19 by tests/integration/sinks/test_search_store.py (docs/decisions.md).
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
            response = await super().perform_request(method, target, body=body, headers=headers, **kwargs)
        else:
            response = await super().perform_request(method, target, body=body, headers=headers, request_timeout=request_timeout, **kwargs)
        if "x-elastic-product" not in response.meta.headers:
            response.meta.headers["x-elastic-product"] = "Elasticsearch"
        return response


def make_client(url: str, *, username: str | None = None, password: str | None = None, api_key: str | None = None) -> AsyncElasticsearch:
    auth: dict[str, Any] = {}
    if api_key:
        auth["api_key"] = api_key
    elif username:
        auth["basic_auth"] = (username, password or "")
    # retry_on_status=(): statuses (429 above all) are retried by the circuit breaker with jittered backoff;
    # the transport's own retries (immediate, no jitter) stay for connection errors only
    return AsyncElasticsearch(url, node_class=PlainJsonNode, request_timeout=30, retry_on_status=(), **auth)


def client_from_settings(settings: Settings) -> AsyncElasticsearch:
    if not settings.search_url:
        raise RuntimeError("ALERTSTREAM_SEARCH_URL is not set: run `eval \"$(alertstream stack up)\"` or point it at the search store")
    return make_client(
        settings.search_url,
        username=settings.search_username,
        password=settings.search_password.get_secret_value() if settings.search_password else None,
        api_key=settings.search_api_key.get_secret_value() if settings.search_api_key else None,
    )


_encode_json = msgspec.json.Encoder().encode


Stored = NormalizedAlert | PackedAlert  # a stored alert, as read from the stored-alerts topic or the DLQ


def alert_document(item: Stored) -> bytes:
    """The search document of a stored alert, as JSON: the canonical alert (Keep's field names)
    plus `alertId`, `receivedAt` and `contentHash`. A packed alert's JSON is spliced in as it came."""
    head = _encode_json({"alertId": item.uid, "receivedAt": item.received_at_ms, "contentHash": item.content_hash})
    return head[:-1] + b"," + item.alert_json_bytes()[1:]  # one object: the alert has fields, never `{}`


_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}


class SearchSink:
    """Bulk writes to the write alias, one request per `write`. A 429 for the whole request, or
    429/5xx for single documents: those documents are handed back as `retry` of `RejectedAlerts`
    (the circuit breaker tries them again `search_throttle_retries` times with the shared jittered,
    doubling backoff, then parks them on a retry topic); documents refused for good (a 400
    mapping error) as `rejected` (→ DLQ with the store's reason). Nothing is logged and dropped."""

    name = "search"

    def __init__(self, client: AsyncElasticsearch, index: str, settings: Settings | None = None) -> None:
        self._client = client
        self._settings = (settings or Settings()).model_copy(update={"search_index": index})
        self._index = index
        self._index_ready = False
        self.schema: SchemaReport | None = None

    async def start(self) -> None:
        await self._ensure_index()

    async def _ensure_index(self) -> None:
        self.schema = await install_schema(self._client, self._settings)
        self._index_ready = True

    async def write(self, batch: WriteBatch) -> int:
        if not batch.stored:
            return 0
        if not self._index_ready:  # after an outage the store may be a new, empty one
            await self._ensure_index()
        rejected: dict[str, str] = {}
        pending = await self._bulk_once(batch.stored, rejected)
        if rejected or pending:
            failed = rejected.keys() | {item.uid for item in pending}
            observe_indexed([item for item in batch.stored if item.uid not in failed])
            raise RejectedAlerts(rejected, WriteBatch(stored=pending))
        observe_indexed(batch.stored)
        return len(batch.stored)

    async def _bulk_once(self, items: list[Stored], rejected: dict[str, str]) -> list[Stored]:
        """One bulk request; returns the throttled items, adds the refused ones to `rejected`."""
        try:
            response = await self._client.bulk(operations=bulk_body(self._index, items))
        except ConnectionError:
            self._index_ready = False
            raise
        except ApiError as exc:
            if exc.meta.status != 429:
                raise  # the circuit breaker decides: bisect a 400, open on the rest
            THROTTLED.labels("429").inc(len(items))
            return items
        if not response.get("errors"):
            return []
        throttled = []
        for item, result in zip(items, response["items"]):
            outcome = next(iter(result.values()), {})
            if not outcome.get("error"):
                continue
            if outcome.get("status") in _RETRYABLE_STATUS:
                THROTTLED.labels(str(outcome.get("status"))).inc()
                throttled.append(item)
            else:
                rejected[item.uid] = f"{outcome.get('status')} {_reason(outcome.get('error'))}"
        return throttled

    def is_permanent(self, exc: Exception) -> bool:
        # a 400 for the whole request (bad body): bisect to find the document at fault
        return isinstance(exc, BadRequestError)

    async def close(self) -> None:
        await self._client.close()


def bulk_body(index: str, items: list[Stored]) -> bytes:
    """The NDJSON of one bulk request, built as bytes (the client's stdlib JSON encoding of a list
    of dicts cost more than the whole request's other work). `index` (not `create`) with `_id` =
    alert id: a re-indexed alert overwrites itself."""
    lines = []
    action = _encode_json({"index": {"_index": index, "_id": ""}})[:-4]  # up to the id (its quotes too)
    for item in items:
        lines.append(action + _encode_json(item.uid) + b"}}")
        lines.append(alert_document(item))
    lines.append(b"")
    return b"\n".join(lines)


def _reason(error: Any) -> str:
    if isinstance(error, dict):
        return f"{error.get('type')}: {error.get('reason')}"
    return str(error)
