"""The worker supervisor's pure decisions: how many processes, when a crash becomes a crash loop."""

from __future__ import annotations

import os

from config.settings import Settings
import pytest

from streams.supervisor import (
    CRASH_LIMIT,
    CRASH_WINDOW_S,
    Supervisor,
    resolve_worker_processes,
    worker_ports,
    worker_roles,
    young_gc_every,
)


def test_default_is_one_process_per_core_capped_by_partitions() -> None:
    auto = Settings(worker_processes=0, topic_partitions=64)
    assert resolve_worker_processes(auto) == (os.cpu_count() or 1)
    assert resolve_worker_processes(auto.model_copy(update={"topic_partitions": 1})) == 1
    assert resolve_worker_processes(auto.model_copy(update={"worker_processes": 3})) == 3


def test_each_process_has_its_own_port() -> None:
    assert worker_ports(Settings(worker_processes=3, worker_web_port=7000)) == [7000, 7001, 7002]


def test_stateless_processes_split_the_roles_and_leave_one_for_dedup() -> None:
    assert worker_roles(Settings(), 3) == ["all"] * 3
    assert worker_roles(Settings(worker_role="stateful"), 1) == ["stateful"]  # a container of one role
    assert worker_roles(Settings(worker_stateless_processes=1), 2) == ["stateless", "stateful"]
    assert worker_roles(Settings(worker_stateless_processes=2), 5) == ["stateless"] * 2 + ["stateful"] * 3
    with pytest.raises(ValueError, match="none of the 2"):
        worker_roles(Settings(worker_stateless_processes=2), 2)
    with pytest.raises(ValueError, match="ROLE"):
        worker_roles(Settings(worker_stateless_processes=1, worker_role="stateless"), 2)


def test_each_child_is_started_with_its_role(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[dict[str, str]] = []

    class Popen:
        pid = 1

        def __init__(self, argv: list[str], env: dict[str, str]) -> None:
            started.append(env)

    monkeypatch.setattr("streams.supervisor.subprocess.Popen", Popen)
    monkeypatch.setenv("ALERTSTREAM_WORKER_STATELESS_PROCESSES", "1")
    sup = Supervisor(Settings(worker_stateless_processes=1), 2)
    for child in sup.children:
        sup._spawn(child)
    assert [env["ALERTSTREAM_WORKER_ROLE"] for env in started] == ["stateless", "stateful"]
    assert all("ALERTSTREAM_WORKER_STATELESS_PROCESSES" not in env for env in started)


def test_restarts_back_off_and_a_crash_loop_gives_up() -> None:
    sup = Supervisor(Settings(worker_processes=2), 2)
    child = sup.children[1]
    delays = []
    for i in range(CRASH_LIMIT):
        assert sup._reap(child, now=100.0 + i)
        delays.append(child.restart_at - (100.0 + i))
    assert delays == sorted(delays) and delays[0] == 1.0, "the delay grows"
    assert not sup._reap(child, now=100.0 + CRASH_LIMIT), "one crash more within the window is a crash loop"


def test_old_crashes_are_forgotten() -> None:
    sup = Supervisor(Settings(worker_processes=1), 1)
    child = sup.children[0]
    for i in range(CRASH_LIMIT + 3):
        assert sup._reap(child, now=i * (CRASH_WINDOW_S / 2 + 1)), "crashes spread over time never give up"


def test_young_gc_every_sets_only_the_young_threshold() -> None:
    import gc

    before = gc.get_threshold()
    try:
        young_gc_every(0)
        assert gc.get_threshold() == before  # 0 leaves Python's default
        young_gc_every(50_000)
        assert gc.get_threshold() == (50_000, *before[1:])
    finally:
        gc.set_threshold(*before)
