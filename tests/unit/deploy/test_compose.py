"""deploy/docker-compose.yml, deploy/prometheus/prometheus.yml and the Grafana provisioning, checked
against the code: every ALERTSTREAM_* variable exists in the settings, every command exists in the
CLI, every port matches what the process listens on. (No Docker engine here: the file cannot be
run, so these checks are what keeps it honest.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from fnmatch import fnmatch
from pathlib import PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

from tests.unit.deploy.deploy_checks import (
    DEPLOY,
    as_args,
    command_error,
    interpolate,
    settings_from,
    unknown_env,
)

COMPOSE_FILE = DEPLOY / "docker-compose.yml"
ENV_EXAMPLE = DEPLOY / ".env.example"
COMPOSE_TEXT = COMPOSE_FILE.read_text()
_REQUIRED = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*):\?[^}]*\}")  # compose's "${VAR:?message}": set and non-empty, or no start
REQUIRED_VARS = sorted(set(_REQUIRED.findall(COMPOSE_TEXT)))
# what an operator puts in deploy/.env (the checks below must not depend on a real secret)
FILLED_IN = {name: f"filled-in-{name.lower().replace('_', '-')}" for name in REQUIRED_VARS}
COMPOSE = interpolate(yaml.safe_load(_REQUIRED.sub(lambda m: FILLED_IN[m.group(1)], COMPOSE_TEXT)))
SERVICES: dict[str, dict] = COMPOSE["services"]
PROMETHEUS = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())


def _is_alertstream(service: dict) -> bool:
    return str(service.get("image", "")).startswith("alertstream:") or "build" in service


APP_SERVICES = {name: s for name, s in SERVICES.items() if _is_alertstream(s)}


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # the `KEY=value` form
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _settings(name: str):  # noqa: ANN202
    return settings_from(_env(APP_SERVICES[name]))


def test_the_app_services_are_there() -> None:
    assert {"migrate", "worker", "gateway"} <= set(APP_SERVICES)
    assert {"kafka", "postgres", "elasticsearch", "prometheus", "grafana"} <= set(SERVICES)


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_every_variable_exists_in_the_settings_and_every_value_is_valid(name: str) -> None:
    env = _env(APP_SERVICES[name])
    assert not unknown_env(env), f"{name} sets variables no setting reads: {unknown_env(env)}"
    assert not [k for k in env if not k.startswith("ALERTSTREAM_")], "only ALERTSTREAM_* variables configure alertstream"
    settings_from(env)  # raises on a value the settings refuse


@pytest.mark.parametrize("name", sorted(APP_SERVICES))
def test_every_command_exists(name: str) -> None:
    args = as_args(APP_SERVICES[name].get("command")) or ["worker"]  # the Dockerfile's CMD
    assert command_error(args) is None, f"{name}: `alertstream {' '.join(args)}`: {command_error(args)}"


def test_containers_listen_on_all_interfaces() -> None:
    for name in ("worker", "gateway"):
        settings = _settings(name)
        assert settings.worker_web_bind == "0.0.0.0" and settings.gateway_bind == "0.0.0.0", name


def test_published_and_probed_ports_match_the_settings() -> None:
    gateway, worker = _settings("gateway"), _settings("worker")
    published = [int(str(p).split(":")[-1]) for p in SERVICES["gateway"]["ports"]]
    assert published == [gateway.gateway_port]
    assert f"127.0.0.1:{gateway.gateway_port}/healthz" in " ".join(SERVICES["gateway"]["healthcheck"]["test"])
    assert f"127.0.0.1:{worker.worker_web_port}/healthz" in " ".join(SERVICES["worker"]["healthcheck"]["test"])


def test_prometheus_scrapes_the_ports_the_processes_serve_metrics_on() -> None:
    jobs = {job["job_name"]: job for job in PROMETHEUS["scrape_configs"]}
    # the gateway serves /metrics on its own listener, not on the webhook port (issue 14, finding 10)
    expected = {"worker": _settings("worker").worker_web_port,
                "gateway": _settings("gateway").gateway_metrics_port}
    for service, port in expected.items():
        job = jobs[f"alertstream-{service}"]
        assert job["metrics_path"] == "/metrics"
        (sd,) = job["dns_sd_configs"]
        assert sd["names"] == [service] and service in SERVICES
        assert sd["port"] == port, f"Prometheus scrapes {service} on {sd['port']}, it serves /metrics on {port}"


def test_servers_the_app_is_pointed_at_are_the_compose_services() -> None:
    settings = _settings("worker")
    kafka = _env(SERVICES["kafka"])
    advertised = {urlsplit(u).netloc for u in kafka["KAFKA_ADVERTISED_LISTENERS"].split(",")}
    assert set(settings.kafka_bootstrap.split(",")) <= advertised
    db = urlsplit(settings.require_database_url())
    pg = _env(SERVICES["postgres"])
    assert (db.hostname, db.port or 5432, db.username, db.password, db.path.lstrip("/")) == \
        ("postgres", 5432, pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"])
    search = urlsplit(settings.search_url)
    assert search.hostname in SERVICES and search.port == 9200
    # dead letters keep the original bytes: the broker must take records as large as the worker writes
    from streams.app import MAX_RECORD_BYTES

    assert int(kafka["KAFKA_MESSAGE_MAX_BYTES"]) >= MAX_RECORD_BYTES


def test_every_app_service_starts_after_its_servers_and_the_migration() -> None:
    for name in ("worker", "gateway"):
        deps = APP_SERVICES[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert {"kafka", "postgres"} <= set(deps)
    assert as_args(SERVICES["migrate"]["command"]) == ["migrate"]


def test_workers_never_outnumber_partitions_and_run_one_process_each() -> None:
    settings = _settings("worker")
    assert int(SERVICES["worker"]["deploy"]["replicas"]) <= settings.topic_partitions
    assert settings.worker_processes == 1


def test_stop_grace_outlasts_the_workers_own_stop_timeout() -> None:
    seconds = int(str(SERVICES["worker"]["stop_grace_period"]).rstrip("s"))
    assert seconds > _settings("worker").worker_stop_timeout_s


def test_every_service_has_resource_limits() -> None:
    for name, service in SERVICES.items():
        limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
        assert {"cpus", "memory"} <= set(limits), f"{name} has no cpu/memory limits"


def test_images_come_from_docker_hub_with_pinned_tags() -> None:
    for name, service in SERVICES.items():
        image = service["image"]
        host = image.split("/")[0] if "/" in image else ""
        assert not ("." in host or ":" in host or host == "localhost"), f"{name}: no registry host names ({image})"
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin a tag ({image})"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_prometheus_config_and_the_rules_it_loads_are_valid_for_promtool(tmp_path) -> None:  # noqa: ANN001
    """The real `promtool check config`, with deploy/prometheus where compose mounts it: the scrape
    config parses and every rule file the globs pick up loads."""
    mounted = tmp_path / "etc-prometheus"
    shutil.copytree(DEPLOY / "prometheus", mounted)
    config = (mounted / "prometheus.yml").read_text().replace("/etc/prometheus", str(mounted))
    (mounted / "prometheus.yml").write_text(config)
    result = subprocess.run(["promtool", "check", "config", str(mounted / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    rule_files = [p for p in (DEPLOY / "prometheus").glob("*.yml") if p.name != "prometheus.yml"]
    assert len(re.findall(r"SUCCESS: \d+ rules found", result.stdout)) == len(rule_files), result.stdout


def test_prometheus_loads_every_rule_file_of_its_directory() -> None:
    """The compose file mounts deploy/prometheus at /etc/prometheus; every rules file there must be
    matched by a `rule_files` glob, or its alerts would silently never load."""
    mount = next(v for v in SERVICES["prometheus"]["volumes"] if v.startswith("./prometheus:"))
    target = mount.split(":")[1]
    globs = PROMETHEUS["rule_files"]
    for path in sorted((DEPLOY / "prometheus").rglob("*.y*ml")):
        relative = path.relative_to(DEPLOY / "prometheus")
        if path.name == "prometheus.yml" or relative.parts[0] == "tests":  # promtool test files, not rules
            continue
        in_container = str(PurePosixPath(target) / path.relative_to(DEPLOY / "prometheus"))
        matches = [g for g in globs if fnmatch(in_container, g)]
        assert matches, f"{path.name} is not loaded by rule_files {globs}"
        assert len(matches) == 1, f"{path.name} is loaded twice ({matches}): its rules would be evaluated twice"


def _mounts(service: str) -> dict[str, str]:
    return {v.split(":")[1]: v.split(":")[0] for v in SERVICES[service]["volumes"] if v.startswith("./")}


def test_grafana_provisioning_is_mounted_and_points_at_the_mounted_dashboards() -> None:
    mounts = _mounts("grafana")
    assert mounts["/etc/grafana/provisioning"] == "./grafana/provisioning"
    providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/alertstream.yml").read_text())["providers"]
    for provider in providers:
        assert mounts[provider["options"]["path"]] == "./grafana", "the provider reads a path nothing is mounted at"
    sources = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    prometheus_port = int(SERVICES["prometheus"]["ports"][0].split(":")[-1])
    assert [urlsplit(s["url"]).netloc for s in sources] == [f"prometheus:{prometheus_port}"]


def _datasource_uids(node: object) -> set[str]:
    uids: set[str] = set()
    if isinstance(node, dict):
        ds = node.get("datasource")
        if isinstance(ds, dict) and ds.get("type", "prometheus") == "prometheus" and "uid" in ds:
            uids.add(str(ds["uid"]))
        for value in node.values():
            uids |= _datasource_uids(value)
    elif isinstance(node, list):
        for value in node:
            uids |= _datasource_uids(value)
    return uids


def test_dashboards_use_the_provisioned_datasource() -> None:
    """File-provisioned dashboards are not imported: `${DS_...}` inputs are never filled in. A
    dashboard must name the provisioned uid or a datasource template variable."""
    provisioned = {s["uid"] for s in yaml.safe_load(
        (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]}
    for path in sorted((DEPLOY / "grafana").glob("*.json")):
        dashboard = json.loads(path.read_text())
        variables = {f"${{{v['name']}}}" for v in dashboard.get("templating", {}).get("list", []) if v.get("type") == "datasource"}
        variables |= {f"${v}" for v in [x[2:-1] for x in variables]}
        bad = _datasource_uids(dashboard) - provisioned - variables
        assert not bad, f"{path.name} refers to datasource uids {sorted(bad)}; provisioned: {sorted(provisioned)}"


def test_make_compose_up_scales_a_service_that_exists_within_the_partitions() -> None:
    makefile = (DEPLOY.parent / "Makefile").read_text()
    (workers,) = re.findall(r"^WORKERS \?= (\d+)$", makefile, re.M)
    (scaled,) = re.findall(r"--scale (\w+)=\$\(WORKERS\)", makefile)
    assert f"-f {COMPOSE_FILE.relative_to(DEPLOY.parent)} " in makefile
    assert scaled in APP_SERVICES and int(workers) <= _settings(scaled).topic_partitions


def test_postgres_takes_the_connections_of_as_many_workers_as_partitions() -> None:
    """Each worker holds its pool plus one connection each for raw storage and maintenance; the
    gateway a few for API keys. At the partition count of workers Postgres must still accept them."""
    flags = [arg.split("=", 1) for arg in SERVICES["postgres"]["command"] if "=" in arg]
    max_connections = int(dict(flags).get("max_connections", 100))  # 100: PostgreSQL's default
    settings = _settings("worker")
    needed = settings.topic_partitions * (settings.db_pool_size + 2) + 10
    assert max_connections >= needed, f"max_connections {max_connections} < {needed}"


# ---------------------------------------------------------------- secrets and exposure (issue 14, finding 10)

def _env_example() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return {k.strip(): v.strip() for k, v in pairs}


def test_every_secret_comes_from_the_env_file_without_a_default() -> None:
    """No password is written in the compose file, and none has a fallback: a missing one stops
    compose (`${VAR:?}`) instead of starting Postgres or Grafana with a password everybody knows."""
    assert {"POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"} <= set(REQUIRED_VARS)
    secret_like = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY", re.I)
    for ref in re.findall(r"\$\{[^}]*\}", COMPOSE_TEXT):
        name = re.match(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", ref).group(1)
        if secret_like.search(name):
            assert _REQUIRED.fullmatch(ref), f"{ref}: a secret must be required (${{{name}:?...}}), never defaulted"
    raw = yaml.safe_load(COMPOSE_TEXT)
    for name, service in raw["services"].items():
        for key, value in _env(service).items():
            if secret_like.search(key):
                assert _REQUIRED.fullmatch(value), f"{name}: {key} is written in the compose file ({value!r})"
    assert "ALERTSTREAM_DATABASE_URL" in raw["x-alertstream-env"]
    assert "${POSTGRES_PASSWORD:?" in raw["x-alertstream-env"]["ALERTSTREAM_DATABASE_URL"]


def test_the_env_file_example_names_every_required_variable_and_fills_in_none() -> None:
    """`cp deploy/.env.example deploy/.env` alone must not start anything: every secret is empty there."""
    example = _env_example()
    assert set(REQUIRED_VARS) <= set(example), f"deploy/.env.example lacks {sorted(set(REQUIRED_VARS) - set(example))}"
    assert all(example[name] == "" for name in REQUIRED_VARS), {n: example[n] for n in REQUIRED_VARS if example[n]}
    optional = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*):-", COMPOSE_TEXT))
    assert optional <= set(example), f"deploy/.env.example does not mention {sorted(optional - set(example))}"


def test_only_the_webhook_port_is_published_beyond_the_host() -> None:
    """Grafana and Prometheus (no login; its metrics name tenants) are on the host's loopback unless an
    operator opens them; Kafka, Postgres, Elasticsearch and the workers are not published at all."""
    gateway_port = _settings("gateway").gateway_port
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            parts = str(port).split(":")
            if name == "gateway" and parts == [str(gateway_port), str(gateway_port)]:
                continue
            assert len(parts) == 3 and parts[0] == "127.0.0.1", f"{name} publishes {port} on every interface"
    assert not {"kafka", "postgres", "elasticsearch", "worker", "migrate"} & {n for n, s in SERVICES.items() if s.get("ports")}


def test_the_gateway_metrics_port_is_not_published() -> None:
    gateway = _settings("gateway")
    metrics_port = gateway.gateway_metrics_port
    assert metrics_port and metrics_port != gateway.gateway_port
    assert gateway.gateway_metrics_bind == "0.0.0.0"  # for Prometheus on the compose network
    published = {int(str(p).split(":")[-1]) for p in SERVICES["gateway"].get("ports", [])}
    assert metrics_port not in published
