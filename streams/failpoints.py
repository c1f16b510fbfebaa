"""Fail points: named steps where an operator or a test makes the worker fail on purpose.

Some faults cannot be provoked on demand against a live broker: one produce refused at exactly
the step after Postgres committed, one offset query failing mid-batch. A fail point stands in for
exactly that fault, in the real worker process against the real servers, so the crash tests can
check what such a failure does to the data (nothing acked, nothing lost).

Armed by a JSON file (`ALERTSTREAM_FAILPOINTS_PATH`): `{"dedup.send_stored": 3}` makes the next
three passes through that step raise `FailPointError`. The budget is kept in the file, so it is
shared by every process of the worker and survives a restart: a fault that makes a process exit
is not repeated forever by the fresh one. Unset (the default), `hit()` is one attribute check.
"""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

# The steps that have a fail point, and what a failure there stands for.
POINTS = {
    "dedup.offsets": "the broker query of the offset check (committed or earliest offsets) failed",
    "dedup.dead_letter": "producing a sink-rejected alert to the DLQ failed",
    "dedup.send_stored": "producing stored alerts to the indexer's topic failed",
    "dedup.state": "writing the dedup table after the sinks failed",
}


class FailPointError(RuntimeError):
    """The failure a fail point injects."""


class FailPoints:
    def __init__(self, path: Path | None) -> None:
        self.path = path

    def hit(self, name: str) -> None:
        if self.path is None:
            return
        if name not in POINTS:
            raise ValueError(f"unknown fail point {name!r}")
        with open(self.path, "r+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)  # the budget is shared by the worker's processes
            budget = json.load(f)
            if budget.get(name, 0) <= 0:
                return
            budget[name] -= 1
            f.seek(0)
            f.truncate()
            json.dump(budget, f)
        raise FailPointError(f"fail point {name}: {POINTS[name]}")
