"""Authentication: an API key names exactly one tenant.

The key is read from `X-API-KEY` (Keep's header) or from the password of HTTP
Basic auth (how Alertmanager's `basic_auth` and Grafana's webhook contact
point send credentials; Keep accepts it too; the user name is ignored).
A key never writes to another tenant: there is no way to name one but the key
(an optional `X-Alertstream-Tenant` header is only checked against it).
Routes depend on `authenticated_tenant` and get the tenant name; the key store
is `request.app.state.keystore` (see gateway/app.py `create_app`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPBasic, HTTPBasicCredentials

from gateway.apikeys import KeyStoreUnavailable

api_key_header = APIKeyHeader(name="X-API-KEY", auto_error=False, description="An alertstream API key (`alertstream apikey create`).")
basic_auth = HTTPBasic(auto_error=False, description="Any user name; the password is the API key.")

_CHALLENGE = {"WWW-Authenticate": 'Basic realm="alertstream"'}


class AuthError(HTTPException):
    """401/403 (503 when keys cannot be checked) with the reason; the rejected-request metric reads `reason` (never the key)."""

    def __init__(self, reason: str, detail: str, status: int = 401, headers: dict[str, str] | None = None) -> None:
        super().__init__(status, detail=detail, headers=_CHALLENGE if status == 401 else headers)
        self.reason = reason


async def authenticated_tenant(
    request: Request,
    api_key: Annotated[str | None, Security(api_key_header)] = None,
    basic: Annotated[HTTPBasicCredentials | None, Security(basic_auth)] = None,
    expected_tenant: Annotated[str | None, Header(alias="X-Alertstream-Tenant", description=(
        "Optional: the tenant the sender means to write to; 403 if the key belongs to another one "
        "(catches a key pasted into the wrong tenant's sender)."))] = None,
) -> str:
    """The tenant of the request's API key, or 401 (no or bad key) / 403 (key of another tenant)."""
    if basic is None and request.headers.get("authorization") is not None:
        # present but not Basic (or not decodable): refused rather than ignored, whatever else came along
        raise AuthError("bad_authorization", "the Authorization header must be Basic auth with the API key as password")
    if api_key and basic is not None and basic.password != api_key:
        raise AuthError("bad_key", "X-API-KEY and the Basic auth password are two different keys")
    key = api_key or (basic.password if basic is not None else None)
    if not key:
        raise AuthError("unauthenticated", "missing API key: send X-API-KEY, or the key as the Basic auth password")
    try:
        tenant = await request.app.state.keystore.tenant_for(key)
    except KeyStoreUnavailable:
        # not the sender's fault: 503 makes every sender retry, and keys seen recently keep working
        raise AuthError("keystore_unavailable", "API keys cannot be checked right now; retry later", status=503,
                        headers={"Retry-After": "5"}) from None
    if tenant is None:
        raise AuthError("bad_key", "unknown or revoked API key")
    if expected_tenant is not None and expected_tenant != tenant:
        raise AuthError("wrong_tenant", "this API key belongs to another tenant", status=403)
    request.state.tenant = tenant  # for the metrics and rate limits of this request
    return tenant


Tenant = Annotated[str, Depends(authenticated_tenant)]

# the answers `authenticated_tenant` can give, for the OpenAPI spec of every route that depends on it
AUTH_RESPONSES = {
    401: {"description": "Missing, unknown or revoked API key, or an Authorization header that is not Basic (`reason`: unauthenticated, bad_key, bad_authorization)."},
    403: {"description": "The key belongs to another tenant than `X-Alertstream-Tenant` names (`reason`: wrong_tenant)."},
    503: {"description": "Keys cannot be checked (Postgres unreachable and the key not cached); see Retry-After."},
}


def uses_auth(dependant) -> bool:  # noqa: ANN001 - a fastapi Dependant
    return any(d.call is authenticated_tenant or uses_auth(d) for d in dependant.dependencies)
