"""The worker's stages as data: what each reads, writes and keeps, built from the settings.

`create_app` wires a runner to every stage of this list (`Wiring`), and refuses to start with a
stage left unwired or a runner no stage names; `alertstream topology` prints the same list. So
the printed topology is what runs, not a description kept beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from config.settings import Settings
from streams.retry import tier_topics


STATELESS, STATEFUL, EVERY = "stateless", "stateful", "every"


class Kind(Enum):
    AGENT = "agent"  # a Faust agent on its input topic (Faust's consumer, acks, tables)
    CONSUMER = "consumer"  # a task running its own batch consumer on its input topic
    JOB = "job"  # housekeeping on a timer or a loop: no input topic


@dataclass(frozen=True, slots=True)
class Stage:
    name: str
    kind: Kind
    reads: str | None  # the input topic
    writes: tuple[str, ...]  # topics and stores, in the order a record reaches them
    state: str | None = None
    does: str = ""
    role: str = STATELESS  # the worker role that runs it (`worker_role`); EVERY: each process runs its own


def build_topology(settings: Settings, *, raw_store: bool = True) -> list[Stage]:
    """`raw_store`: the raw payload policy stores something (sinks/raw_storage.py `RawPolicy`)."""
    s = settings
    tiers = tier_topics(s)
    first_tier = tiers[:1]
    raw = ("postgres alert_raw",) if raw_store else ()
    normalized = (s.topic_normalized, s.topic_normalized_critical + " (critical severity)")
    stored = (s.topic_stored,) if s.search_enabled else ()
    stages = [
        Stage("normalize", Kind.CONSUMER, s.topic_alerts, (*normalized, s.topic_dlq, *first_tier, *raw),
              does="decode, normalize, fingerprint; over its rate: parked on the first retry tier"),
        Stage("normalize-critical", Kind.CONSUMER, s.topic_critical, (*normalized, s.topic_dlq, *raw),
              does="the same for critical alerts, ahead of any backlog"),
        Stage("deduplicate", Kind.AGENT, s.topic_normalized, ("postgres alert, last_alert", *stored, s.topic_dlq),
              state="dedup-state (RocksDB, changelog)", does="plan, write durably, then checkpoint state and offsets",
              role=STATEFUL),
        Stage("deduplicate-critical", Kind.AGENT, s.topic_normalized_critical,
              ("postgres alert, last_alert", *stored, s.topic_dlq), state="dedup-state (shared)",
              does="the same stage on the critical lane", role=STATEFUL),
    ]
    if s.search_enabled:
        stages.append(Stage("index", Kind.CONSUMER, s.topic_stored, (f"search {s.search_index}", *tiers, s.topic_dlq),
                            does="bulk-index stored alerts; throttled documents climb the retry tiers"))
    stages += [Stage(f"retry-tier-{n}", Kind.CONSUMER, topic, ("the record's retry_target topic",),
                     does=f"send parked records back after {delay:g} s")
               for n, (topic, delay) in enumerate(zip(tiers, s.retry_delays_s), start=1)]
    stages.append(Stage("maintain-postgres", Kind.JOB, None, ("postgres partitions",),
                        does="partitions ahead, retention, last_alert TTL (one worker at a time)", role=STATEFUL))
    if s.archive_enabled:
        stages.append(Stage("archive", Kind.JOB, None, (f"search {s.search_index}",),
                            does=f"alerts older than {s.archive_after_days} days from Postgres to search",
                            role=STATEFUL))
    stages.append(Stage("monitor-event-loop", Kind.JOB, None, (), does="report a blocked event loop", role=EVERY))
    return stages


def for_role(stages: list[Stage], role: str) -> list[Stage]:
    """The stages a worker process of this role (`worker_role`: all, stateless, stateful) runs."""
    return [stage for stage in stages if role == "all" or stage.role in (role, EVERY)]


def render(stages: list[Stage]) -> str:
    lines = []
    for stage in stages:
        head = f"{stage.name} [{stage.kind.value}, {stage.role}]"
        if stage.reads:
            head += f" {stage.reads}"
        if stage.writes:
            head += " ─► " + ", ".join(stage.writes)
        lines.append(head)
        if stage.state:
            lines.append(f"    state: {stage.state}")
        if stage.does:
            lines.append(f"    {stage.does}")
    return "\n".join(lines)


class Wiring:
    """Registers each stage's runner with the Faust app by the stage's kind, and checks that the
    topology and the runners match one to one (`check`). A process of a `role` registers only
    that role's stages; the others still need their runner, so every process checks the same
    whole topology."""

    def __init__(self, app: Any, stages: list[Stage], role: str = "all") -> None:  # noqa: ANN401 - a faust.App
        self.app = app
        self.stages = {stage.name: stage for stage in stages}
        self.runs = {stage.name for stage in for_role(stages, role)}
        self.wired: dict[str, Callable[..., Any]] = {}

    def __call__(self, name: str, channel: Any = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:  # noqa: ANN401
        """Decorator: `@wire("deduplicate", topic)` registers the function as that stage's runner
        (an agent's `channel` is the Faust topic of the stage's input)."""
        stage = self.stages.get(name)
        if stage is None:
            raise KeyError(f"no stage named {name!r} in the topology")
        if (stage.kind is Kind.AGENT) != (channel is not None):
            raise ValueError(f"stage {name!r} is a {stage.kind.value}: an agent takes its input topic, nothing else does")
        if channel is not None and channel.get_topic_name() != stage.reads:
            raise ValueError(f"stage {name!r} reads {stage.reads}, not {channel.get_topic_name()}")

        def register(runner: Callable[..., Any]) -> Callable[..., Any]:
            if name in self.wired:
                raise ValueError(f"stage {name!r} wired twice")
            self.wired[name] = runner
            if name not in self.runs:  # another role's stage: not started in this process
                return runner
            if stage.kind is Kind.AGENT:
                return self.app.agent(channel, name=name)(runner)
            return self.app.task(runner)
        return register

    def check(self) -> None:
        missing = [name for name in self.stages if name not in self.wired]
        if missing:
            raise RuntimeError(f"stages in the topology with no runner: {', '.join(missing)}")
