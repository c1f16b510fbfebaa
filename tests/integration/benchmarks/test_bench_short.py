"""The benchmark runner end to end: a small real run (its own stack, a real worker, real ceilings)
must produce complete, self-consistent results, plots and a summary, and stop everything it started.

Only relations are checked (p50 <= p99, every produced alert processed, ratios consistent with the
ceilings), never absolute speeds: CI machines are noisy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from benchmarks.runner import REGRESSION_FACTOR, compare_baseline
from tests.conftest import REPO

pytestmark = pytest.mark.integration

REQUIRED_KEYS = ("scenario", "duration_s", "throughput_alerts_s", "throughput_mb_s", "latency_p50_s", "latency_p95_s",
                 "latency_p99_s", "ceiling_ratio", "broker_ratio", "copy_ratio", "ceilings", "drain_s", "lag", "cpu",
                 "peak_rss_bytes", "timeseries", "produced", "processed_alerts", "command", "reference")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("bench")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALERTSTREAM_")}
    cmd = [sys.executable, "-m", "benchmarks.runner", "--rate", "500", "--duration", "20",
           "--ceiling-records", "2000", "--warm-load", "5", "--out", str(out), "--no-progress"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    results = list(out.glob("*.json"))
    assert proc.returncode == 0 and len(results) == 1, (
        f"bench exited {proc.returncode}, results {results}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-5000:]}")
    return json.loads(results[0].read_text()), out, proc


def test_results_have_every_key_with_sane_values(bench_run) -> None:  # noqa: ANN001
    r, _, _ = bench_run
    missing = [k for k in REQUIRED_KEYS if k not in r]
    assert not missing, f"missing keys {missing}"
    assert r["ok"] and not r["problems"], r["problems"]
    assert r["scenario"] == "steady"
    assert 15 < r["duration_s"] < 40
    assert r["throughput_alerts_s"] > 0 and r["throughput_mb_s"] > 0
    assert 0 < r["latency_p50_s"] <= r["latency_p95_s"] <= r["latency_p99_s"] <= r["latency_max_s"]
    assert r["drain_s"] is not None and r["drain_s"] >= 0


def test_every_produced_alert_is_processed_stored_and_indexed(bench_run) -> None:  # noqa: ANN001
    r, _, _ = bench_run
    produced = r["produced"]
    assert produced["ok"] and produced["delivery_errors"] == 0
    assert produced["alerts"] > 0 and produced["bytes"] > 0
    assert r["processed_alerts"] >= produced["alerts"]
    assert sum(r["outcomes"].values()) == r["processed_alerts"]
    assert 0 < r["stored_alerts"] <= r["processed_alerts"]
    # every stored alert has its row, and the latency covers those rows
    assert r["latency_rows"] == r["stored_alerts"]
    assert r["indexed_alerts"] >= r["stored_alerts"]
    assert r["dlq_records"] == 0


def test_ratios_follow_from_the_ceilings(bench_run) -> None:  # noqa: ANN001
    r, _, _ = bench_run
    broker, copy = r["ceilings"]["broker"], r["ceilings"]["copy"]
    assert broker["items"] == 2000 and broker["alerts_s"] > 0 and broker["items_s"] > 0
    assert copy["items"] > 0 and copy["alerts_s"] > 0
    assert r["broker_ratio"] == pytest.approx(r["throughput_alerts_s"] / broker["alerts_s"], rel=1e-3, abs=1e-6)
    assert r["copy_ratio"] == pytest.approx(r["throughput_alerts_s"] / copy["alerts_s"], rel=1e-3, abs=1e-6)
    assert r["ceiling_ratio"] == pytest.approx(max(r["broker_ratio"], r["copy_ratio"]), rel=1e-3, abs=1e-6)


def test_resources_and_lag_are_measured(bench_run) -> None:  # noqa: ANN001
    r, _, _ = bench_run
    for name in ("worker-0", "kafka", "postgres", "search"):
        assert r["cpu"][name]["cpu_s"] > 0, name
        assert r["cpu"][name]["cpu_s_per_1000_alerts"] > 0, name
        assert r["peak_rss_bytes"][name] > 0, name
    samples = r["timeseries"]
    assert len(samples) >= 15
    assert [s["t"] for s in samples] == sorted(s["t"] for s in samples)
    assert samples[-1]["produced_alerts"] == r["produced"]["alerts"]
    assert samples[-1]["backlog"] <= 0  # drained
    assert r["lag"]["backlog_max_alerts"] >= 0
    assert any(v is not None for s in samples for v in s["kafka_lag"].values())


def test_plots_and_summary_are_written(bench_run) -> None:  # noqa: ANN001
    r, out, _ = bench_run
    for key in ("throughput", "lag", "latency", "cpu"):
        path = out / r["files"][key]
        assert path.read_bytes()[:8] == PNG_MAGIC, path
    md = (out / r["files"]["md"]).read_text()
    assert r["command"] in md and "alerts/s" in md and "ceiling ratio" in md
    for key in ("throughput", "lag", "latency"):
        assert r["files"][key] in md


def test_everything_started_is_stopped(bench_run) -> None:  # noqa: ANN001
    r, _, _ = bench_run
    assert set(r["pids"]) >= {"worker-0", "kafka", "postgres", "search"}
    alive = []
    for name, pid in r["pids"].items():
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(name)
        except psutil.NoSuchProcess:
            pass
    assert not alive, f"still running after the bench: {alive}"


# ---------------------------------------------------------------------------------------------- baseline rule


def _result(ratio: float, mode: str = "max", workers: int = 1, partitions: int = 4) -> dict:
    return {"ceiling_ratio": ratio, "mode": mode, "throughput_alerts_s": 1000.0,
            "config": {"workers": workers, "partitions": partitions, "ceiling_records": 10_000, "ceiling_repeats": 3}}


def test_baseline_fails_only_on_a_large_regression(tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    baseline.write_text(json.dumps({"ceiling_ratio": 0.2, "mode": "max", "workers": 1, "partitions": 4,
                                    "ceiling_records": 10_000, "ceiling_repeats": 3}))
    assert compare_baseline(_result(0.21), baseline)[0]
    assert compare_baseline(_result(0.2 * REGRESSION_FACTOR + 0.001), baseline)[0]  # slower, within noise: passes
    ok, message = compare_baseline(_result(0.2 * REGRESSION_FACTOR - 0.001), baseline)
    assert not ok and "REGRESSION" in message
    # another shape or no baseline: reported, never failed
    assert compare_baseline(_result(0.01, workers=2), baseline)[0]
    heavy = _result(0.01)
    heavy["config"]["load"] = "heavy"  # another load profile: another shape
    ok, message = compare_baseline(heavy, baseline)
    assert ok and "not compared" in message
    assert compare_baseline(_result(0.01), tmp_path / "missing.json")[0]


def test_committed_baseline_is_usable() -> None:
    baseline = json.loads((REPO / "benchmarks" / "baseline.json").read_text())
    assert 0 < baseline["ceiling_ratio"] < 10
    assert baseline["mode"] == "max" and baseline["workers"] >= 1 and baseline["partitions"] >= 1
    assert (REPO / baseline["result"]).exists(), "the baseline names the committed run it came from"


def test_the_warm_load_runs_before_the_window_and_is_not_counted(bench_run) -> None:  # noqa: ANN001
    r, out, _ = bench_run
    assert r["config"]["warm_load_s"] == 5
    assert list(r["phases_s"]).index("warm_load") < list(r["phases_s"]).index("load_and_drain")
    assert r["phases_s"]["warm_load"] >= 5
    # the run tenant's alerts only: the warm load's ~2,500 (500/s for 5 s) would show here
    assert 0 <= r["processed_alerts"] - r["produced"]["alerts"] < 500
    assert "Servers warmed first: 5 s" in (out / f"{r['run_id']}.md").read_text()
