"""What a benchmark watches while it runs: CPU and memory of each process, the workers' counters."""

from __future__ import annotations

import threading
import time
import urllib.request
from dataclasses import dataclass, field

import psutil
from prometheus_client.parser import text_string_to_metric_families


@dataclass
class ProcessGroup:
    """A server or worker and its child processes (Postgres backends), measured together."""

    name: str
    pid: int

    def processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.processes():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                continue
        return total

    def rss_bytes(self) -> int:
        total = 0
        for p in self.processes():
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total


def scrape_counters(port: int) -> dict[str, float]:
    """Sum of each `_total` counter of one worker, by metric name and outcome."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        text = response.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_total"):
                key = sample.name + (f":{sample.labels['outcome']}" if "outcome" in sample.labels else "")
                out[key] = out.get(key, 0.0) + sample.value
    return out


def sighted_alerts(counters: dict[str, float]) -> float:
    return sum(v for k, v in counters.items() if k.startswith("alertstream_alerts_total:"))


@dataclass
class Sample:
    t: float
    produced_alerts: float
    sighted_alerts: float
    worker_rss_bytes: int


@dataclass
class Sampler:
    """Samples once a second in a thread: counters of every worker, worker memory."""

    worker_ports: list[int]
    workers: list[ProcessGroup]
    produced: "callable"  # returns alerts produced so far
    interval_s: float = 1.0
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sighted(self) -> float:
        total = 0.0
        for port in self.worker_ports:
            try:
                total += sighted_alerts(scrape_counters(port))
            except OSError:
                continue
        return total

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(Sample(time.monotonic(), self.produced(), self.sighted(),
                                       sum(w.rss_bytes() for w in self.workers)))
            self._stop.wait(self.interval_s)
