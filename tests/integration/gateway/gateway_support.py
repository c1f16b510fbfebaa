"""Helpers of the gateway tests: a real `alertstream gateway` process, keys, reading records back, and a
TCP proxy in front of Postgres that a test can cut (Postgres "down" for the gateway only)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
from confluent_kafka import Consumer, TopicPartition

from config.settings import Settings
from gateway import apikeys
from tests.conftest import REPO, free_port, settings_env

EXAMPLES = REPO / "schemas" / "examples"


def gateway_settings(settings: Settings, **update) -> Settings:  # noqa: ANN003
    return settings.model_copy(update={"gateway_port": free_port(), "gateway_metrics_port": free_port(),
                                       "gateway_health_interval_s": 0.5, "gateway_apikey_cache_ttl_s": 0.0, **update})


class GatewayProcess:
    """`alertstream gateway` as an operator runs it, on a free port."""

    def __init__(self, settings: Settings, log_path: Path, wait_ready: bool = True) -> None:
        self.settings = settings
        self.url = f"http://127.0.0.1:{settings.gateway_port}"
        self.metrics_url = f"http://127.0.0.1:{settings.gateway_metrics_port}/metrics"
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "cli.main", "gateway"], cwd=REPO,
                                     env=settings_env(settings), stdout=self._log, stderr=subprocess.STDOUT)
        self._wait(ready=wait_ready)

    def _wait(self, ready: bool, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        path = "/readyz" if ready else "/healthz"
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"gateway died:\n{self.log_tail()}"
            try:
                if httpx.get(self.url + path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"gateway not {'ready' if ready else 'up'}:\n{self.log_tail()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def create_key(dsn: str, tenant: str) -> tuple[str, str]:
    async def go() -> tuple[str, str]:
        conn = await asyncpg.connect(dsn)
        try:
            return await apikeys.create_key(conn, tenant, "test")
        finally:
            await conn.close()
    return asyncio.run(go())


def revoke_key(dsn: str, key_id: str) -> bool:
    async def go() -> bool:
        conn = await asyncpg.connect(dsn)
        try:
            return await apikeys.revoke_key(conn, key_id)
        finally:
            await conn.close()
    return asyncio.run(go())


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]


def read_record(bootstrap: str, topic: str, partition: int, offset: int, timeout: float = 15) -> Record:
    """The record at exactly this position (assigned, no group join)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "gateway-test-reader", "enable.auto.commit": False})
    try:
        consumer.assign([TopicPartition(topic, partition, offset)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            if msg.offset() == offset:
                return Record(msg.topic(), msg.partition(), msg.offset(), msg.key(), msg.value(), dict(msg.headers() or []))
        raise TimeoutError(f"no record at {topic}/{partition}@{offset}")
    finally:
        consumer.close()


class TcpProxy:
    """127.0.0.1:<port> → target, byte for byte, one thread pair per connection. `cut()` closes the
    listener and every connection: to the client it is the server going away."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._cut = False
        threading.Thread(target=self._accept, name="tcp-proxy", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._cut:
                    client.close()
                    upstream.close()
                    return
                self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            self._listener.close()
            for s in self._sockets:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
