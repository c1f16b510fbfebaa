"""The configuration reference (docs/configuration.md), generated from `config.settings`.

Fields are grouped by the `# --- <area>` comment headers of the `Settings` class: whoever adds a
block of settings under a header of their own gets a section of their own, with no list to keep.
A field without a `description=` is an error, not an empty cell: the reference is the only
documentation a setting gets.
"""

from __future__ import annotations

import ast
import inspect
import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, SecretStr

from config.settings import SETTINGS_BEGIN, SETTINGS_END, Settings

PREFIX = "ALERTSTREAM_"
NESTED = "__"
_BLOCK = re.compile(re.escape(SETTINGS_BEGIN) + r"\n(.*?)\n?" + re.escape(SETTINGS_END), re.S)
_HEADER = re.compile(r"^\s*# ---\s*(.+?)\s*$")


class UndocumentedSetting(ValueError):
    """A settings field has no description."""


@dataclass(frozen=True)
class Row:
    env: str
    default: str
    secret: bool
    meaning: str


def env_names(model: type[BaseModel] = Settings, prefix: str = PREFIX) -> set[str]:
    """Every environment variable the settings read: fields, nested blocks as a whole (JSON) and
    each field of a block (`<BLOCK>__<FIELD>`)."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        env = f"{prefix}{name.upper()}"
        names.add(env)
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            names |= env_names(type(default), env + NESTED)
    return names


def secret_env_names(model: type[BaseModel] = Settings) -> set[str]:
    """The variables that hold secrets (`SecretStr` fields): they belong in a Secret, never a ConfigMap."""
    return {f"{PREFIX}{name.upper()}" for name, field in model.model_fields.items() if _is_secret(field.annotation)}


def _is_secret(annotation: object) -> bool:
    return annotation is SecretStr or SecretStr in getattr(annotation, "__args__", ())


def field_groups(model: type[BaseModel] = Settings) -> list[tuple[str, list[str]]]:
    """(area title, field names) in source order, from the `# --- title` comments of the class.
    Fields a subclass adds (or that precede every header) fall into "Other settings"."""
    titles: dict[str, str] = {}
    for cls in reversed(model.__mro__):
        if cls is BaseModel or not (isinstance(cls, type) and issubclass(cls, BaseModel)) or cls.__module__.startswith("pydantic"):
            continue
        try:
            lines, _ = inspect.getsourcelines(cls)
        except (OSError, TypeError):  # a model made at run time has no source
            continue
        titles.update(_titles_from_source(lines))
    groups: dict[str, list[str]] = {}
    for name in model.model_fields:
        groups.setdefault(titles.get(name, "Other settings"), []).append(name)
    return list(groups.items())


def _titles_from_source(lines: list[str]) -> dict[str, str]:
    tree = ast.parse(textwrap.dedent("".join(lines)))  # line numbers relative to `lines`
    fields = [(node.lineno, node.target.id) for cls in tree.body if isinstance(cls, ast.ClassDef)
              for node in cls.body if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)]
    headers = [(i + 1, _title(m.group(1))) for i, line in enumerate(lines) if (m := _HEADER.match(line))]
    titles = {}
    for lineno, name in fields:
        above = [title for at, title in headers if at < lineno]
        if above:
            titles[name] = above[-1]
    return titles


def _title(comment: str) -> str:
    """`the worker` → `The worker`: the header comment, as a section title."""
    return comment[:1].upper() + comment[1:]


def rows(model: type[BaseModel], names: list[str], prefix: str = PREFIX, defaults: BaseModel | None = None,
         context: str = "") -> Iterator[Row]:
    for name in names:
        field = model.model_fields[name]
        env = f"{prefix}{name.upper()}"
        if not (field.description or "").strip():
            raise UndocumentedSetting(f"{env} ({model.__name__}.{name}) has no description=: document it in config/settings.py")
        default = getattr(defaults, name) if defaults is not None else field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):  # a nested block: one row per field, each says what the block is for
            yield from rows(type(default), list(type(default).model_fields), env + NESTED, default, f"{field.description} ")
            continue
        shown = "(unset)" if default is None else f"`{default}`"
        meaning = f"{context}{field.description}".replace("|", "\\|")  # a bare | would end the table cell
        yield Row(env, shown, _is_secret(field.annotation), meaning)


def reference_body(model: type[BaseModel] = Settings) -> str:
    """The generated part of docs/configuration.md: one table per area."""
    parts = []
    for title, names in field_groups(model):
        table = ["| variable | default | meaning |", "|---|---|---|"]
        table += [f"| `{r.env}` | {r.default} | {'**secret** ' if r.secret else ''}{r.meaning} |"
                  for r in rows(model, names)]
        parts.append(f"### {title}\n\n" + "\n".join(table))
    return "\n\n".join(parts)


def generated_block(text: str) -> str | None:
    """What a file holds between its settings markers, or None without markers."""
    match = _BLOCK.search(text)
    return match.group(1) if match else None


def update_settings_block(path: str | Path, model: type[BaseModel] = Settings) -> None:
    """Replace the generated reference between the settings markers of a Markdown file."""
    path = Path(path)
    text = path.read_text()
    if generated_block(text) is None:
        raise ValueError(f"{path} has no {SETTINGS_BEGIN} ... {SETTINGS_END} markers")
    body = reference_body(model)
    path.write_text(_BLOCK.sub(lambda _: f"{SETTINGS_BEGIN}\n{body}\n{SETTINGS_END}", text, count=1))
