"""Parts of the benchmark report that a reader relies on to judge a run (benchmarks/report.py)."""

from __future__ import annotations

from typing import Any

from benchmarks.report import _steal_note
from benchmarks.sampling import STOLEN


def _result(stolen_cores: float | None, cpus: int = 2) -> dict[str, Any]:
    cpu: dict[str, Any] = {"worker-0": {"cpu_s": 50.0, "cores": 0.8, "cpu_s_per_1000_alerts": 0.1}}
    if stolen_cores is not None:
        cpu[STOLEN] = {"cpu_s": stolen_cores * 60, "cores": stolen_cores, "cpu_s_per_1000_alerts": None}
    return {"cpu": cpu, "machine": {"cpus": cpus}}


def test_a_run_the_hypervisor_slowed_says_so() -> None:
    note = _steal_note(_result(1.0))  # a whole core of two
    assert "50%" in note and "steal" in note


def test_little_or_no_steal_adds_nothing() -> None:
    assert _steal_note(_result(0.05)) == ""  # 2.5% of two cores
    assert _steal_note(_result(0.0)) == ""
    assert _steal_note(_result(None)) == ""  # results from before steal was read
