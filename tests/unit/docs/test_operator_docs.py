"""The operator docs name real things: every ALERTSTREAM_* variable exists in the settings, every
`alertstream ...` command exists in the CLI, every relative link resolves, every on/off setting is
in the feature-flag guide, and the architecture diagram renders."""

from __future__ import annotations

import re

import pytest

from cli.main import build_parser
from config.settings import Settings
from tests.conftest import PACKAGES, REPO
from tests.unit.deploy.deploy_checks import VALID_ENV

DOCS = ["architecture.md", "configuration.md", "feature-flags.md", "scaling.md", "troubleshooting.md",
        "runbook.md", "training.md"]
_ENV = re.compile(r"ALERTSTREAM_[A-Z0-9_]*[A-Z0-9](__\*|_\*)?")
_CODE = re.compile(r"```.*?```|`[^`\n]+`", re.S)
_COMMAND = re.compile(r"(?:(?<![\w/.$-])alertstream|\$AS) +([a-z][\w-]*)(?: +([a-z][\w-]*))?")


def _text(name: str) -> str:
    return (REPO / "docs" / name).read_text()


def _subcommands(parser) -> dict:  # noqa: ANN001
    import argparse

    for action in parser._actions:  # argparse keeps subparsers here; no public accessor
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


@pytest.mark.parametrize("name", DOCS)
def test_every_variable_named_exists(name: str) -> None:
    unknown = set()
    for match in _ENV.finditer(_text(name)):
        token, wildcard = match.group(0), match.group(1)
        if wildcard:
            prefix = token[: -len(wildcard)] + wildcard[:-1]
            if not any(v.startswith(prefix) for v in VALID_ENV):
                unknown.add(token)
        elif token not in VALID_ENV:
            unknown.add(token)
    assert not unknown, f"docs/{name} names variables no setting reads: {sorted(unknown)}"


@pytest.mark.parametrize("name", DOCS)
def test_every_command_named_exists(name: str) -> None:
    top = _subcommands(build_parser())
    bad = []
    for code in _CODE.findall(_text(name)):
        for first, second in _COMMAND.findall(code):
            if first not in top:
                bad.append(f"alertstream {first}")
                continue
            nested = _subcommands(top[first])
            if nested and second and second not in nested:
                bad.append(f"alertstream {first} {second}")
    assert not bad, f"docs/{name} shows commands the CLI does not have: {sorted(set(bad))}"


@pytest.mark.parametrize("name", DOCS)
def test_relative_links_resolve(name: str) -> None:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", _text(name)):
        if "://" not in target:
            assert (REPO / "docs" / target).exists(), f"docs/{name} links to missing {target}"


def test_every_on_off_setting_is_in_the_feature_flag_guide() -> None:
    guide = _text("feature-flags.md")
    switches = [f"ALERTSTREAM_{n.upper()}" for n, f in Settings.model_fields.items()
                if f.annotation is bool and n.endswith("_enabled")]
    assert switches, "no *_enabled settings found"
    missing = [s for s in switches if f"`{s}`" not in guide]
    assert not missing, f"feature flags without a line in docs/feature-flags.md: {missing}"


def test_architecture_has_mermaid_diagrams_and_a_rendered_png(tmp_path) -> None:  # noqa: ANN001
    text = _text("architecture.md")
    assert text.count("```mermaid") >= 2
    assert "img/architecture.png" in text and (REPO / "docs" / "img" / "architecture.png").exists()
    import importlib.util

    spec = importlib.util.spec_from_file_location("architecture_diagram", REPO / "docs" / "architecture_diagram.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.render(tmp_path / "a.png", Settings(_env_file=None, topic_alerts="renamed-input"))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


_REPO_PATH = re.compile(r"(?<![\w/.-])((?:deploy|docs|streams|sinks|agents|tables|schemas|gateway|benchmarks|tests)/[\w./*-]*[\w/*])")


@pytest.mark.parametrize("name", DOCS)
def test_repository_paths_named_exist(name: str) -> None:
    missing = []
    for path in set(_REPO_PATH.findall(_text(name))):
        if "*" in path or "<" in path:
            if not list(REPO.glob(path)):
                missing.append(path)
        elif not (REPO / path).exists():
            missing.append(path)
    assert not missing, f"docs/{name} names files that do not exist: {sorted(missing)}"


def test_files_named_in_the_deploy_comments_exist() -> None:
    text = "\n".join(p.read_text() for p in (REPO / "deploy").rglob("*.y*ml"))
    missing = sorted({p for p in _REPO_PATH.findall(text) if "*" not in p and not (REPO / p).exists()})
    assert not missing, f"deploy/ comments name files that do not exist: {missing}"


def _metric_names() -> set[str]:
    names: set[str] = set()
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            names |= set(re.findall(r"""["'](alertstream_[a-z0-9_]+)["']""", path.read_text()))
    return names


@pytest.mark.parametrize("name", DOCS)
def test_every_metric_named_exists(name: str) -> None:
    known = _metric_names()
    named = set(re.findall(r"(?<![\w-])(alertstream_[a-z0-9_]+)", _text(name)))
    unknown = sorted(m for m in named if m not in known and re.sub(r"_(bucket|sum|count)$", "", m) not in known)
    assert not unknown, f"docs/{name} names metrics nothing exports: {unknown}"
