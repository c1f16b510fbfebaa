"""A token bucket: `burst` tokens, refilled at `rate_per_s`, in debt while negative.

Pure: time is passed in, nothing here sleeps or reads a clock. The gateway's rate limits
(gateway/ratelimit.py) and the normalizer's consumer throttle (pipeline/throttle.py) use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol


class Limit(Protocol):
    """A rate limit as configured (config.settings.RateLimit)."""

    rate_per_s: float
    burst: float


@dataclass(slots=True)
class Bucket:
    rate_per_s: float
    burst: float
    tokens: float  # negative while in debt (deferred requests)
    updated: float  # monotonic seconds of the last refill

    @classmethod
    def full(cls, limit: Limit, now: float) -> "Bucket":
        return cls(limit.rate_per_s, limit.burst, limit.burst, now)

    def refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate_per_s)
            self.updated = now

    def wait_s(self, cost: float = 1.0) -> float:
        """Seconds until `cost` tokens are there (0 if they are now)."""
        missing = cost - self.tokens
        # float slack: a client that waited exactly the advertised Retry-After must get through
        return 0.0 if missing <= 1e-9 else missing / self.rate_per_s

    def reset_s(self) -> float:
        """Seconds until the bucket is full again."""
        return max(0.0, (self.burst - self.tokens) / self.rate_per_s)

    @property
    def window_s(self) -> int:
        return max(1, math.ceil(self.burst / self.rate_per_s))
