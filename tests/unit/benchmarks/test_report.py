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


def test_the_searchable_latency_and_its_target_are_reported_when_measured() -> None:
    import json
    from pathlib import Path

    from benchmarks.report import render_markdown

    r = json.loads((Path(__file__).parents[3] / "benchmarks/results/20261204T192956Z.json").read_text())
    assert "searchable" not in render_markdown(r)  # a run from before the measurement: nothing made up
    r.update(index_latency_p50_s=0.4, index_latency_p99_s=3.2, searchable_p99_bound_s=4.2)
    r["target"].update(searchable_p99_s=5.0, searchable_p99_met=True)
    text = render_markdown(r)
    assert "p99 **3.20 s**; searchable at the next refresh: p99 ≤ **4.20 s**" in text
    assert "p99 to searchable < 5 s met" in text
