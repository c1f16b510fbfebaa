"""`alertstream run`, as `make run` calls it: stack, migrations, worker, demo, summary, clean stop."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import psutil
import pytest

from streams.demo import count_alerts, demo_records
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.integration


def test_run_processes_the_demo_and_stops_everything(tmp_path) -> None:  # noqa: ANN001
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALERTSTREAM_")}
    env.update({"ALERTSTREAM_DATA_DIR": str(tmp_path), "ALERTSTREAM_WORKER_WEB_PORT": str(free_port()),
                "ALERTSTREAM_BROKER_SESSION_TIMEOUT_S": "10", "COLUMNS": "120"})
    before = {p.pid for p in psutil.process_iter()}
    result = subprocess.run([sys.executable, "-m", "streams.cli", "run", "--exit-after-demo"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "demo processed" in result.stderr
    alerts, invalid = count_alerts(demo_records())
    assert f"{alerts} / {alerts}" in result.stderr  # every demo alert deduplicated
    assert "stopped the worker and the local stack" in result.stderr
    # nothing left running: no process of this run's stack (ports and data dir from its stack.json)
    stack = json.loads((tmp_path / "demo" / "stack" / "stack.json").read_text())
    ports = {rec["port"] for rec in stack.values() if isinstance(rec, dict) and rec.get("port")}

    def is_ours(p: psutil.Process) -> bool:
        if str(tmp_path) in " ".join(p.info["cmdline"] or []):
            return True
        try:  # a server still listening on one of the run's ports
            return any(c.laddr and c.laddr.port in ports for c in p.net_connections(kind="inet"))
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            return False

    leftovers = [p for p in psutil.process_iter(["pid", "name", "status", "cmdline"])
                 if p.pid not in before and p.info["status"] != psutil.STATUS_ZOMBIE and is_ours(p)]
    assert not leftovers, leftovers
