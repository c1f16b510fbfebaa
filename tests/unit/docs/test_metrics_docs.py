"""docs/metrics.md stays true: every metric the code registers is listed there with its labels,
labels come from the agreed set, and the dashboards and alert rules query only listed metrics."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import PACKAGES, REPO

DOCS = REPO / "docs" / "metrics.md"
RULES = REPO / "deploy" / "prometheus"
DASHBOARDS = REPO / "deploy" / "grafana"
SOURCE_DIRS = PACKAGES
LABELS = {"tenant", "provider", "topic", "partition", "group", "sink", "reason", "state"}
LEGACY_LABELS = {"stage", "outcome", "error"}  # older than the rule; docs/metrics.md says why they stay
DEFINITION = re.compile(r'\b(?:Counter|Gauge|Histogram|Summary)\(\s*"(alertstream_[a-z0-9_]+)"')
HISTOGRAM_SERIES = re.compile(r"_(bucket|sum|count)$")


def documented() -> dict[str, set[str]]:
    """metric name → labels, from the tables of docs/metrics.md."""
    rows = re.findall(r"^\| `(alertstream_[a-z0-9_]+)` \| (\w+) \|([^|]*)\|", DOCS.read_text(), re.M)
    return {name: set(re.findall(r"`(\w+)`", labels)) for name, _kind, labels in rows}


def defining_modules() -> dict[str, str]:
    """metric name → module that defines it, found by reading every source file."""
    found = {}
    for folder in SOURCE_DIRS:
        for path in (REPO / folder).rglob("*.py") if (REPO / folder).is_dir() else []:
            for name in DEFINITION.findall(path.read_text()):
                found[name] = ".".join(path.relative_to(REPO).with_suffix("").parts)
    return found


def code_metrics() -> dict[str, set[str]]:
    """metric name (as written in the code, `_total` included) → label names, from the live objects."""
    modules = {importlib.import_module(m) for m in set(defining_modules().values())}
    metrics = {}
    for module in modules:
        for value in vars(module).values():
            name = getattr(value, "_name", None)
            if isinstance(name, str) and name.startswith("alertstream_") and hasattr(value, "_labelnames"):
                suffix = "_total" if type(value).__name__ == "Counter" else ""
                metrics[name + suffix] = set(value._labelnames)
    return metrics


def test_every_metric_in_the_code_is_documented_with_its_labels() -> None:
    docs = documented()
    code = code_metrics()
    assert set(defining_modules()) <= set(code), "a metric definition the test could not load"
    assert sorted(set(code) - set(docs)) == [], "metrics missing from docs/metrics.md"
    wrong = {name: (labels, docs[name]) for name, labels in code.items() if docs[name] != labels}
    assert wrong == {}, "labels in docs/metrics.md differ from the code (code, docs)"


def test_documented_metrics_exist() -> None:
    assert sorted(set(documented()) - set(code_metrics())) == [], "docs/metrics.md lists metrics the code does not have"


def test_names_and_labels_follow_the_convention() -> None:
    for name, labels in code_metrics().items():
        assert re.fullmatch(r"alertstream_[a-z0-9]+(_[a-z0-9]+)+", name), name
        assert labels <= LABELS | LEGACY_LABELS, f"{name}: labels {labels - LABELS - LEGACY_LABELS} outside the set"


def referenced_metrics(promql: str) -> set[str]:
    names = set(re.findall(r"\b(alertstream_[a-z0-9_]+)", promql))
    return {HISTOGRAM_SERIES.sub("", n) if HISTOGRAM_SERIES.search(n) and not n.endswith("_total") else n for n in names}


def rule_exprs() -> list[str]:
    return [r["expr"] for f in RULES.glob("*rules*.yml") for g in yaml.safe_load(f.read_text())["groups"] for r in g["rules"]]


def dashboard_exprs() -> list[str]:
    return [t["expr"] for d in dashboards().values() for p in d["panels"] for t in p.get("targets", [])] + \
           [v["query"]["query"] for d in dashboards().values() for v in d["templating"]["list"] if v["type"] == "query"]


def dashboards() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def recorded() -> set[str]:
    return {r["record"] for f in RULES.glob("*rules*.yml") for g in yaml.safe_load(f.read_text())["groups"]
            for r in g["rules"] if "record" in r}


@pytest.mark.parametrize("source", ["rules", "dashboards"])
def test_rules_and_dashboards_query_only_documented_metrics(source: str) -> None:
    exprs = rule_exprs() if source == "rules" else dashboard_exprs()
    assert exprs
    docs = set(documented())
    unknown = {n for e in exprs for n in referenced_metrics(e)} - docs
    assert unknown == set(), f"{source} query metrics not in docs/metrics.md"
    records = {n for e in exprs for n in re.findall(r"\b(alertstream:[a-z0-9_:]+)", e)}
    assert records <= recorded(), "a recording rule that deploy/prometheus does not define"
    assert recorded() <= set(re.findall(r"`(alertstream:[a-z0-9_:]+)`", DOCS.read_text())), "recording rules missing from the docs"


def test_dashboards_are_grafana_10_models() -> None:
    boards = dashboards()
    assert {"alertstream-lag.json", "alertstream-dedup.json", "alertstream-sinks.json", "alertstream-gateway.json"} <= set(boards)
    for name, board in boards.items():
        assert board["schemaVersion"] >= 36, name
        assert [i["name"] for i in board["__inputs"]] == ["DS_PROMETHEUS"], name
        assert board["templating"]["list"][0]["type"] == "datasource", f"{name}: no data-source variable"
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
        cells: dict[tuple[int, int], str] = {}
        for p in board["panels"]:
            pos = p["gridPos"]
            assert {"x", "y", "w", "h"} <= set(pos), (name, p["title"])
            assert pos["x"] + pos["w"] <= 24, f"{name}: {p['title']} runs off the 24-column grid"
            for cell in ((x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])):
                assert cell not in cells, f"{name}: {p['title']} overlaps {cells[cell]}"
                cells[cell] = p["title"]
            for t in p.get("targets", []):
                assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", (name, p["title"])


def test_dashboards_read_back_into_the_sdk_models_unchanged() -> None:
    """Each file is exactly what Grafana's own models (grafana-foundation-sdk) encode: a field the
    models do not know, or a value of the wrong shape, would not survive the round trip."""
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.cog.plugins import register_default_plugins
    from grafana_foundation_sdk.models.dashboard import Dashboard

    register_default_plugins()  # panel options and queries decode into their plugin's types
    for name, board in dashboards().items():
        model = {k: v for k, v in board.items() if k not in ("__inputs", "__requires")}  # the import envelope
        assert json.loads(json.dumps(Dashboard.from_json(model), cls=JSONEncoder)) == model, name


def test_dashboard_generator_type_checks(tmp_path: Path) -> None:
    """The generator's builder calls checked against the SDK's types: a wrong field name, enum or
    shape (e.g. a str where the panel width is an int) fails here, before Grafana ever sees it."""
    pytest.importorskip("mypy", reason="mypy is not installed (pyproject test extras)")
    result = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent", "--cache-dir", str(tmp_path),
                             str(DASHBOARDS / "generate.py")], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_are_generated_from_the_script() -> None:
    import runpy

    generate = runpy.run_path(str(DASHBOARDS / "generate.py"))
    for name in generate["DASHBOARDS"]:
        assert (DASHBOARDS / name).read_text() == generate["render"](name), \
            f"{name} is stale: run `python deploy/grafana/generate.py`"


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Each dashboard query as a recording rule, checked by promtool's real PromQL parser."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (make system-packages); test_alert_rules.py fails in CI")
    exprs = [e for e in dashboard_exprs() if not e.startswith("label_values(")]
    grafana_vars = {"$__all": ".*", "$group": ".*", "$tenant": ".*", "$provider": ".*"}
    rules = [{"record": f"dashboard:query_{i}", "expr": re.sub(r"\$\w+", lambda m: grafana_vars[m.group(0)], e)}
             for i, e in enumerate(exprs)]
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
