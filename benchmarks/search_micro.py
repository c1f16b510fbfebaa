"""The search server's CPU per indexed alert, for the index as deployed and for variants of it.

    .venv/bin/python -m benchmarks.search_micro [--url URL] [--docs 40000] [--bulk 400] [--rounds 4] [--warm-docs 100000]

The search server took as much CPU per alert as the worker in the saturation runs
(docs/performance.md), so what each part of the index costs decides where to cut. Every variant is
a fresh index made from `index_template` (the deployed settings and mappings) with one thing
changed. The same stored alerts (the default load profile, normalized by the real stage, bodies
from the real sink's `bulk_body`) go to each in bulk requests of `--bulk` documents, one request in
flight as the sink sends them. The variants take turns in rounds (each round indexes a slice of the
documents into every variant, in a shuffled order, then waits for the refresh and merges of that
slice), so that the machine's drift hits every variant alike. Reported per variant: the server
process' CPU (user + system, JVM threads and all) per 1000 documents, the wall time per bulk
request, and the index's own counters (`_stats`: indexing, refresh and merge time).

Needs a running OpenSearch or Elasticsearch (`--url`, default `ALERTSTREAM_SEARCH_URL`; `alertstream
stack up` starts one); the server's process is found by the port it listens on (`--pid` to name it).
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import random
import statistics
import time
from typing import Any, Callable
from urllib.parse import urlsplit

import orjson
import psutil
from elasticsearch import AsyncElasticsearch

from benchmarks.micro import publish, variants_table
from benchmarks.payload_factory import PayloadFactory, load_profile
from config.settings import Settings
from core.records import RawRecord
from pipeline.normalizer import iter_process_records
from schemas.alert import NormalizedAlert
from sinks.search import bulk_body, make_client
from sinks.search_schema import Flavour, detect_flavour, index_template

Template = dict[str, Any]


def _deployed(t: Template) -> Template:
    return t


def _labels_not_indexed(t: Template) -> Template:
    """What indexing the labels as one `flat_object`/`flattened` field costs."""
    t["mappings"]["properties"]["labels"] = {"type": "object", "enabled": False}
    return t


def _label_pairs(t: Template) -> Template:
    """The cheaper alternative: labels kept in `_source` only, indexed as one keyword per `key=value`."""
    t = _labels_not_indexed(t)
    t["mappings"]["properties"]["labelPairs"] = {"type": "keyword", "ignore_above": 1024, "doc_values": False}
    return t


def _refresh_5s(t: Template) -> Template:
    t["settings"]["index"]["refresh_interval"] = "5s"
    return t


def _with_label_pairs(body: bytes) -> bytes:
    """The bulk body with each document's labels also as `labelPairs` (what the alternative sends)."""
    lines = body.split(b"\n")
    for n in range(1, len(lines), 2):
        if lines[n]:
            document = orjson.loads(lines[n])
            document["labelPairs"] = [f"{k}={v}" for k, v in document.get("labels", {}).items()]
            lines[n] = orjson.dumps(document)
    return b"\n".join(lines)


# name → (index template change, bulk body change)
VARIANTS: dict[str, tuple[Callable[[Template], Template], Callable[[bytes], bytes] | None]] = {
    "as deployed": (_deployed, None),
    "labels not indexed": (_labels_not_indexed, None),
    "labels as key=value keywords": (_label_pairs, _with_label_pairs),
    "refresh 5s": (_refresh_5s, None),
}


def stored_alerts(count: int, seed: int = 1) -> list[NormalizedAlert]:
    """`count` canonical alerts of the default load profile, through the real normalize stage."""
    factory = PayloadFactory(load_profile("default", seed=seed))
    alerts: list[NormalizedAlert] = []
    offset = 0
    while len(alerts) < count:
        records = []
        for generated in factory.take(2000):
            headers = {} if generated.provider == "keep" else {"provider": generated.provider.encode()}
            records.append(RawRecord("alerts", 0, offset, 1_767_225_600_000 + offset, generated.key, generated.value, headers))
            offset += 1
        for result in iter_process_records(records, partitions=1, default_tenant="bench", max_payload_bytes=1 << 20):
            for items in (*result.by_partition.values(), *result.critical_by_partition.values()):
                alerts.extend(item.normalized() for item in items)  # decoded: the variants read labels
    return alerts[:count]


def server_pid(url: str) -> int:
    port = urlsplit(url).port or 9200
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port and conn.pid:
            return conn.pid
    raise SystemExit(f"no process listens on port {port}; pass --pid")


def _cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


async def _settle(client: AsyncElasticsearch, index: str) -> None:
    """Until the slice is searchable and no merge of the index is running."""
    await client.indices.refresh(index=index)
    for _ in range(100):
        stats = (await client.indices.stats(index=index, metric="merge")).body
        if not stats["_all"]["primaries"]["merges"]["current"]:
            return
        await asyncio.sleep(0.1)


