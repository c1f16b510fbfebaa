"""The Prometheus alert rules are valid and do what their promtool unit tests say.

promtool is a Debian package (deploy/system-packages.sh). Locally a missing promtool skips these
tests; in CI (`CI` set) it fails them, so the rules are never shipped untested.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO

RULES = REPO / "deploy" / "prometheus"


def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI: run `make system-packages` (deploy/system-packages.sh)")
        pytest.skip("promtool is not installed (make system-packages)")
    return binary


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=REPO)


def test_rules_are_valid() -> None:
    files = sorted(str(p) for p in RULES.glob("*rules*.yml"))
    assert files, "no rule files (*rules*.yml, as deploy/prometheus/prometheus.yml loads them) in deploy/prometheus"
    result = run("check", "rules", *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_pass_their_unit_tests() -> None:
    tests = sorted(str(p) for p in (RULES / "tests").glob("*.yml"))
    assert tests, "no promtool tests in deploy/prometheus/tests"
    result = run("test", "rules", *tests)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test() -> None:
    import yaml

    alerts = {r["alert"] for f in RULES.glob("*rules*.yml") for g in yaml.safe_load(f.read_text())["groups"]
              for r in g["rules"] if "alert" in r}
    tested = {case["alertname"] for f in (RULES / "tests").glob("*.yml") for t in yaml.safe_load(f.read_text())["tests"]
              for case in t.get("alert_rule_test", []) if case.get("exp_alerts")}
    assert alerts - tested == set(), "alerts without a firing case in deploy/prometheus/tests"
