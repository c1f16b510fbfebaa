"""The live status page, rendered by real headless Chromium against the session's real worker:
its polling script must have filled the tables with the worker's own numbers.

`ALERTSTREAM_UPDATE_SCREENSHOT=1` also writes docs/img/status-page.png.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import orjson
import pytest
from confluent_kafka import Producer

from streams.demo import example
from tests.conftest import REPO, wait_until

pytestmark = pytest.mark.integration

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TENANT = "statuspage"


def chromium(tmp_path: Path, *args: str) -> str:
    binary = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(binary).exists():
        pytest.fail("chromium is not installed: make system-packages (deploy/system-packages.sh)")
    result = subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", *args],
                            capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def produce(settings, records: list[bytes]) -> None:  # noqa: ANN001
    producer = Producer({"bootstrap.servers": settings.require_kafka(), "acks": "all"})
    for value in records:
        producer.produce(settings.topic_alerts, value=value, headers=[("provider", b"keep"), ("tenant", TENANT.encode())])
    assert producer.flush(30) == 0


def produce_until(settings, stop: threading.Event) -> None:  # noqa: ANN001
    """About 200 records/s, a third of them repeats, until told to stop."""
    alert = example("keep_generic_alertdto.json")
    producer = Producer({"bootstrap.servers": settings.require_kafka(), "linger.ms": 20})
    i = 0
    while not stop.is_set():
        for _ in range(20):
            value = copy.deepcopy(alert) | {"fingerprint": f"live-{i % 3000}", "name": f"live {i % 3000}"}
            producer.produce(settings.topic_alerts, value=orjson.dumps(value),
                             headers=[("provider", b"keep"), ("tenant", TENANT.encode())])
            i += 1
        producer.poll(0)
        time.sleep(0.1)
    producer.flush(30)


@pytest.fixture(scope="module")
def status_url(worker, pipeline_settings) -> str:  # noqa: ANN001
    base = f"http://127.0.0.1:{pipeline_settings.worker_web_port}"
    alert = example("keep_generic_alertdto.json")
    records = [orjson.dumps(copy.deepcopy(alert) | {"fingerprint": f"status-{i % 5}", "name": f"status {i % 5}"})
               for i in range(20)]  # 5 identities, each sent 4 times: 15 exact duplicates
    produce(pipeline_settings, records + [b'{"name": "cut off", "status": '])

    def processed() -> dict | None:
        assert worker.proc.poll() is None, worker.log_tail()
        try:
            snap = httpx.get(f"{base}/status.json", timeout=5).json()
        except httpx.HTTPError:
            return None
        ok = (snap["dlq_by_reason"].get("malformed_json", 0) >= 1 and snap["lag"]
              and snap["alerts_by_outcome"].get("duplicate", 0) >= 15 and "postgres" in snap["sinks"])
        return snap if ok else None

    wait_until(processed, 120, what="the worker processed the status-page records")
    return f"{base}/status"


def cells(dom: str, attribute: str) -> dict[str, str]:
    """Text of the cells carrying `attribute`, by its value."""
    return {m.group(1): m.group(2) for m in re.finditer(rf'{attribute}="([^"]+)"[^>]*>([^<]*)<', dom)}


def test_status_page_renders_the_workers_numbers(status_url: str, pipeline_settings, tmp_path: Path) -> None:  # noqa: ANN001
    dom = chromium(tmp_path, "--virtual-time-budget=6000", "--dump-dom", status_url)
    snap = httpx.get(status_url + ".json", timeout=5).json()

    assert cells(dom, "data-circuit")["postgres"] == "closed"
    assert cells(dom, "data-dlq")["malformed_json"] == f"{snap['dlq_by_reason']['malformed_json']:,.0f}"
    lag = cells(dom, "data-lag")
    normalize = f"{pipeline_settings.app_id}-normalize/{pipeline_settings.topic_alerts}"
    assert {f"{normalize}/{p}" for p in range(pipeline_settings.topic_partitions)} <= set(lag)
    assert all(value.replace(",", "").isdigit() for value in lag.values())
    assert int(cells(dom, "data-outcome")["duplicate"].replace(",", "")) >= 15
    ratio = re.search(r'id="dedup-ratio">([\d.]+) %<', dom)
    assert ratio and 0 < float(ratio.group(1)) < 100
    assert 'id="error"></span>' in dom  # no fetch failed
    assert re.search(r'id="updated">\d\d:\d\d:\d\d<', dom)


def test_status_page_screenshot(status_url: str, pipeline_settings, tmp_path: Path) -> None:  # noqa: ANN001
    """Taken while records flow, so that the page shows live rates."""
    stop = threading.Event()
    trickle = threading.Thread(target=produce_until, args=(pipeline_settings, stop), daemon=True)
    trickle.start()
    try:
        time.sleep(4)  # the page derives rates from two polls: let both see records arrive
        png = tmp_path / "status-page.png"
        chromium(tmp_path, "--virtual-time-budget=5000", "--hide-scrollbars", "--window-size=1400,860",
                 f"--screenshot={png}", status_url)
    finally:
        stop.set()
        trickle.join(30)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000  # a rendered page, not a blank one
    if os.environ.get("ALERTSTREAM_UPDATE_SCREENSHOT"):
        shutil.copy(png, REPO / "docs" / "img" / "status-page.png")


def test_status_json_names_no_tenant(status_url: str) -> None:
    """Issue 14, finding 10: /status and /status.json need no login, so they carry no tenant names (they
    listed them under `alerts_by_tenant`); per-tenant numbers are in /metrics, for Prometheus."""
    text = httpx.get(status_url + ".json", timeout=5).text
    snap = orjson.loads(text)
    assert snap["alerts_by_provider"] and snap["alerts_by_outcome"]  # the page still has its numbers
    assert TENANT not in text and "alerts_by_tenant" not in snap