async def run(url: str, pid: int, docs: int, bulk: int, rounds: int, seed: int = 1, warm_docs: int = 0) -> dict[str, Any]:
    rng = random.Random(seed)
    client = make_client(url)  # the sink's client: it speaks to OpenSearch too
    prefix = f"search-micro-{os.getpid()}"
    indices = {name: f"{prefix}-{i}" for i, name in enumerate(VARIANTS)}
    try:
        flavour: Flavour = await detect_flavour(client)
        base = index_template(Settings(search_index=prefix, search_replicas=0), flavour, lifecycle=False)["template"]
        for name, (change, _) in VARIANTS.items():
            body = change(copy.deepcopy(base))
            await client.indices.create(index=indices[name], settings=body["settings"], mappings=body["mappings"])
        alerts = stored_alerts(docs, seed)
        if warm_docs:  # a fresh JVM runs several times slower until its JIT has compiled the indexing path
            scratch = f"{prefix}-warm"
            await client.indices.create(index=scratch, settings=base["settings"], mappings=base["mappings"])
            for _ in range(0, warm_docs, len(alerts)):
                for i in range(0, len(alerts), bulk):
                    await client.bulk(operations=bulk_body(scratch, alerts[i:i + bulk]))
            await client.indices.delete(index=scratch)
            print(f"  warmed with {warm_docs:,} documents (not measured)", flush=True)
        cpu = {name: 0.0 for name in VARIANTS}
        walls: dict[str, list[float]] = {name: [] for name in VARIANTS}
        per_round = len(alerts) // rounds
        for r in range(rounds):
            chunk = alerts[r * per_round:(r + 1) * per_round]
            order = list(VARIANTS)
            rng.shuffle(order)
            for name in order:
                bodies = [bulk_body(indices[name], chunk[i:i + bulk]) for i in range(0, len(chunk), bulk)]
                if (rewrite := VARIANTS[name][1]) is not None:
                    bodies = [rewrite(body) for body in bodies]
                before = _cpu(pid)
                for body in bodies:
                    started = time.perf_counter()
                    response = await client.bulk(operations=body)
                    walls[name].append(time.perf_counter() - started)
                    if response.get("errors"):
                        raise SystemExit(f"{name}: the store refused documents: {str(response)[:500]}")
                await _settle(client, indices[name])
                cpu[name] += _cpu(pid) - before
            print(f"  round {r + 1}/{rounds}: {per_round:,} documents into each of {len(VARIANTS)} indices", flush=True)
        # what each variant can still find by a label (a check that it is what it claims)
        key, value = next((k, v) for a in alerts for k, v in a.alert.labels.items())
        by_label = {"bool": {"should": [{"term": {f"labels.{key}": value}}, {"term": {"labelPairs": f"{key}={value}"}}]}}
        expected = sum(1 for a in alerts[:per_round * rounds] if a.alert.labels.get(key) == value)
        result: dict[str, Any] = {"flavour": flavour.value, "label_query": f"{key}={value}", "label_matches": expected, "documents": per_round * rounds, "bulk": bulk,
                                  "rounds": rounds, "variants": {}}
        for name in VARIANTS:
            stats = (await client.indices.stats(index=indices[name])).body["_all"]["primaries"]
            ms = sorted(w * 1000 for w in walls[name])
            found = (await client.count(index=indices[name], query=by_label)).body["count"]
            result["variants"][name] = {
                "documents": (await client.count(index=indices[name])).body["count"],
                "found_by_label": found,
                "server_cpu_ms_per_1000_docs": round(cpu[name] * 1e6 / (per_round * rounds), 1),
                "ms_per_bulk_p50": round(statistics.median(ms), 1),
                "ms_per_bulk_p90": round(ms[int(len(ms) * 0.9)], 1),
                "index_time_ms": stats["indexing"]["index_time_in_millis"],
                "refresh_time_ms": stats["refresh"]["total_time_in_millis"],
                "merge_time_ms": stats["merges"]["total_time_in_millis"],
                "store_mib": round(stats["store"]["size_in_bytes"] / 2**20, 1),
            }
        return result
    finally:
        await client.indices.delete(index=f"{prefix}-*", ignore_unavailable=True)
        await client.close()


def markdown(r: dict[str, Any]) -> str:
    return variants_table(
        f"{r['documents']:,} default-mix alert documents per variant ({r['flavour']}), bulk requests of {r['bulk']}, "
        f"{r['rounds']} rounds; found by the label `{r['label_query']}`: {r['label_matches']} expected",
        [("server CPU ms / 1000 docs", lambda v: v["server_cpu_ms_per_1000_docs"]),
         ("ms/bulk p50", lambda v: v["ms_per_bulk_p50"]), ("p90", lambda v: v["ms_per_bulk_p90"]),
         ("index time ms", lambda v: v["index_time_ms"]), ("refresh ms", lambda v: v["refresh_time_ms"]),
         ("merge ms", lambda v: v["merge_time_ms"]), ("store MiB", lambda v: v["store_mib"]),
         ("found by label", lambda v: v["found_by_label"])],
        r["variants"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=os.environ.get("ALERTSTREAM_SEARCH_URL"))
    parser.add_argument("--pid", type=int, help="the search server's process (default: the one listening on --url's port)")
    parser.add_argument("--docs", type=int, default=40_000, help="documents per variant")
    parser.add_argument("--bulk", type=int, default=400, help="documents per bulk request (the sink sends ~370 at saturation)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--warm-docs", type=int, default=100_000, help="documents indexed first into a scratch index, not measured")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if not args.url:
        parser.error("no --url and no ALERTSTREAM_SEARCH_URL (`alertstream stack up` starts one)")
    result = asyncio.run(run(args.url, args.pid or server_pid(args.url), args.docs, args.bulk, args.rounds, warm_docs=args.warm_docs))
    publish(result, markdown(result), args.json)


if __name__ == "__main__":
    main()
