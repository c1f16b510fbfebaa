"""The HTTP gateway: Keep-compatible webhook paths → the `alerts` topics, 202 only once acked.

`create_app(settings, producer, keystore)` is a plain factory: more routers
(the federated search route) are added with `app.include_router(...)`.

Each webhook goes through, in this order (cheapest refusal first):
auth (401/403; 429/503 when unknown keys from its address or key lookups are over their limits) →
media type (415 unless JSON) → backpressure: broker down or lag over threshold (503/429) → body cap
(413) → rate limits on requests and body bytes (429/503, or deferred up to a debt cap for senders
that never retry) → validation by the pipeline's own normalizer, in a validation process, fair
between tenants (400 with its reason; 429/503 when the tenant has too many waiting) →
produce the sender's original bytes, headers `provider`/`tenant` → 202.

`/metrics` is not served here: it names tenants, so it has a listener of its own
(`gateway_metrics_bind`/`_port`, gateway/server.py), never the public webhook port.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.routing import APIRoute
from fastapi.responses import JSONResponse, Response

from config.settings import Settings
from core.errors import DEFAULT_PROVIDER, PROVIDER, PROVIDER_ID, TENANT, ErrorRouter
from gateway import metrics
from gateway.apikeys import KeyStore
from gateway.auth import AUTH_RESPONSES, SNS_MESSAGE_TYPE, SNS_PATH, AuthError, Tenant, uses_auth
from gateway.producer import Backpressure, GatewayProducer
from gateway.ratelimit import AuthGuard, RateLimiter
from gateway.validation import PoolBusy, ValidationPool, ValidatorFailed
from schemas.normalizers import PROVIDER_MODULES
from streams.health import loop_check, report
from streams.loop_monitor import PROBE_INTERVAL_S as LOOP_PROBE_INTERVAL_S
from streams.retry import error_router

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "schemas" / "examples"
GENERIC = DEFAULT_PROVIDER  # POST /alerts/event: Keep's AlertDto, no `provider` header (the pipeline's default provider)


@dataclass(frozen=True, slots=True)
class SenderPolicy:
    """How a sender reacts to refusals, hence what it gets (docs/gateway.md, per-provider table)."""

    throttle_status: int  # over a rate limit or under backpressure: 429 only for senders that honour it
    defer_over_limit: bool  # never retries: over its rate limit it is delayed on the first retry tier, not refused


_RETRIES_ON_5XX = SenderPolicy(503, False)
SENDERS: dict[str, SenderPolicy] = {
    GENERIC: SenderPolicy(429, False),  # API clients and Keep's own workflows: 429 + Retry-After is the contract
    "prometheus": _RETRIES_ON_5XX,  # Alertmanager retries on 5xx only, never on 429
    "alertmanager": _RETRIES_ON_5XX,
    "grafana": SenderPolicy(503, True),  # Grafana's webhook notifier never retries
}


def sender_policy(provider: str) -> SenderPolicy:
    # 5xx is the failure class every webhook sender's retry logic covers; 429 is not
    return SENDERS.get(provider, _RETRIES_ON_5XX)


@dataclass(slots=True)
class Gateway:
    settings: Settings
    producer: GatewayProducer
    limiter: RateLimiter
    validator: ValidationPool  # started by gateway/server.py before the first request
    router: ErrorRouter  # a deferred webhook is parked on the first retry tier (core/errors.py)

    @property
    def body_cap(self) -> int:
        return min(self.settings.gateway_max_body_bytes, self.settings.max_payload_bytes)

    def overloaded(self) -> str | None:
        """Why the gateway should not take webhooks now, or None."""
        if not self.producer.broker_up:
            return "broker_unavailable"
        threshold = self.settings.gateway_lag_threshold
        if threshold and self.producer.lag is not None and self.producer.lag > threshold:
            return "lag"
        return None


class Refused(Exception):
    def __init__(self, status: int, reason: str, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.reason, self.detail, self.headers = status, reason, detail, headers or {}


def create_app(settings: Settings, producer: GatewayProducer, keystore: KeyStore,
               limiter: RateLimiter | None = None, validator: ValidationPool | None = None) -> FastAPI:
    app = FastAPI(title="alertstream gateway", version="1",
                  description="Keep-compatible webhook ingestion into Kafka. Answers 202 only once the broker acknowledged "
                              "the record; pushes back with 429/503 and Retry-After (docs/gateway.md).")
    app.state.keystore = keystore
    app.state.auth_guard = AuthGuard.from_settings(settings)
    app.state.gateway = Gateway(settings, producer, limiter or RateLimiter.from_settings(settings),
                                validator or ValidationPool.from_settings(settings), error_router(settings))
    app.add_exception_handler(AuthError, _auth_failed)
    app.add_api_route("/alerts/event", _handler(GENERIC), methods=["POST"], status_code=202,
                      summary="Keep's generic alert (AlertDto or a list of them)", **_route_doc(GENERIC))
    for provider in sorted(PROVIDER_MODULES):
        app.add_api_route(f"/alerts/event/{provider}", _handler(provider), methods=["POST"], status_code=202,
                          summary=f"A {provider} webhook", **_route_doc(provider))
    app.add_api_route("/healthz", _healthz, methods=["GET"], include_in_schema=True, summary="Liveness: the event loop runs",
                      responses={503: {"description": "the event loop is, or just was, blocked (JSON names the failed check)"}})
    app.add_api_route("/readyz", _readyz, methods=["GET"], summary="Readiness: broker reachable, lag under threshold",
                      responses={503: {"description": "not ready: the JSON names the problems (broker_unavailable, lag)"}})
    from gateway.search_routes import router as search_router  # federated search (docs/search.md)

    app.include_router(search_router)
    _document_auth(app)  # keep last: it documents 401/403 on every authenticated route, included ones too
    return app


def _document_auth(app: FastAPI) -> None:
    def walk(routes) -> None:  # noqa: ANN001
        for route in routes:
            if isinstance(route, APIRoute) and uses_auth(route.dependant):
                for code, doc in AUTH_RESPONSES.items():
                    route.responses.setdefault(code, doc)
            elif (included := getattr(route, "original_router", None)) is not None:  # FastAPI >= 0.16x includes lazily
                walk(included.routes)
    walk(app.routes)


def _handler(provider: str):  # noqa: ANN202 - a route function per provider: its own OpenAPI body schema
    async def receive(request: Request, tenant: Tenant, provider_id: str | None = None) -> Response:
        started = time.perf_counter()
        gw: Gateway = request.app.state.gateway
        try:
            response = await _ingest(gw, request, provider, tenant, provider_id)
        except Refused as refused:
            metrics.REQUESTS_REJECTED.labels(tenant, provider, refused.reason).inc()
            response = JSONResponse({"detail": refused.detail, "reason": refused.reason}, refused.status, refused.headers)
        metrics.REQUEST_SECONDS.labels(tenant, provider).observe(time.perf_counter() - started)
        return response

    receive.__name__ = f"receive_{provider}"
    return receive


async def _ingest(gw: Gateway, request: Request, provider: str, tenant: str, provider_id: str | None) -> Response:
    policy = sender_policy(provider)
    _check_media_type(request)
    retry_after = str(gw.settings.gateway_retry_after_s)
    overload = gw.overloaded()
    if overload is not None:
        status = 503 if overload == "broker_unavailable" else policy.throttle_status
        raise Refused(status, overload, "the pipeline cannot take more now; retry later", {"Retry-After": retry_after})
    cap = gw.body_cap
    # the buckets charge the body's bytes too: known up front from Content-Length, else once read (bounded by the cap)
    body: bytes | None = None
    size = _declared_length(request, cap)
    if size is None:
        body = await _read_body(request, cap)
        size = len(body)
    decision = gw.limiter.acquire(tenant, provider, time.monotonic(), size=size, defer=policy.defer_over_limit)
    if not decision.allowed and not decision.deferred:
        raise Refused(policy.throttle_status, "rate_limited", f"over the {decision.limited_by} rate limit",
                      {**decision.headers, "Retry-After": str(decision.retry_after_s)})
    deferred = decision.deferred
    if body is None:
        body = await _read_body(request, cap)
    metrics.RECEIVED_BYTES.labels(tenant, provider).inc(len(body))
    headers = _record_headers(provider, tenant, provider_id)
    count, key, critical = await _validate(gw, body, headers, tenant, policy)
    topic = gw.settings.topic_critical if critical else gw.settings.topic_alerts
    if deferred:  # over its rate, for a sender that never retries: delayed on the first retry tier, not refused
        parked = gw.router.park(key=key, value=body, headers=headers, target=topic, counted=False)
        topic, headers = parked.topic, parked.headers
    try:
        delivered = await gw.producer.send(topic, key, body, list(headers.items()))
    except Backpressure as exc:
        raise Refused(503, exc.reason, exc.detail, {"Retry-After": retry_after}) from None
    metrics.REQUESTS_ACCEPTED.labels(tenant, provider).inc()
    metrics.ALERTS_ACCEPTED.labels(tenant, provider).inc(count)
    if deferred:
        metrics.REQUESTS_DEFERRED.labels(tenant, provider).inc()
    task = f"{delivered.topic}/{delivered.partition}@{delivered.offset}"
    return JSONResponse({"task_name": task, "alerts": count, "topic": delivered.topic, "partition": delivered.partition,
                         "offset": delivered.offset, "deferred": deferred}, 202, decision.headers)


def _check_media_type(request: Request) -> None:
    """Bodies are JSON, declared as such. A web page can make a browser POST `text/plain`, a form or a
    multipart body to any site without asking it first (a CORS "simple" request), but never
    `application/json`: requiring it means no page can post alerts with a visitor's credentials.
    Amazon SNS sends `text/plain` unless its subscription says otherwise; its deliveries carry
    `x-amz-sns-message-type`, a header no page can add without the preflight the gateway never grants."""
    raw = request.headers.get("content-type", "")
    media = raw.split(";", 1)[0].strip().lower()
    if media == "application/json" or (media.startswith("application/") and media.endswith("+json")):
        return
    if media == "text/plain" and request.url.path == SNS_PATH and SNS_MESSAGE_TYPE in request.headers:
        return
    shown = f"{raw[:64]!r}" if raw else "none"
    raise Refused(415, "unsupported_media_type", f"Content-Type must be application/json (got {shown})")


def _declared_length(request: Request, cap: int) -> int | None:
    declared = request.headers.get("content-length")
    if declared is None or not declared.isascii() or not declared.isdigit():
        return None
    if len(declared) > 12 or int(declared) > cap:
        raise Refused(413, "too_large", f"body of {declared[:16]} bytes > limit {cap}")
    return int(declared)


async def _read_body(request: Request, cap: int) -> bytes:
    """The raw bytes, refused as soon as they pass the cap (never read a huge body to the end)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise Refused(413, "too_large", f"body over the limit of {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _record_headers(provider: str, tenant: str, provider_id: str | None) -> dict[str, bytes]:
    headers = {TENANT: tenant.encode()}
    if provider != GENERIC:
        headers[PROVIDER] = provider.encode()
    if provider_id:
        headers[PROVIDER_ID] = provider_id.encode()
    return headers


async def _validate(gw: Gateway, body: bytes, headers: dict[str, bytes], tenant: str,
                    policy: SenderPolicy) -> tuple[int, bytes, bool]:
    """(alert count, record key, any critical) by the pipeline's own stage-one code, run in a validation
    process (gateway/validation.py); 400 for what the pipeline would dead-letter."""
    try:
        outcome = await gw.validator.validate(tenant, body, headers)
    except PoolBusy as exc:
        raise Refused(policy.throttle_status, "validation_busy", f"{exc}; retry later", {"Retry-After": "1"}) from None
    except TimeoutError:
        limit = gw.validator.timeout_s
        raise Refused(400, "validation_timeout", f"validating this body took over {limit:g} s; the pipeline would not "
                                                 "take it either: send smaller webhooks") from None
    except ValidatorFailed as exc:
        raise Refused(503, "validator_failed", f"{exc}; retry later", {"Retry-After": "5"}) from None
    if outcome.reason is not None:
        raise Refused(400, outcome.reason, outcome.detail)
    return outcome.alerts, outcome.key, outcome.critical


async def _auth_failed(request: Request, exc: AuthError) -> JSONResponse:
    path = request.url.path
    provider = path.rsplit("/", 1)[-1] if path.startswith("/alerts/event/") else GENERIC
    provider = provider if provider in PROVIDER_MODULES else "unknown"
    metrics.REQUESTS_REJECTED.labels("unknown", provider, exc.reason).inc()
    status = exc.status_code
    if status == 429 and path.startswith("/alerts/event"):
        status = sender_policy(provider).throttle_status  # Alertmanager & co. retry on 5xx only
    return JSONResponse({"detail": exc.detail, "reason": exc.reason}, status, exc.headers)


async def _healthz(request: Request) -> JSONResponse:
    """Liveness: the event loop runs (the loop monitor probed recently and saw no long block)."""
    window_s = request.app.state.gateway.settings.health_blocked_window_s
    status, body = report([loop_check(window_s, LOOP_PROBE_INTERVAL_S)])
    return JSONResponse(body, status)


async def _readyz(request: Request) -> JSONResponse:
    gw: Gateway = request.app.state.gateway
    problems = [p for p in (gw.overloaded(),) if p]
    # the key store is reported, not required: keys seen recently keep working while Postgres is down,
    # so taking every replica out of the load balancer for it would stop more than it protects
    body = {"ready": not problems, "problems": problems, "lag": gw.producer.lag, "inflight_bytes": gw.producer.inflight_bytes,
            "keystore": await request.app.state.keystore.ready()}
    return JSONResponse(body, 200 if not problems else 503)


# ---------------------------------------------------------------- OpenAPI: the body each path takes
_ERRORS = {
    400: "Invalid payload: the pipeline would dead-letter it (`reason` says why), or validating it ran over its time or memory.",
    413: "Body over the size limit.",
    415: "Content-Type is not application/json (`reason`: unsupported_media_type).",
    422: "Invalid query parameter.",
    429: "Rate limited (requests or body bytes), too many validations of the tenant waiting, or backpressure (senders that honour 429); see Retry-After.",
    503: "Broker unreachable or slow, pipeline lagging, or rate limited (senders that retry only on 5xx); see Retry-After.",
}


def _examples(provider: str) -> dict[str, Any]:
    prefix = "keep_generic" if provider == GENERIC else ("prometheus" if provider == "alertmanager" else provider)
    out = {}
    for path in sorted(EXAMPLES_DIR.glob(f"{prefix}_*.json")):
        if "subscription_confirmation" not in path.name:  # accepted, but never stored: not an example of an alert
            out[path.stem] = {"value": json.loads(path.read_text())}
    return out


def _route_doc(provider: str) -> dict[str, Any]:
    if provider == GENERIC:
        schema: dict[str, Any] = {"anyOf": [{"type": "object"}, {"type": "array", "items": {"type": "object"}}]}
    else:
        schema = {"type": "object"}
    media: dict[str, Any] = {"schema": schema}
    if examples := _examples(provider):
        media["examples"] = examples
    accepted = {"description": "The broker acknowledged the record.", "content": {"application/json": {"schema": {
        "type": "object", "properties": {"task_name": {"type": "string"}, "alerts": {"type": "integer"},
                                         "topic": {"type": "string"}, "partition": {"type": "integer"},
                                         "offset": {"type": "integer"}, "deferred": {"type": "boolean"}}}}}}
    return {
        "openapi_extra": {"requestBody": {"required": True, "content": {"application/json": media}}},
        "responses": {202: accepted, **{code: {"description": text} for code, text in _ERRORS.items()}},
    }
