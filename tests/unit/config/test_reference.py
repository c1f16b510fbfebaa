"""docs/configuration.md is generated from config/settings.py and must stay current: a setting
added without a description, or without regenerating the reference, fails here."""

from __future__ import annotations

import pytest
from pydantic import Field

from config.reference import (
    UndocumentedSetting,
    env_names,
    field_groups,
    generated_block,
    reference_body,
    update_settings_block,
)
from config.settings import Settings
from tests.conftest import REPO

REFERENCE = REPO / "docs" / "configuration.md"


def test_configuration_reference_is_current() -> None:
    block = generated_block(REFERENCE.read_text())
    assert block is not None, "docs/configuration.md lost its settings markers"
    assert block == reference_body(), "docs/configuration.md is stale: run `make docs`"


def test_every_setting_is_in_the_reference_with_its_env_name() -> None:
    text, body = REFERENCE.read_text(), reference_body()
    leaves = {name for name in env_names() if f"`{name}`" in body}  # blocks appear as their fields
    assert len(leaves) >= len(Settings.model_fields)
    missing = sorted(name for name in leaves if f"`{name}`" not in text)
    assert not missing, f"not in docs/configuration.md: {missing}"
    for name, field in Settings.model_fields.items():
        assert (field.description or "").strip(), f"Settings.{name} has no description="


def test_a_setting_without_description_fails_the_reference() -> None:
    class WithUndocumented(Settings):
        shiny_new_knob: int = 3

    with pytest.raises(UndocumentedSetting, match="ALERTSTREAM_SHINY_NEW_KNOB"):
        reference_body(WithUndocumented)


def test_a_documented_setting_not_regenerated_makes_the_reference_stale() -> None:
    class WithNew(Settings):
        shiny_new_knob: int = Field(3, description="A knob.")

    body = reference_body(WithNew)
    assert body != generated_block(REFERENCE.read_text())
    assert "| `ALERTSTREAM_SHINY_NEW_KNOB` | `3` | A knob. |" in body


def test_sections_follow_the_area_headers_of_the_settings_module() -> None:
    groups = dict(field_groups())
    assert "kafka_bootstrap" in groups['Where the servers are; unset means "start them locally with `alertstream stack up`"']
    assert "topic_partitions" in groups["Topics"]
    assert "worker_web_port" in groups["The worker"]
    assert sum(map(len, groups.values())) == len(Settings.model_fields)  # each field exactly once
    assert "Other settings" not in groups, "a field sits above every `# --- <area>` header"


def test_secrets_are_marked_and_nested_blocks_have_one_row_per_field() -> None:
    body = reference_body()
    assert "| `ALERTSTREAM_DATABASE_URL` | (unset) | **secret** " in body
    assert "`ALERTSTREAM_STREAM_BATCH__MAX_EVENTS` | `1000`" in body  # the field's default, not BatchConfig's


def test_update_rewrites_only_between_the_markers(tmp_path) -> None:  # noqa: ANN001
    doc = tmp_path / "c.md"
    doc.write_text("# head\n<!-- settings:begin -->\nold\n<!-- settings:end -->\ntail\n")
    update_settings_block(doc)
    text = doc.read_text()
    assert text.startswith("# head\n<!-- settings:begin -->\n### ") and text.endswith("<!-- settings:end -->\ntail\n")
    assert generated_block(text) == reference_body()
    doc.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        update_settings_block(doc)
