"""The docs that are generated from code must match the code."""

from __future__ import annotations

from config.settings import settings_table
from tests.conftest import REPO


def test_readme_points_to_the_one_generated_settings_reference() -> None:
    """The settings reference is generated once, in docs/configuration.md (checked by
    tests/unit/config/test_reference.py); the README only points to it."""
    readme = (REPO / "README.md").read_text()
    assert "<!-- settings:begin -->" not in readme
    assert "docs/configuration.md" in readme
    assert settings_table().count("| `ALERTSTREAM_") >= 1  # `alertstream config` still prints the flat table


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
