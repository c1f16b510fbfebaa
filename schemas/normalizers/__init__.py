"""Provider payload → canonical alerts.

`normalize(provider, raw, ctx)` is the single entry point: it parses the bytes
once (orjson), picks the provider's module and returns canonical alerts, or
raises `InvalidPayload` with a reason code for the DLQ.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import orjson

from schemas.alert import Alert
from schemas.normalizers.base import InvalidPayload, NormalizeContext

Normalizer = Callable[[Any, NormalizeContext], list[Alert]]

# provider name (the `provider` header, the gateway's path) → module in this package
PROVIDER_MODULES: dict[str, str] = {
    "keep": "generic",
    "prometheus": "alertmanager",
    "alertmanager": "alertmanager",
    "grafana": "grafana",
    "datadog": "datadog",
    "pagerduty": "pagerduty",
    "cloudwatch": "cloudwatch",
    "sentry": "sentry",
    "zabbix": "zabbix",
}
DEFAULT_PROVIDER = "keep"

_loaded: dict[str, Normalizer] = {}


def normalizer_for(provider: str) -> Normalizer:
    fn = _loaded.get(provider)
    if fn is None:
        module = PROVIDER_MODULES.get(provider)
        if module is None:
            raise InvalidPayload("unknown_provider", f"no normalizer for provider {provider!r}; known: {', '.join(sorted(PROVIDER_MODULES))}")
        fn = importlib.import_module(f"schemas.normalizers.{module}").normalize
        _loaded[provider] = fn
    return fn


def parse_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidPayload("malformed_json", str(exc)) from None


def normalize(provider: str | None, raw: bytes, ctx: NormalizeContext) -> list[Alert]:
    fn = normalizer_for(provider or DEFAULT_PROVIDER)
    return fn(parse_json(raw), ctx)


__all__ = ["InvalidPayload", "NormalizeContext", "PROVIDER_MODULES", "normalize", "normalizer_for", "parse_json"]
