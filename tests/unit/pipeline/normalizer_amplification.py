"""Packed output per input byte, CPU and peak memory of the normalizer stage, for hostile bodies and
the shared example payloads (issue 14). Uses only what the stage had before the fix too, so the same
file measures an older checkout:

    .venv/bin/python -m tests.unit.pipeline.normalizer_amplification [payload_dir]

payload_dir defaults to schemas/examples. Not a test: the assertions are in test_normalizer_limits.py.
"""

from __future__ import annotations

import sys
import time
import tracemalloc
from pathlib import Path

import orjson

from core.records import RawRecord
from pipeline.normalizer import pack, process_records

try:  # the traced run is slower: a CPU budget must not trip there (the limits exist since issue 14)
    from schemas.normalizers.base import NormalizeLimits
    TRACED = {"limits": NormalizeLimits(record_cpu_budget_ms=600_000)}
except ImportError:
    TRACED = {}

PROVIDERS = {"prometheus": "prometheus", "grafana": "grafana", "datadog": "datadog", "pagerduty": "pagerduty",
             "cloudwatch": "cloudwatch", "sentry": "sentry", "zabbix": "zabbix", "keep": "keep"}


def once(body: bytes, provider: str, **kw: object) -> tuple[object, int]:
    record = RawRecord("alerts", 0, 0, 1_736_935_560_000, b"k", body, {"provider": provider.encode(), "tenant": b"acme"})
    result = process_records([record], partitions=8, default_tenant="default", max_payload_bytes=1 << 20, **kw)
    out = sum(len(blob) for parts in (result.by_partition, result.critical_by_partition)
              for alerts in parts.values() for blob in pack(alerts, 512 * 1024))
    return result, out


def group_body(field: str, total: int, alert: bytes = b'{"labels":{"alertname":"a"}}') -> bytes:
    """Half the body one group field, half minimal alerts: what multiplied 2,500-fold."""
    n = (total // 2) // (len(alert) + 1)
    big = b"x" * (total - n * (len(alert) + 1) - 100)
    return b'{"receiver":"r","' + field.encode() + b'":"' + big + b'","alerts":[' + b",".join([alert] * n) + b"]}"


def small_group_body(n: int, alert: bytes) -> bytes:
    """Many alerts with the most group data that stays on every alert (0.5 KB)."""
    return (b'{"receiver":"' + b"r" * 150 + b'","groupKey":"' + b"g" * 150 + b'","externalURL":"' + b"u" * 150
            + b'","alerts":[' + b",".join([alert] * n) + b"]}")


def cases(payloads: Path) -> list[tuple[str, str, bytes]]:
    out = [
        ("prometheus", "alertmanager, 145 KB groupKey", group_body("groupKey", 290_000)),
        ("grafana", "grafana, 145 KB message", group_body("message", 290_000)),
        ("prometheus", "alertmanager 10k alerts, 0.5 KB group", small_group_body(10_000, b'{"labels":{"alertname":"a"}}')),
        ("prometheus", "alertmanager 0.96 MB, 10k alerts", small_group_body(10_000, b'{"labels":{"alertname":"a","x":"' + b"y" * 60 + b'"}}')),
        ("datadog", "datadog 12,000 tags of one key", orjson.dumps({"title": "t", "tags": ",".join(f"k:v{i}" for i in range(12_000))})),
        ("datadog", "datadog 12,000 distinct tags", orjson.dumps({"title": "t", "tags": ",".join(f"k{i}:v{i}" for i in range(12_000))})),
    ]
    for path in sorted(payloads.glob("*.json")):
        provider = PROVIDERS.get(path.stem.split("_")[0])
        if provider and "subscription" not in path.stem:
            out.append((provider, path.stem, orjson.dumps(orjson.loads(path.read_bytes()))))
    return out


def main() -> None:
    payloads = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[3] / "schemas" / "examples"
    print(f"{'case':40} {'in B':>9} {'alerts':>6} {'packed B':>11} {'out/in':>8} {'CPU s':>6} {'peak MB':>8}  dead letters")
    for provider, name, body in cases(payloads):
        started = time.process_time()
        result, out = once(body, provider)
        cpu = time.process_time() - started  # normalize + pack, untraced
        tracemalloc.start()
        once(body, provider, **TRACED)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        letters = [f"{d.reason}: {d.detail[:60]}" for d in result.dead_letters]
        print(f"{name:40} {len(body):9d} {result.alerts:6d} {out:11d} {out / len(body):8.2f} {cpu:6.3f} {peak / 1e6:8.1f}  {letters}")


if __name__ == "__main__":
    main()
