"""Authentication: an API key names exactly one tenant.

The key is read from `X-API-KEY` (Keep's header) or from the password of HTTP
Basic auth (how Alertmanager's `basic_auth` and Grafana's webhook contact
point send credentials; Keep accepts it too; the user name is ignored).
A key never writes to another tenant: there is no way to name one but the key
(an optional `X-Alertstream-Tenant` header is only checked against it).
Routes depend on `authenticated_tenant` and get the tenant name; the key store
is `request.app.state.keystore`, the pre-auth limits `request.app.state.auth_guard`
(see gateway/app.py `create_app`).

A 401 carries no `WWW-Authenticate: Basic` challenge: a browser that gets one asks
for credentials and then sends them by itself with every later request to the
gateway, also with requests another web site makes it send. The one exception is an
Amazon SNS delivery (header `x-amz-sns-message-type`, which a web page cannot send
cross-site without a CORS preflight the gateway never grants): SNS sends the
credentials of its subscription URL only after a challenge.

Before a key costs a Postgres lookup, `AuthGuard` must admit it: a client address
whose unknown keys used up its bucket gets 429 (503 for senders that retry only on
5xx), and lookups per process are bounded (503 keystore_busy). Keys that are cached
never wait for either.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPBasic, HTTPBasicCredentials

from gateway.apikeys import KeyStoreUnavailable, looks_like_key
from gateway.ratelimit import client_bucket_key

api_key_header = APIKeyHeader(name="X-API-KEY", auto_error=False, description="An alertstream API key (`alertstream apikey create`).")
basic_auth = HTTPBasic(auto_error=False, description="Any user name; the password is the API key.")

SNS_MESSAGE_TYPE = "x-amz-sns-message-type"
SNS_PATH = "/alerts/event/cloudwatch"
_SNS_CHALLENGE = {"WWW-Authenticate": 'Basic realm="alertstream-sns"'}


class AuthError(HTTPException):
    """401/403/429 (503 when keys cannot be checked) with the reason; the rejected-request metric reads
    `reason` (never the key). 401 never challenges, except an SNS delivery (`challenge=True`)."""

    def __init__(self, reason: str, detail: str, status: int = 401, headers: dict[str, str] | None = None,
                 challenge: bool = False) -> None:
        super().__init__(status, detail=detail, headers={**(headers or {}), **(_SNS_CHALLENGE if challenge else {})} or None)
        self.reason = reason


def is_sns_delivery(request: Request) -> bool:
    return request.url.path == SNS_PATH and SNS_MESSAGE_TYPE in request.headers


def client_address(request: Request) -> str:
    # uvicorn puts the X-Forwarded-For client here for proxies listed in FORWARDED_ALLOW_IPS
    return client_bucket_key(request.client.host if request.client else None)


async def authenticated_tenant(
    request: Request,
    api_key: Annotated[str | None, Security(api_key_header)] = None,
    basic: Annotated[HTTPBasicCredentials | None, Security(basic_auth)] = None,
    expected_tenant: Annotated[str | None, Header(alias="X-Alertstream-Tenant", description=(
        "Optional: the tenant the sender means to write to; 403 if the key belongs to another one "
        "(catches a key pasted into the wrong tenant's sender)."))] = None,
) -> str:
    """The tenant of the request's API key, or 401 (no or bad key) / 403 (key of another tenant) /
    429 (too many unknown keys from this address) / 503 (keys cannot be checked now)."""
    if basic is None and request.headers.get("authorization") is not None:
        # present but not Basic (or not decodable): refused rather than ignored, whatever else came along
        raise AuthError("bad_authorization", "the Authorization header must be Basic auth with the API key as password")
    if api_key and basic is not None and basic.password != api_key:
        raise AuthError("bad_key", "X-API-KEY and the Basic auth password are two different keys")
    key = api_key or (basic.password if basic is not None else None)
    if not key:
        raise AuthError("unauthenticated", "missing API key: send X-API-KEY, or the key as the Basic auth password",
                        challenge=is_sns_delivery(request))
    tenant = await _tenant_of(request, key)
    if tenant is None:
        raise AuthError("bad_key", "unknown or revoked API key")
    if expected_tenant is not None and expected_tenant != tenant:
        raise AuthError("wrong_tenant", "this API key belongs to another tenant", status=403)
    request.state.tenant = tenant  # for the metrics and rate limits of this request
    return tenant


async def _tenant_of(request: Request, key: str) -> str | None:
    if not looks_like_key(key):
        return None  # garbage: no lookup, no cache slot, no token
    keystore = request.app.state.keystore
    hit = keystore.cached(key)
    if hit.fresh:
        return hit.tenant
    guard = request.app.state.auth_guard
    address, now = client_address(request), time.monotonic()
    wait = guard.address_wait_s(address, now)
    if wait:
        if hit.tenant is not None:
            return hit.tenant  # a key that authenticated before costs nothing: it keeps working
        raise AuthError("auth_rate_limited", "too many unknown API keys from this address; retry later",
                        status=429, headers={"Retry-After": str(wait)})
    if not guard.take_lookup(now):
        if hit.tenant is not None:
            return hit.tenant
        raise AuthError("keystore_busy", "too many API keys to check right now; retry later", status=503,
                        headers={"Retry-After": str(guard.lookup_wait_s())})
    try:
        tenant = await keystore.lookup(key)
    except KeyStoreUnavailable:
        # not the sender's fault: 503 makes every sender retry, and keys seen recently keep working
        raise AuthError("keystore_unavailable", "API keys cannot be checked right now; retry later", status=503,
                        headers={"Retry-After": "5"}) from None
    if tenant is None:
        guard.failed(address, time.monotonic())
    return tenant


Tenant = Annotated[str, Depends(authenticated_tenant)]

# the answers `authenticated_tenant` can give, for the OpenAPI spec of every route that depends on it
AUTH_RESPONSES = {
    401: {"description": "Missing, unknown or revoked API key, or an Authorization header that is not Basic (`reason`: unauthenticated, bad_key, bad_authorization). No `WWW-Authenticate` challenge (except to Amazon SNS deliveries)."},
    403: {"description": "The key belongs to another tenant than `X-Alertstream-Tenant` names (`reason`: wrong_tenant)."},
    429: {"description": "Too many unknown API keys from this client address (`reason`: auth_rate_limited; 503 for senders that retry only on 5xx); see Retry-After."},
    503: {"description": "Keys cannot be checked (Postgres unreachable and the key not cached, or too many lookups at once: `reason` keystore_unavailable, keystore_busy); see Retry-After."},
}


def uses_auth(dependant) -> bool:  # noqa: ANN001 - a fastapi Dependant
    return any(d.call is authenticated_tenant or uses_auth(d) for d in dependant.dependencies)
