"""The Dockerfile checked against the code: multi-stage, non-root, every package copied, the
entrypoint and default command exist, the variables it sets exist, the ports it exposes are the
ones the processes listen on. (No Docker engine here to build it.)"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import dockerfile

from tests.conftest import REPO
from tests.unit.deploy.deploy_checks import command_error, settings_from, unknown_env

DOCKERFILE = (REPO / "Dockerfile").read_text()
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
INSTRUCTIONS = dockerfile.parse_string(DOCKERFILE)  # Docker's own parser (buildkit's, compiled): a syntax error fails here


def _final_stage() -> list[dockerfile.Command]:
    last_from = max(i for i, c in enumerate(INSTRUCTIONS) if c.cmd == "FROM")
    return INSTRUCTIONS[last_from:]


def _env() -> dict[str, str]:
    env: dict[str, str] = {}
    for command in _final_stage():
        if command.cmd == "ENV":
            env.update(zip(command.value[::2], command.value[1::2]))
    return env


def _exec_form(keyword: str) -> list[str]:
    (command,) = [c for c in _final_stage() if c.cmd == keyword]
    assert command.json, f"{keyword} in exec (JSON) form, so that signals reach the process"
    return list(command.value)


def test_multi_stage_and_the_runtime_stage_copies_only_the_virtualenv() -> None:
    stages = [c for c in INSTRUCTIONS if c.cmd == "FROM"]
    assert len(stages) >= 2
    copies = [c for c in _final_stage() if c.cmd == "COPY"]
    assert copies and all(c.flags == ("--from=build",) for c in copies), "the runtime stage takes nothing but the build's output"


def test_runs_as_a_non_root_user() -> None:
    users = [c.value[0] for c in _final_stage() if c.cmd == "USER"]
    assert users, "no USER in the runtime stage: it would run as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric non-zero uid (Kubernetes runAsNonRoot can verify it)"


def test_every_package_of_the_project_is_copied() -> None:
    packages = {p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = {c.value[0].rstrip("/") for c in INSTRUCTIONS if c.cmd == "COPY" and not c.flags}
    missing = packages - copied
    assert not missing, f"packages the image would lack: {sorted(missing)}"
    ignored = {line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert not (packages | {"pyproject.toml"}) & ignored, ".dockerignore hides something the build copies"
    assert {".git", ".venv", "tests"} <= ignored


def test_entrypoint_is_the_cli_and_the_default_command_exists() -> None:
    assert _exec_form("ENTRYPOINT") == ["alertstream"]
    assert "alertstream" in PYPROJECT["project"]["scripts"]
    command = _exec_form("CMD")
    assert command_error(command) is None, command_error(command)


def test_environment_variables_exist_and_containers_listen_on_all_interfaces() -> None:
    env = _env()
    app_env = {k: v for k, v in env.items() if k.startswith("ALERTSTREAM_")}
    assert not unknown_env(app_env), unknown_env(app_env)
    settings = settings_from(app_env)
    assert settings.worker_web_bind == settings.gateway_bind == "0.0.0.0"
    assert settings.worker_processes == 1, "one process per container: scale with replicas"
    volumes = [v for c in _final_stage() if c.cmd == "VOLUME" for v in c.value]
    assert str(settings.data_dir) in volumes, "the RocksDB state directory is a volume"


def test_exposed_ports_are_the_ones_the_processes_listen_on() -> None:
    settings = settings_from({k: v for k, v in _env().items() if k.startswith("ALERTSTREAM_")})
    exposed = {int(p) for c in _final_stage() if c.cmd == "EXPOSE" for p in c.value}
    assert exposed == {settings.worker_web_port, settings.gateway_port}


# What the image's processes import: the CLI, the worker's app, the gateway, migrations, the DLQ tools.
RUNTIME_MODULES = ["cli.main", "streams.app", "streams.topics", "gateway.app", "gateway.server", "sinks.migrate",
                   "sinks.maintenance", "streams.dlq_cli"]


def test_the_runtime_works_without_the_packages_the_image_removes() -> None:
    """The image drops the embedded local-stack servers. Import every module the image's processes
    run, and build the CLI, in a Python where importing those packages fails as it would there."""
    runs = " ".join(c.value[0] for c in INSTRUCTIONS if c.cmd == "RUN")
    (uninstall,) = re.findall(r"pip uninstall -y (calfkit[^&]*)", runs)
    removed = uninstall.split()
    deps = {re.split(r"[=<>\[ ]", d)[0] for d in PYPROJECT["project"]["dependencies"]}
    assert set(removed) <= deps, "the image removes a package the project does not depend on"
    modules = [name.replace("-", "_") for name in removed]
    script = f"""
import importlib, importlib.abc, sys
class Removed(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {modules!r}:
            raise ModuleNotFoundError(f"{{name}} is not in the image")
sys.meta_path.insert(0, Removed())
for module in {RUNTIME_MODULES!r}:
    importlib.import_module(module)
from cli.main import build_parser
build_parser().parse_args(["worker"])
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
