"""Shared fixtures: the real local stack, started once per test session on its own ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from config.settings import Settings

REPO = Path(__file__).resolve().parent.parent
# the project's packages, bottom layer first (pyproject.toml; docs/decisions.md, "Layers")
PACKAGES = [p.rstrip("*") for p in
            tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]]

# The engines the stack fixtures start (and every test that runs `localstack.up` itself): the real
# ones, Apache Kafka 4 (KRaft) and OpenSearch 2.19 (streams/engines/), unless the environment names
# others; the stand-ins for a machine without Java:
#   ALERTSTREAM_LOCAL_BROKER=tansu ALERTSTREAM_LOCAL_SEARCH=osmem pytest ...
# Tests that only a real engine allows (broker restart, compaction, rollover) skip on the stand-ins.
STACK_ENGINES = {"ALERTSTREAM_LOCAL_BROKER": "kafka", "ALERTSTREAM_LOCAL_SEARCH": "opensearch"}
for _key, _value in STACK_ENGINES.items():
    os.environ.setdefault(_key, _value)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def stack_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Broker, Postgres and search store for the whole session; migrated."""
    import asyncio

    from sinks.migrate import migrate
    from streams import localstack

    state_dir = tmp_path_factory.mktemp("stack")
    base = Settings(kafka_bootstrap=None, database_url=None, search_url=None, data_dir=state_dir)
    env = localstack.up(base, state_dir=state_dir)
    try:
        asyncio.run(migrate(env["ALERTSTREAM_DATABASE_URL"]))
        yield env
    finally:
        localstack.down(state_dir)


@pytest.fixture(scope="session")
def pipeline_settings(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings of the session's worker: the stack, a short session timeout (faster group joins),
    and a rules file that applies to tenant `ruled` only (the other tenants keep the default)."""
    rules = tmp_path_factory.mktemp("rules") / "rules.yaml"
    rules.write_text(RULES_YAML)
    return Settings(
        fingerprint_rules_path=rules,
        kafka_bootstrap=stack_env["ALERTSTREAM_KAFKA_BOOTSTRAP"],
        database_url=stack_env["ALERTSTREAM_DATABASE_URL"],
        search_url=stack_env["ALERTSTREAM_SEARCH_URL"],
        data_dir=tmp_path_factory.mktemp("worker"),
        worker_web_port=free_port(),
        worker_processes=1,  # one process per worker fixture: tests scrape its one web port
        broker_session_timeout_s=10,
    )


RULES_YAML = """\
version: 1
rules:
  - tenant: ruled
    provider: keep
    fingerprint_fields: [name, labels.cluster]
    ignore_fields: [extra.lag]
"""


def isolated(settings: Settings, name: str) -> Settings:
    """The settings with a consumer group and every topic of its own (`name.*`): a test worker
    then shares nothing with the session's worker or other tests but the servers."""
    return settings.model_copy(update={
        "app_id": f"{name}-test",
        "topic_alerts": f"{name}.alerts", "topic_critical": f"{name}.critical",
        "topic_normalized": f"{name}.normalized", "topic_normalized_critical": f"{name}.normalized.critical",
        "topic_stored": f"{name}.stored", "topic_dlq": f"{name}.dlq", "topic_retry_prefix": f"{name}.retry.",
    })


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a worker process see exactly `settings`."""
    import json

    from pydantic import BaseModel, SecretStr

    env = {k: v for k, v in os.environ.items() if not k.startswith("ALERTSTREAM_")}

    def add(prefix: str, model: BaseModel) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, BaseModel):
                add(f"{prefix}{name.upper()}__", value)
            elif isinstance(value, (dict, list)):  # pydantic-settings reads these as JSON
                env[f"{prefix}{name.upper()}"] = json.dumps(value)
            elif value is not None:
                env[f"{prefix}{name.upper()}"] = value.get_secret_value() if isinstance(value, SecretStr) else str(value)

    add("ALERTSTREAM_", settings)
    return env


class WorkerProcess:
    """A real `alertstream worker` process, as an operator would run it."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        if not settings.worker_processes:  # one process unless the test asks for more: its web port is scraped
            settings = settings.model_copy(update={"worker_processes": 1})
        self.settings = settings
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli.main", "worker"], cwd=REPO,
            env=settings_env(settings), stdout=self._log, stderr=subprocess.STDOUT,
        )

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def faust_processes(self) -> list:
        """The Faust worker processes under this worker's supervisor (psutil.Process objects)."""
        import psutil

        return psutil.Process(self.proc.pid).children()

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="session")
def worker(pipeline_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    from streams.topics import ensure_topics

    ensure_topics(pipeline_settings)
    process = WorkerProcess(pipeline_settings, tmp_path_factory.mktemp("logs") / "worker.log")
    yield process
    process.stop()


def wait_until(predicate, timeout: float, interval: float = 0.5, what: str = "condition"):  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not met within {timeout}s")
        time.sleep(interval)
