"""End to end: a real Prometheus Alertmanager sends its webhooks to the gateway, the session's
worker stores the alerts in Postgres. Alerts are pushed into Alertmanager with its v2 API."""

from __future__ import annotations

import subprocess
import time
from datetime import datetime, timedelta, timezone

import httpx
import pytest

from tests.conftest import free_port, wait_until
from tests.integration.gateway.gateway_support import GatewayProcess, create_key, gateway_settings
from tests.integration.streams.test_pipeline_e2e import sql

pytestmark = pytest.mark.integration
ALERTMANAGER = "/usr/bin/prometheus-alertmanager"

CONFIG = """\
route:
  receiver: gateway
  group_by: [alertname]
  group_wait: 1s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: gateway
    webhook_configs:
      - url: {url}/alerts/event/prometheus
        send_resolved: true
        http_config:
          basic_auth:
            username: alertmanager
            password: {key}
"""


@pytest.fixture
def alertmanager(tmp_path):  # noqa: ANN001, ANN201
    """Started by the test once the gateway's URL and key are known: yields a starter."""
    procs: list[subprocess.Popen] = []

    def start(url: str, key: str) -> str:
        config = tmp_path / "alertmanager.yml"
        config.write_text(CONFIG.format(url=url, key=key))
        port = free_port()
        log = open(tmp_path / "alertmanager.log", "ab")
        procs.append(subprocess.Popen(
            [ALERTMANAGER, f"--config.file={config}", f"--storage.path={tmp_path / 'am-data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=log, stderr=subprocess.STDOUT))
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            assert procs[-1].poll() is None, (tmp_path / "alertmanager.log").read_text()
            try:
                return httpx.get(f"{base}/-/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False
        wait_until(ready, timeout=20, interval=0.2, what="alertmanager ready")
        return base

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def test_alertmanager_webhooks_land_in_postgres(worker, pipeline_settings, alertmanager, tmp_path) -> None:  # noqa: ANN001
    settings = gateway_settings(pipeline_settings, gateway_lag_threshold=0)  # the session worker's topics
    dsn = settings.require_database_url()
    gateway = GatewayProcess(settings, tmp_path / "gateway.log")
    try:
        key = create_key(dsn, "gw-am")[1]
        am = alertmanager(gateway.url, key)
        now = datetime.now(timezone.utc)
        run = f"{time.time_ns()}"
        alerts = [{"labels": {"alertname": f"GatewayE2E-{run}", "instance": f"web-{i}", "severity": sev},
                   "annotations": {"summary": f"instance {i} is down"},
                   "startsAt": now.isoformat(), "endsAt": (now + timedelta(minutes=30)).isoformat()}
                  for i, sev in enumerate(["warning", "warning", "critical"])]
        assert httpx.post(f"{am}/api/v2/alerts", json=alerts, timeout=10).status_code == 200

        def stored() -> list:
            assert worker.proc.poll() is None, f"worker died:\n{worker.log_tail()}"
            return sql(dsn, "SELECT name, severity, status, provider_type FROM alert WHERE tenant = 'gw-am' AND name = $1",
                       f"GatewayE2E-{run}")
        rows = wait_until(lambda: len(stored()) >= 3 and stored(), timeout=90, interval=1, what="alerts in Postgres")
        assert {r["severity"] for r in rows} == {"warning", "critical"}
        assert {r["status"] for r in rows} == {"firing"}
        assert {r["provider_type"] for r in rows} == {"prometheus"}
        metrics = httpx.get(gateway.metrics_url).text  # the metrics listener, not the webhook port
        assert 'alertstream_gateway_requests_accepted_total{provider="prometheus",tenant="gw-am"}' in metrics
        # one webhook for the group (group_by alertname), critical inside: it went to the critical topic
        assert 'alertstream_gateway_alerts_accepted_total{provider="prometheus",tenant="gw-am"} 3.0' in metrics
    finally:
        gateway.stop()
