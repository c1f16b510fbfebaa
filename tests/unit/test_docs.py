"""The docs that are generated from code must match the code."""

from __future__ import annotations

import re

from streams.settings import settings_table
from tests.conftest import REPO


def test_readme_settings_table_is_current() -> None:
    readme = (REPO / "README.md").read_text()
    match = re.search(r"<!-- settings:begin -->\n(.*?)\n<!-- settings:end -->", readme, re.S)
    assert match, "README.md lost its settings markers"
    assert match.group(1) == settings_table(), "README settings table is stale: regenerate it with `alertstream config`"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (REPO / "README.md").read_text()
    assert "make test" in readme.split("\n## ")[0]
    commands = [line for line in (REPO / ".ci/run").read_text().splitlines() if line and not line.startswith(("#", "set ", "cd "))]
    assert commands == ["make test"]


def test_exported_alert_json_schema_is_current() -> None:
    import json

    from schemas.alert import SCHEMA_VERSION, alert_json_schema

    exported = json.loads((REPO / "schemas" / "alert.schema.json").read_text())
    assert exported == json.loads(json.dumps(alert_json_schema())), "regenerate schemas/alert.schema.json (make docs)"
    assert exported["$defs"]["Alert"]["properties"]["schemaVersion"]["default"] == SCHEMA_VERSION
