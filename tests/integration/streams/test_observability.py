"""Observability on the real stack: a real Prometheus server scrapes a real worker process, and
the consumer lag it exports is read back through Prometheus' HTTP API; /healthz and /readyz
answer from the same worker.

Exact lag on Tansu: the broker reports a partition's end offset as the start of its last record
batch + 1 (INFRA.md), so the records are produced in one-record batches (`batch.num.messages=1`);
then end offsets, and so the lag, are exact.
"""

from __future__ import annotations

import copy
import signal
import time
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from config.settings import Settings
from streams.demo import example
from streams.topics import ensure_topics
from tests.conftest import REPO, WorkerProcess, free_port, isolated, wait_until

pytestmark = pytest.mark.integration

PER_PARTITION = [9, 7, 5, 3]  # records produced to partitions 0..3
COMMITTED = [4, 0, 5, 1]  # where the stopped downstream group committed
RULES = REPO / "deploy" / "prometheus" / "alertstream-rules.yml"
READY_MAX_LAG = 5  # below the downstream group's largest lag: 7 - 0 = 7 on partition 1


def produce_one_record_batches(settings: Settings) -> None:
    producer = Producer({"bootstrap.servers": settings.require_kafka(), "batch.num.messages": 1,
                         "linger.ms": 0, "acks": "all"})
    alert = example("keep_generic_alertdto.json")
    for partition, count in enumerate(PER_PARTITION):
        for i in range(count):
            value = copy.deepcopy(alert) | {"fingerprint": f"obs-{partition}-{i}", "name": f"obs {partition} {i}"}
            producer.produce(settings.topic_alerts, value=orjson.dumps(value), partition=partition,
                             headers=[("provider", b"keep"), ("tenant", b"obs")])
            producer.flush(10)  # one record per request as well: nothing can be batched
    assert producer.flush(10) == 0


