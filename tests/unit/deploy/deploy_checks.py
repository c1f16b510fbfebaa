"""What the deployment tests (tests/unit/deploy/) check files against: the settings'
environment names, the CLI's commands, the settings a set of variables produces."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, redirect_stderr
from io import StringIO
from pathlib import Path

import yaml

from cli.main import build_parser
from config.reference import PREFIX, env_names, secret_env_names
from config.settings import Settings
from tests.conftest import REPO

DEPLOY = REPO / "deploy"
VALID_ENV = env_names(Settings)
SECRET_ENV = secret_env_names(Settings)


def command_error(args: list[str]) -> str | None:
    """None if `alertstream ARGS` is a command line the CLI accepts, else argparse's complaint.
    Parsing only: nothing runs."""
    err = StringIO()
    try:
        with redirect_stderr(err):
            build_parser().parse_args([str(a) for a in args])
    except SystemExit:
        return err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else "rejected"
    return None


def unknown_env(names: list[str] | set[str]) -> list[str]:
    return sorted(n for n in names if n.startswith(PREFIX) and n not in VALID_ENV)


@contextmanager
def _environ(env: Mapping[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    try:
        for key in [k for k in os.environ if k.startswith(PREFIX)]:
            del os.environ[key]
        os.environ.update({k: str(v) for k, v in env.items()})
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def settings_from(env: Mapping[str, str]) -> Settings:
    """The settings a process with exactly these ALERTSTREAM_* variables would run with
    (validated: a value the settings refuse raises here, as it would at start)."""
    with _environ({k: v for k, v in env.items() if k.startswith(PREFIX)}):
        return Settings()


_INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")


def interpolate(value: object) -> object:
    """Compose's `${VAR:-default}` with nothing set in the environment: the default (or empty)."""
    if isinstance(value, str):
        return _INTERPOLATION.sub(lambda m: m.group(2) or "", value)
    if isinstance(value, list):
        return [interpolate(v) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v) for k, v in value.items()}
    return value


def load_yaml_docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def as_args(command: str | list[str] | None) -> list[str]:
    if command is None:
        return []
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def consumer_groups(settings: Settings) -> dict[str, str]:
    """Consumer group → the topic it reads, for the groups the worker runs (streams/app.py).
    Read from the source so that a renamed group breaks the manifests' test, not the autoscaler."""
    source = (REPO / "streams" / "app.py").read_text()
    expected = {
        settings.app_id: (settings.topic_normalized, r"@wire\(\"deduplicate\", normalized_topic"),
        f"{settings.app_id}-normalize": (settings.topic_alerts, r'f"\{settings\.app_id\}-normalize"'),
        f"{settings.app_id}-index": (settings.topic_stored, r'f"\{settings\.app_id\}-index"'),
    }
    return {group: topic for group, (topic, pattern) in expected.items() if re.search(pattern, source)}


def served_paths(package: str) -> set[str]:
    """HTTP paths a package serves (`streams`: the worker, `gateway`), from its route decorators."""
    paths: set[str] = set()
    for path in (REPO / package).rglob("*.py"):
        paths |= set(re.findall(r"""\.(?:page|get|post|put|route|api_route|add_api_route)\(\s*["'](/[^"']*)["']""", path.read_text()))
    return paths
