"""How `stack down` knows a recorded server is still ours (streams/localstack.py `_alive`), on a real
child process. The full stack is tested in tests/integration/streams/test_localstack.py."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from streams import localstack

pytestmark = pytest.mark.skipif(localstack._start_ticks(1) is None, reason="needs /proc (Linux)")


@pytest.fixture
def child() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_a_stepped_wall_clock_does_not_disown_a_running_server(child: int) -> None:
    """A step of the wall clock (NTP, a resumed VM) moves psutil's create_time of every process by the
    step (seen: 30 s for a 30 s `date -s`), and `down` once left such servers running. The ticks since
    boot stay, and they decide."""
    rec = {"pid": child, **localstack._identity(child)}
    assert localstack._rec_alive(rec)
    stepped = {**rec, "create_time": rec["create_time"] + 30}
    assert localstack._rec_alive(stepped)


def test_another_process_on_a_reused_pid_is_not_ours(child: int) -> None:
    rec = {"pid": child, **localstack._identity(child)}
    assert not localstack._rec_alive({**rec, "start_ticks": rec["start_ticks"] - 100})


def test_records_without_ticks_fall_back_to_the_wall_clock_start(child: int) -> None:
    # stack.json written by earlier versions has create_time only
    rec = {"pid": child, **localstack._identity(child)}
    del rec["start_ticks"]
    assert localstack._rec_alive(rec)
    assert not localstack._rec_alive({**rec, "create_time": rec["create_time"] - 60})


def test_a_gone_process_is_not_alive() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    rec = {"pid": proc.pid, **localstack._identity(proc.pid)}
    proc.wait()
    assert not localstack._rec_alive(rec)
