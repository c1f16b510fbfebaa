"""Provider payload → canonical alerts.

`normalize(provider, raw, ctx)` is the single entry point: it parses the bytes
once (orjson; a module with a typed path, `normalize_bytes`, decodes a
well-formed payload itself and leaves the rest to the parsed path), picks the
provider's module and returns canonical alerts, or
raises `InvalidPayload` with a reason code for the DLQ. Every alert it returns
has passed `check_alert` (no NUL at any depth, bounded nesting and labels, ISO
8601 UTC dates; with `ctx.check_content=False` the caller owns the NUL and depth
part), and the record stayed within its `Budget` (ctx.budget, else the default
limits): whatever a provider module does, nothing else escapes.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import orjson

from core.errors import DEFAULT_PROVIDER
from schemas.alert import Alert
from schemas.normalizers.base import (
    DEFAULT_LIMITS,
    Budget,
    InvalidPayload,
    NormalizeContext,
    NormalizeLimits,
    check_alert,
    check_alert_fields,
)

Normalizer = Callable[[Any, NormalizeContext], list[Alert]]
# a module's typed path over the raw bytes: its alerts, or None for the parsed path to decide
BytesNormalizer = Callable[[bytes, NormalizeContext], "list[Alert] | None"]

# provider name (the `provider` header, the gateway's path) → module in this package
PROVIDER_MODULES: dict[str, str] = {
    DEFAULT_PROVIDER: "generic",  # "keep": Keep's generic alert, also what no `provider` header means
    "prometheus": "alertmanager",
    "alertmanager": "alertmanager",
    "grafana": "grafana",
    "datadog": "datadog",
    "pagerduty": "pagerduty",
    "cloudwatch": "cloudwatch",
    "sentry": "sentry",
    "zabbix": "zabbix",
}
# written by alertstream itself (a dead-lettered canonical alert, replayed): no public path for it
INTERNAL_PROVIDER_MODULES: dict[str, str] = {"alertstream": "canonical"}

_loaded: dict[str, tuple[Normalizer, BytesNormalizer | None]] = {}


def normalizer_for(provider: str) -> Normalizer:
    return _paths_for(provider)[0]


def _paths_for(provider: str) -> tuple[Normalizer, BytesNormalizer | None]:
    paths = _loaded.get(provider)
    if paths is None:
        name = PROVIDER_MODULES.get(provider) or INTERNAL_PROVIDER_MODULES.get(provider)
        if name is None:
            raise InvalidPayload("unknown_provider", f"no normalizer for provider {provider!r}; known: {', '.join(sorted(PROVIDER_MODULES))}")
        module = importlib.import_module(f"schemas.normalizers.{name}")
        paths = _loaded[provider] = (module.normalize, getattr(module, "normalize_bytes", None))
    return paths


def parse_json(raw: bytes) -> Any:
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidPayload("malformed_json", str(exc)) from None


def normalize(provider: str | None, raw: bytes, ctx: NormalizeContext) -> list[Alert]:
    fn, typed = _paths_for(provider or DEFAULT_PROVIDER)
    if ctx.budget is None:
        ctx = dataclasses.replace(ctx, budget=Budget(DEFAULT_LIMITS))
    budget = ctx.budget
    alerts = typed(raw, ctx) if typed is not None else None
    if alerts is None:
        alerts = fn(parse_json(raw), ctx)
    limits = budget.limits
    if len(alerts) > limits.max_alerts_per_record:  # single-alert providers never get near; this is the backstop
        raise InvalidPayload("too_many_alerts", f"{len(alerts)} alerts in one record > limit {limits.max_alerts_per_record}")
    check = check_alert if ctx.check_content else check_alert_fields
    for alert in alerts:
        check(alert, limits)
    budget.check()  # the provider's loop charged each alert (alert_items); this covers the checks
    return alerts


__all__ = ["Budget", "InvalidPayload", "NormalizeContext", "NormalizeLimits", "PROVIDER_MODULES", "normalize",
           "normalizer_for", "parse_json"]
