"""The worker's wiring, without a broker: `create_app` registers exactly the stages of its
topology, each on the topic the topology says, and `alertstream topology` prints that list."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import Settings
from streams.app import create_app, describe
from streams.topology import STATEFUL, STATELESS, Kind, Stage, Wiring, build_topology, for_role


def settings(tmp_path: Path, **overrides: object) -> Settings:
    # nothing listens there: the app is only built, never started (its producers log refused connects)
    return Settings(kafka_bootstrap="127.0.0.1:9", database_url="postgresql://nobody@127.0.0.1:9/none",
                    data_dir=tmp_path, **overrides)


def task_names(app) -> set[str]:  # noqa: ANN001
    return {task.__name__ for task in app._app_tasks}  # Faust keeps each task's name (functools.wraps)


# timers that watch the worker rather than move records: the stall watchdog, the lag poller, the
# status page's rate sampler
SUPERVISION = {"watch_for_stalled_agents", "poll_consumer_lag", "sample_rates"}


@pytest.mark.parametrize("overrides", [{}, {"search_enabled": False}, {"archive_enabled": True},
                                       {"retry_delays_s": [1.0]}])
def test_every_stage_of_the_topology_is_wired_and_nothing_else(tmp_path: Path, overrides: dict) -> None:
    s = settings(tmp_path, **overrides)
    app = create_app(s)
    stages = build_topology(s)

    agents = {name: agent.channel.get_topic_name() for name, agent in app.agents.items()}
    assert agents == {stage.name: stage.reads for stage in stages if stage.kind is Kind.AGENT}
    runners = {stage.name.replace("-", "_") for stage in stages if stage.kind is not Kind.AGENT}
    assert runners <= task_names(app)
    assert task_names(app) - runners == SUPERVISION  # no stage runs outside the topology


@pytest.mark.parametrize("role", ["stateless", "stateful"])
def test_a_process_of_one_role_runs_only_that_roles_stages(tmp_path: Path, role: str) -> None:
    s = settings(tmp_path, worker_role=role, archive_enabled=True)
    app = create_app(s)
    runs = for_role(build_topology(s), role)
    others = [stage for stage in build_topology(s) if stage not in runs]
    assert others and all(stage.role == (STATEFUL if role == "stateless" else STATELESS) for stage in others)

    assert set(app.agents) == {stage.name for stage in runs if stage.kind is Kind.AGENT}
    runners = {stage.name.replace("-", "_") for stage in runs if stage.kind is not Kind.AGENT}
    assert task_names(app) - SUPERVISION == runners
    # the dedup table lives only where the dedup stage runs: a stateless process restores no state
    # and stays out of the agents' consumer group (its own Faust app id)
    assert bool(app.tables) == (role == "stateful")
    assert (app.conf.id == s.app_id) == (role == "stateful")


def test_the_topology_follows_the_settings(tmp_path: Path) -> None:
    names = [stage.name for stage in build_topology(settings(tmp_path, search_enabled=False, retry_delays_s=[5.0, 60.0]))]
    assert "index" not in names and "archive" not in names
    assert [n for n in names if n.startswith("retry-tier-")] == ["retry-tier-1", "retry-tier-2"]
    full = build_topology(settings(tmp_path, archive_enabled=True))
    index = next(stage for stage in full if stage.name == "index")
    assert index.reads == Settings().topic_stored
    assert "archive" in [stage.name for stage in full]


def test_describe_prints_every_stage_with_its_topics(tmp_path: Path) -> None:
    s = settings(tmp_path)
    text = describe(s)
    for stage in build_topology(s):
        assert f"{stage.name} [{stage.kind.value}, {stage.role}]" in text
        if stage.reads:
            assert stage.reads in text
    assert s.topic_dlq in text and s.search_index in text


class FakeApp:
    """Records registrations the way Faust's app.agent/app.task decorators are called."""

    def __init__(self) -> None:
        self.agents: dict[str, object] = {}
        self.tasks: list[object] = []

    def agent(self, channel, name):  # noqa: ANN001, ANN201
        def register(fn):  # noqa: ANN001, ANN202
            self.agents[name] = channel
            return fn
        return register

    def task(self, fn):  # noqa: ANN001, ANN201
        self.tasks.append(fn)
        return fn


class FakeTopic:
    def __init__(self, name: str) -> None:
        self.name = name

    def get_topic_name(self) -> str:
        return self.name


STAGES = [Stage("dedup", Kind.AGENT, "in", ("out",)), Stage("job", Kind.JOB, None, ())]


async def runner() -> None:
    pass


def test_a_stage_left_unwired_stops_the_app() -> None:
    wire = Wiring(FakeApp(), STAGES)
    wire("job")(runner)
    with pytest.raises(RuntimeError, match="dedup"):
        wire.check()


def test_wiring_refuses_what_the_topology_does_not_say() -> None:
    app = FakeApp()
    wire = Wiring(app, STAGES)
    with pytest.raises(KeyError):
        wire("nameless")
    with pytest.raises(ValueError, match="reads in"):
        wire("dedup", FakeTopic("elsewhere"))
    with pytest.raises(ValueError, match="agent"):
        wire("dedup")  # an agent without its input topic
    with pytest.raises(ValueError, match="agent"):
        wire("job", FakeTopic("in"))
    wire("dedup", FakeTopic("in"))(runner)
    wire("job")(runner)
    with pytest.raises(ValueError, match="twice"):
        wire("job")(runner)
    wire.check()
    assert list(app.agents) == ["dedup"] and app.tasks == [runner]


def test_another_roles_stage_is_checked_but_not_started() -> None:
    app = FakeApp()
    wire = Wiring(app, [Stage("dedup", Kind.AGENT, "in", ("out",), role=STATEFUL), Stage("job", Kind.JOB, None, ())],
                  role="stateless")
    wire("job")(runner)
    with pytest.raises(RuntimeError, match="dedup"):  # its runner is still required
        wire.check()
    wire("dedup", FakeTopic("in"))(runner)
    wire.check()
    assert app.agents == {} and app.tasks == [runner]


async def test_the_agents_consumer_fetches_with_the_batch_consumers_bounds(tmp_path: Path) -> None:
    """Faust builds its agent consumer with fetch.min.bytes 1 and a 1.5 s wait, and has no setting for
    either: the app gives it the batch consumers' bounds (the broker side: tests/integration/streams/
    test_agent_fetch.py)."""
    s = settings(tmp_path, consumer_fetch_min_bytes=123_456, consumer_fetch_max_wait_ms=77)
    app = create_app(s)
    consumer = app.consumer._thread._create_worker_consumer(app.transport)
    assert (consumer._fetch_min_bytes, consumer._fetch_max_wait_ms) == (123_456, 77)
    other = create_app(settings(tmp_path / "other"))  # each app its own: a second app does not change the first's
    assert other.consumer._thread._create_worker_consumer(other.transport)._fetch_min_bytes == Settings.model_fields[
        "consumer_fetch_min_bytes"].default
    assert app.consumer._thread._create_worker_consumer(app.transport)._fetch_min_bytes == 123_456
