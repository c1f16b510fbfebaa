"""Alerts alertstream dead-lettered itself, replayed: `provider: alertstream`.

A sink that refuses an alert (`sink_rejected`) dead-letters the alert as alertstream built it:
the JSON of its `NormalizedAlert` (row id, receive time, content hash, canonical alert). Replayed
into the pipeline, it is taken as it is, not normalized a second time, so the replay restores
the alert exactly: its provider, `extra`, dates, fingerprint and content hash are the ones it had.

Not a public provider (the gateway offers no path for it): only alertstream writes it. The
record's tenant must be the alert's own, so a replay cannot move an alert to another tenant.
"""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.alert import Alert, NormalizedAlert
from schemas.normalizers.base import InvalidPayload, NormalizeContext

PROVIDER = "alertstream"


def normalize(payload: Any, ctx: NormalizeContext) -> list[Alert]:
    try:
        item = msgspec.convert(payload, NormalizedAlert)
    except msgspec.ValidationError as exc:
        raise InvalidPayload("invalid_shape", f"not an alert alertstream dead-lettered: {exc}") from None
    if item.alert.tenant != ctx.tenant:
        raise InvalidPayload("invalid_field", f"the alert's tenant {item.alert.tenant!r} is not the record's {ctx.tenant!r}")
    return [item.alert]
