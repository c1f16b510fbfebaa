"""Settings: environment parsing, secrets, and the generated documentation table."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import BaseModel, SecretStr, ValidationError

from config.settings import Settings, settings_table


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No ALERTSTREAM_* variable of the caller's shell leaks into these tests."""
    import os

    for name in list(os.environ):
        if name.startswith("ALERTSTREAM_"):
            monkeypatch.delenv(name)
    yield


def test_defaults() -> None:
    s = Settings()
    assert s.topic_partitions == 4
    assert (s.stream_batch.max_events, s.stream_batch.timeout_s) == (1000, 0.2)
    assert (s.dedup_batch.max_events, s.dedup_batch.timeout_s) == (16, 0.2)
    assert s.database_url is None and s.kafka_bootstrap is None


def test_env_topic_partitions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERTSTREAM_TOPIC_PARTITIONS", "12")
    assert Settings().topic_partitions == 12


def test_env_is_case_insensitive_and_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("alertstream_topic_partitions", "3")
    assert Settings().topic_partitions == 3
    monkeypatch.setenv("alertstream_topic_partitions", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_env_nested_block(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERTSTREAM_STREAM_BATCH__MAX_EVENTS", "50")
    monkeypatch.setenv("ALERTSTREAM_SINK_RETRY__MAX_BACKOFF_S", "2.5")
    s = Settings()
    assert s.stream_batch.max_events == 50
    assert s.sink_retry.max_backoff_s == 2.5


def test_env_nested_field_keeps_the_blocks_other_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Setting one field of a block must not reset its siblings to the block class's defaults:
    dedup_batch's max_events is 16, BatchConfig's is 2000."""
    monkeypatch.setenv("ALERTSTREAM_STREAM_BATCH__MAX_EVENTS", "50")
    monkeypatch.setenv("ALERTSTREAM_DEDUP_BATCH__TIMEOUT_S", "1.5")
    s = Settings()
    assert (s.stream_batch.max_events, s.stream_batch.timeout_s) == (50, 0.2)
    assert (s.dedup_batch.max_events, s.dedup_batch.timeout_s) == (16, 1.5)
    assert s.sink_retry == Settings.model_fields["sink_retry"].get_default(call_default_factory=True)


def test_env_nested_field_is_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERTSTREAM_DEDUP_BATCH__MAX_EVENTS", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_database_url_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql://alert:hunter2-very-secret@db.example:5432/alerts"
    monkeypatch.setenv("ALERTSTREAM_DATABASE_URL", url)
    s = Settings()
    assert isinstance(s.database_url, SecretStr)
    assert "hunter2" not in repr(s) and "hunter2" not in str(s)
    assert "hunter2" not in repr(s.database_url)
    assert "hunter2" not in s.model_dump_json()
    assert s.require_database_url() == url


def test_require_database_url_unset() -> None:
    with pytest.raises(RuntimeError, match="ALERTSTREAM_DATABASE_URL"):
        Settings().require_database_url()


def test_search_secrets_are_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALERTSTREAM_SEARCH_PASSWORD", "pw-secret-1")
    monkeypatch.setenv("ALERTSTREAM_SEARCH_API_KEY", "key-secret-2")
    text = repr(Settings())
    assert "pw-secret-1" not in text and "key-secret-2" not in text


# ---------------------------------------------------------------- the documentation table


def all_fields(model: type[BaseModel], prefix: str = "ALERTSTREAM_") -> Iterator[tuple[str, object]]:
    """(environment variable, FieldInfo) of every field, nested blocks included, recursively."""
    for name, field in model.model_fields.items():
        env = f"{prefix}{name.upper()}"
        yield env, field
        default = field.get_default(call_default_factory=True)
        nested = type(default) if isinstance(default, BaseModel) else None
        annotation = field.annotation
        if nested is None and isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested = annotation
        if nested is not None:
            yield from all_fields(nested, env + "__")


def test_every_field_has_a_description() -> None:
    missing = [env for env, field in all_fields(Settings) if not (field.description or "").strip()]
    assert missing == [], f"settings without a description (the docs are generated from it): {missing}"


def table_rows() -> dict[str, tuple[str, str]]:
    rows = {}
    for line in settings_table().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) >= 3, line
        variable, default, meaning = cells[0], cells[1], "|".join(cells[2:]).strip()
        rows[variable.strip("`")] = (default, meaning)
    return rows


def test_settings_table_lists_every_leaf_field_with_a_description() -> None:
    rows = table_rows()
    leaves = {
        env for env, field in all_fields(Settings)
        if not isinstance(field.get_default(call_default_factory=True), BaseModel)
    }
    assert set(rows) == leaves
    assert {"ALERTSTREAM_TOPIC_PARTITIONS", "ALERTSTREAM_STREAM_BATCH__MAX_EVENTS",
            "ALERTSTREAM_DEDUP_BATCH__TIMEOUT_S", "ALERTSTREAM_SINK_RETRY__ATTEMPT_TIMEOUT_S"} <= leaves
    empty = [env for env, (_, meaning) in rows.items() if not meaning]
    assert empty == []


def test_settings_table_shows_the_fields_defaults() -> None:
    rows = table_rows()
    assert rows["ALERTSTREAM_TOPIC_PARTITIONS"][0] == "`4`"
    assert rows["ALERTSTREAM_DEDUP_BATCH__MAX_EVENTS"][0] == "`16`"  # the field's default, not BatchConfig's
    assert rows["ALERTSTREAM_STREAM_BATCH__MAX_EVENTS"][0] == "`1000`"
    assert rows["ALERTSTREAM_DATABASE_URL"][0] == "(unset)"


def test_the_description_check_catches_a_new_undocumented_field() -> None:
    """The check above must fail when a field without a description is added, nested or not."""
    from pydantic import Field

    from config.settings import BatchConfig

    class Inner(BatchConfig):
        undocumented: int = 1

    class Bigger(Settings):
        also_undocumented: str = "x"
        block: Inner = Field(default_factory=Inner, description="a block")

    missing = [env for env, field in all_fields(Bigger) if not (field.description or "").strip()]
    assert missing == ["ALERTSTREAM_ALSO_UNDOCUMENTED", "ALERTSTREAM_BLOCK__UNDOCUMENTED"]