def commit(settings: Settings, group: str, offsets: list[int]) -> None:
    """A stopped consumer of the input topic that got this far (a commit without joining the group)."""
    consumer = Consumer({"bootstrap.servers": settings.require_kafka(), "group.id": group, "enable.auto.commit": False})
    try:
        consumer.commit(offsets=[TopicPartition(settings.topic_alerts, p, o) for p, o in enumerate(offsets) if o],
                        asynchronous=False)
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def obs(pipeline_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Settings, WorkerProcess]]:
    name = f"obs{uuid.uuid4().hex[:6]}"
    downstream = f"{name}-downstream"
    settings = isolated(pipeline_settings, name).model_copy(update={
        "lag_extra_groups": {downstream: [f"{name}.alerts"]}, "lag_poll_interval_s": 1.0,
        "ready_max_lag": READY_MAX_LAG, "worker_web_port": free_port(),
        "data_dir": tmp_path_factory.mktemp("obs-worker"),
    })
    ensure_topics(settings)
    produce_one_record_batches(settings)
    commit(settings, downstream, COMMITTED)
    worker = WorkerProcess(settings, tmp_path_factory.mktemp("obs-logs") / "worker.log")
    try:
        yield settings, worker
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def prometheus(obs: tuple[Settings, WorkerProcess], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(binary).exists():
        pytest.fail("prometheus is not installed: make system-packages (deploy/system-packages.sh)")
    settings, _ = obs
    workdir = tmp_path_factory.mktemp("prometheus")
    config = workdir / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"rule_files: [{RULES}]\n"  # the shipped rules, evaluated on the real worker's series
        "scrape_configs:\n"
        "  - job_name: alertstream-worker\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{settings.worker_web_port}']}}]\n"
    )
    port = free_port()
    with open(workdir / "prometheus.log", "wb") as log:
        proc = subprocess.Popen([binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
                                 f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _get(f"{url}/-/ready") == 200, 30, what="prometheus ready")
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def _get(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None


def query(prometheus: str, promql: str) -> dict[tuple[str, ...], float]:
    """Instant query: {(group, topic, partition): value}."""
    body = httpx.get(f"{prometheus}/api/v1/query", params={"query": promql}, timeout=5).json()
    assert body["status"] == "success", body
    return {tuple(r["metric"].get(k, "") for k in ("group", "topic", "partition")): float(r["value"][1])
            for r in body["data"]["result"]}


def test_prometheus_reads_exact_lag_of_a_stopped_group(obs, prometheus) -> None:
    settings, worker = obs
    group = next(iter(settings.lag_extra_groups))
    expected = {(group, settings.topic_alerts, str(p)): float(n - c) for p, (n, c) in enumerate(zip(PER_PARTITION, COMMITTED))}

    def lag_matches():
        assert worker.proc.poll() is None, worker.log_tail()
        return query(prometheus, f'alertstream_consumer_lag{{group="{group}"}}') == expected

    wait_until(lag_matches, 90, what=f"Prometheus shows lag {expected}")
    # the recording rule the lag alerts and dashboards use sums the partitions
    recorded = f'alertstream:consumer_lag:sum{{group="{group}"}}'
    wait_until(lambda: query(prometheus, recorded) == {(group, settings.topic_alerts, ""): sum(expected.values())},
               30, what="the recording rule over the real series")


def test_running_pipeline_catches_up_to_zero_lag(obs, prometheus) -> None:
    settings, worker = obs
    group = f"{settings.app_id}-normalize"

    def caught_up():
        assert worker.proc.poll() is None, worker.log_tail()
        lags = query(prometheus, f'alertstream_consumer_lag{{group="{group}"}}')
        return len(lags) == settings.topic_partitions and set(lags.values()) == {0.0}

    wait_until(caught_up, 90, what=f"the worker's own group {group} at lag 0 in Prometheus")
    # the dedup stage writes a moment after the normalizer committed: every alert's ingest →
    # Postgres latency is observed once, no more
    count = 'sum(alertstream_e2e_ingest_latency_seconds_count)'
    wait_until(lambda: sum(query(prometheus, count).values()) >= sum(PER_PARTITION), 60, what="latency observed")
    time.sleep(2)  # two more scrapes: nothing counted twice
    assert sum(query(prometheus, count).values()) == sum(PER_PARTITION)


def readyz(base: str, status: int) -> dict | None:
    response = httpx.get(f"{base}/readyz", timeout=10)
    return response.json() if response.status_code == status else None


def test_healthz_and_readyz(obs, prometheus) -> None:
    settings, worker = obs
    base = f"http://127.0.0.1:{settings.worker_web_port}"
    health = httpx.get(f"{base}/healthz", timeout=5)
    assert health.status_code == 200, health.text
    assert health.json()["checks"][0]["name"] == "event_loop"

    # the stopped downstream group lags 7 records on partition 1, over the threshold of 5
    not_ready = wait_until(lambda: readyz(base, 503), 30, what="readyz names the lag")
    assert not_ready["failed"] == ["lag"], not_ready

    group = next(iter(settings.lag_extra_groups))
    commit(settings, group, PER_PARTITION)  # the downstream consumer catches up
    ready = wait_until(lambda: readyz(base, 200), 30, what="readyz once the lag is gone")
    checks = {c["name"]: c for c in ready["checks"]}
    assert checks["broker"]["ok"] and checks["lag"]["ok"] and checks["sink:postgres"]["detail"] == "circuit closed"


def test_faust_pages_that_show_state_and_topology_are_off(obs) -> None:
    """Faust's /table/ (dedup state by key), /router/ and /graph/ need no auth: the worker does not serve them."""
    settings, _ = obs
    base = f"http://127.0.0.1:{settings.worker_web_port}"
    assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200  # the server is up
    for path in ("/table/", "/router/", "/graph/", "/stats/"):
        assert httpx.get(f"{base}{path}", timeout=5).status_code == 404, path


def test_healthz_fails_after_the_event_loop_was_frozen(obs) -> None:
    """A real freeze: SIGSTOP holds the whole process (its loop included) for 1.5 s, well over the
    0.5 s threshold and well under the 10 s session timeout; after SIGCONT the loop monitor sees
    how late it woke up."""
    settings, worker = obs
    base = f"http://127.0.0.1:{settings.worker_web_port}"
    (faust,) = worker.faust_processes()
    faust.send_signal(signal.SIGSTOP)
    try:
        time.sleep(1.5)
    finally:
        faust.send_signal(signal.SIGCONT)
    body = wait_until(lambda: (r := httpx.get(f"{base}/healthz", timeout=10)).status_code == 503 and r.json(), 10,
                      what="/healthz 503 after the freeze")
    assert body["failed"] == ["event_loop"] and "blocked" in body["checks"][0]["detail"], body
