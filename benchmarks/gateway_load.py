"""Load on the HTTP gateway with wrk, on loopback: requests/s and p99 at 1 and 10 alerts per webhook.

    .venv/bin/python -m benchmarks.gateway_load [--duration 15] [--connections 32] [--json out.json]

Starts a stack of its own in a temporary directory (broker, Postgres), one `alertstream gateway`
process with rate limits out of the way, and runs wrk against `POST /alerts/event/prometheus`
with an Alertmanager webhook carrying N alerts (built from schemas/examples). What is measured is
the gateway's accept path: auth, validation by the normalizer, produce, broker ack, 202. No
worker runs (processing capacity is measured by `alertstream bench`, docs/performance.md).
Everything (wrk, gateway, broker) shares this machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import orjson

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "schemas" / "examples" / "prometheus_alertmanager_webhook.json"


def webhook(alerts: int) -> bytes:
    """An Alertmanager webhook with `alerts` distinct alerts (labels and fingerprints differ)."""
    body = orjson.loads(EXAMPLE.read_bytes())
    template = body["alerts"][0]
    body["alerts"] = []
    for i in range(alerts):
        alert = copy.deepcopy(template)
        alert["labels"]["instance"] = f"load-{i}"
        alert["fingerprint"] = f"{i:016x}"
        body["alerts"].append(alert)
    return orjson.dumps(body)


LUA = """\
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-API-KEY"] = "{key}"
local f = io.open("{body}", "rb")
wrk.body = f:read("*a")
f:close()
"""


def _seconds(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text).groups()
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def run_wrk(url: str, key: str, body: bytes, workdir: Path, *, duration_s: int, connections: int, threads: int) -> dict:
    body_path = workdir / f"body-{len(body)}.json"
    body_path.write_bytes(body)
    script = workdir / "post.lua"
    script.write_text(LUA.format(key=key, body=body_path))
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _seconds(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = _seconds(re.search(r"\s99%\s+(\S+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"requests_per_s": rps, "p50_s": p50, "p99_s": p99, "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(0) if errors else "", "wrk_output": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=15, help="seconds of load per case")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (it shares the cores with the gateway)")
    parser.add_argument("--alerts", type=int, nargs="+", default=[1, 10], help="alerts per webhook, one case each")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--profile", type=Path, help="py-spy the gateway during each case; raw folded stacks to PATH.<alerts>.txt")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed (deploy/system-packages.sh)", file=sys.stderr)
        return 2

    from config.settings import Settings
    from sinks.migrate import migrate
    from streams import localstack
    from streams.topics import ensure_topics
    from tests.conftest import free_port, isolated
    from tests.integration.gateway.gateway_support import GatewayProcess, create_key

    work = Path(tempfile.mkdtemp(prefix="gateway-load-"))
    base = Settings(kafka_bootstrap=None, database_url=None, search_url=None, data_dir=work)
    env = localstack.up(base, state_dir=work / "stack")
    gateway = None
    try:
        asyncio.run(migrate(env["ALERTSTREAM_DATABASE_URL"]))
        roomy = {"rate_per_s": 1e6, "burst": 1e6}
        settings = isolated(Settings(kafka_bootstrap=env["ALERTSTREAM_KAFKA_BOOTSTRAP"], database_url=env["ALERTSTREAM_DATABASE_URL"],
                                     search_url=env["ALERTSTREAM_SEARCH_URL"], data_dir=work), "gwload").model_copy(update={
            "gateway_port": free_port(), "gateway_lag_threshold": 0, "log_level": "WARNING",
            "gateway_tenant_rate_limit": roomy, "gateway_provider_rate_limit": roomy,
            # the gateway's capacity is measured, not its byte bucket or per-tenant validation queue
            "gateway_tenant_byte_rate_limit": {"rate_per_s": 1e12, "burst": 1e12},
            "gateway_validation_tenant_pending": 4096})
        ensure_topics(settings)
        gateway = GatewayProcess(settings, work / "gateway.log")
        key = create_key(settings.require_database_url(), "load")[1]
        url = f"{gateway.url}/alerts/event/prometheus"
        results = {}
        for n in args.alerts:
            body = webhook(n)
            check = httpx.post(url, content=body, headers={"X-API-KEY": key, "Content-Type": "application/json"}, timeout=10)
            assert check.status_code == 202, check.text
            time.sleep(1)
            spy = None
            if args.profile:
                spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "--format", "raw", "--rate", "200", "-d", str(args.duration),
                                        "-p", str(gateway.proc.pid), "-o", f"{args.profile}.{n}.txt"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            r = run_wrk(url, key, body, work, duration_s=args.duration, connections=args.connections, threads=args.threads)
            if spy is not None:
                spy.wait(30)
            r.update(alerts_per_webhook=n, body_bytes=len(body), alerts_per_s=r["requests_per_s"] * n)
            results[n] = r
            print(f"{n:>3} alerts/webhook ({len(body)} B): {r['requests_per_s']:.0f} req/s = {r['alerts_per_s']:.0f} alerts/s, "
                  f"p50 {r['p50_s'] * 1000:.1f} ms, p99 {r['p99_s'] * 1000:.1f} ms, non-2xx {r['non_2xx']} {r['socket_errors']}",
                  file=sys.stderr)
        if args.json:
            args.json.write_text(json.dumps({str(k): {kk: vv for kk, vv in v.items() if kk != "wrk_output"} for k, v in results.items()},
                                            indent=2))
    finally:
        if gateway is not None:
            gateway.stop()
        localstack.down(work / "stack")
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
