"""Micro-benchmark of the dedup path, in µs per alert, on one core.

    .venv/bin/python -m benchmarks.dedup_micro [--records 20000] [--cardinality 2000] [--seed 1]

Steps, each timed alone over the same alerts (best of `--repeat` passes, CPU time):
  normalize          provider payload → canonical alerts (orjson parse + normalizer)
  fingerprint        RuleSet rule: default (the normalizer's identity) / custom fields
  content hash       default ignore set (msgspec fast path) / custom ignore fields
  bloom              `key in filter` (+ `add` for new keys), BloomFilter sized for the identities
  cache + decide     HotCache get → (miss: bloom, then the table) → decide() → write-through put
and the whole path in one loop. Then the internal topic's side for the default and heavy load
profiles: the whole normalize stage (`process_records`: parse, normalize, fingerprint, content hash,
checks, row ids, the packed alerts), packing, decoding a packed record (the alerts' JSON stays bytes) and the dedup plan with
its Postgres rows, under two young-GC thresholds. The table behind the cache is a dict here; for scale, the real
Faust table read (`DedupStore.get`, RocksDB store) is timed alone on a hit and a miss: that is what a
cache hit or a bloom negative saves.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import random
import shutil
import tempfile
import time
from typing import Any, Callable, Iterator

from benchmarks.payload_factory import PROVIDERS, LoadProfile, PayloadFactory, load_profile
from schemas.alert import Alert
from schemas.normalizers import NormalizeContext, normalize
from schemas.rules import RuleSet
from tables.bloom import BloomFilter
from tables.dedup_state import DedupState, decide, state_key
from tables.hot_cache import HotCache

CUSTOM_RULES = """
rules:
  - tenant: "*"
    provider: "*"
    fingerprint_fields: [name, service, labels.instance, labels.host, extra.monitor_id]
    ignore_fields: [id, url, message, extra.date, extra.time, extra.sns]
"""
_CTX = NormalizeContext(tenant="default", received_at="2025-01-15T10:05:00.000Z")


def _best(fn: Callable[[], Any], repeat: int) -> float:
    """Best CPU seconds of `repeat` runs of fn."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        started = time.process_time()
        fn()
        best = min(best, time.process_time() - started)
    return best


def generate(records: int, cardinality: int, seed: int) -> list[tuple[str, str, bytes]]:
    profile = LoadProfile(mix={p: 1.0 for p in PROVIDERS}, cardinality=cardinality, full_dup_ratio=0.3,
                          partial_dup_ratio=0.2, flap_ratio=0.05, alerts_per_webhook=5, mean_size_bytes=1500, seed=seed)
    return [(r.provider, r.tenant, r.value) for r in PayloadFactory(profile).take(records)]


def faust_table_read(keys: int = 5_000) -> tuple[float, float] | None:
    """µs of one DedupStore.get through a real Faust table (RocksDB store): (hit, miss). None if unavailable."""
    try:
        import faust

        from tables.dedup_state import DedupStore, encode_state, make_table
    except Exception:  # pragma: no cover - faust or rocksdict missing
        return None
    datadir = tempfile.mkdtemp(prefix="dedup-micro-")
    try:
        app = faust.App("dedup-micro", store="rocksdb://", datadir=datadir, broker="kafka://127.0.0.1:1")
        table = make_table(app, 1)

        class _Message:
            partition, topic = 0, "alerts.normalized"

        class _Event:
            message = _Message()

        event = _Event()
        store = DedupStore(table)
        db = table.data._db_for_partition(0)
        rng = random.Random(7)
        present = [state_key("default", rng.randbytes(16).hex()) for _ in range(keys)]
        absent = [state_key("default", rng.randbytes(16).hex()) for _ in range(keys)]
        value = encode_state(DedupState("0" * 32, "firing", 1, 1, 1))
        for key in present:
            db[key] = value
        hit = _best(lambda: [store.get(k, event) for k in present], 3) / keys * 1e6
        miss = _best(lambda: [store.get(k, event) for k in absent], 3) / keys * 1e6
        return hit, miss
    except Exception as exc:  # pragma: no cover - report, do not fail the benchmark
        print(f"(Faust table read not measured: {type(exc).__name__}: {exc})")
        return None
    finally:
        shutil.rmtree(datadir, ignore_errors=True)


def run(records: int, cardinality: int, seed: int, repeat: int, cache_entries: int) -> list[tuple[str, float, str]]:
    raw = generate(records, cardinality, seed)
    alerts: list[Alert] = [a for provider, tenant, value in raw for a in normalize(provider, value, _CTX)]
    n = len(alerts)
    default_rules, custom_rules = RuleSet.default(), RuleSet.from_yaml(CUSTOM_RULES)
    rows: list[tuple[str, float, str]] = []

    def per_alert(seconds: float) -> float:
        return seconds / n * 1e6

    t = _best(lambda: [normalize(p, v, _CTX) for p, _, v in raw], repeat)
    rows.append(("normalize", per_alert(t), f"{records:,} records → {n:,} alerts, {sum(len(v) for *_, v in raw) / records:,.0f} B/record"))

    for label, rules in (("default", default_rules), ("custom fields", custom_rules)):
        rule_of = [rules.for_(a.tenant, a.provider_type) for a in alerts]
        pairs = list(zip(rule_of, alerts))
        t = _best(lambda: [r.fingerprint(a) for r, a in pairs], repeat)
        rows.append((f"fingerprint ({label})", per_alert(t), "rule cached per (tenant, provider)"))
    for label, rules in (("default", default_rules), ("custom ignore", custom_rules)):
        pairs = [(rules.for_(a.tenant, a.provider_type), a) for a in alerts]
        t = _best(lambda: [r.content_hash(a) for r, a in pairs], repeat)
        rows.append((f"content hash ({label})", per_alert(t), "msgspec fast path" if label == "default" else "dict + drop + encode"))
    t = _best(lambda: [default_rules.for_(a.tenant, a.provider_type) for a in alerts], repeat)
    rows.append(("rule look-up", per_alert(t), "RuleSet.for_ (dict hit)"))

    # stage 2 inputs: key, content hash, status, time
    items = []
    for i, a in enumerate(alerts):
        chash = default_rules.apply(a)
        items.append((state_key(a.tenant, a.fingerprint), chash, a.status, 1_736_935_500_000 + i))
    identities = len({k for k, *_ in items})

    def bloom_pass() -> None:
        bf = BloomFilter(identities, 0.01)
        contains, add = bf.__contains__, bf.add
        for key, *_ in items:
            if not contains(key):
                add(key)

    t = _best(bloom_pass, repeat)
    rows.append(("bloom check (+add if new)", per_alert(t), f"{identities:,} identities, p=1%"))

    def stage_two(entries: int) -> Callable[[], dict[str, int]]:
        def go() -> dict[str, int]:
            table: dict[bytes, DedupState] = {}
            cache: HotCache[bytes, DedupState] = HotCache(entries)
            bf = BloomFilter(identities, 0.01)
            reads = known = 0
            for key, chash, status, ms in items:
                known += key in table
                previous = cache.get(key)
                if previous is None and key in bf:
                    reads += 1
                    previous = table.get(key)
                outcome, state = decide(previous, chash, status, ms)
                if state is not None:
                    table[key] = state
                    if previous is None:
                        bf.add(key)
                    cache.put(key, state, 0)  # write-through, at the table write
                elif previous is not None:
                    cache.put(key, previous, 0)  # a table read populates the cache
            return {"reads": reads, "hits": cache.hits, "known": known}
        return go

    faust = faust_table_read()
    for entries in (cache_entries, max(1, identities // 20)):
        stats = stage_two(entries)()
        t = _best(stage_two(entries), repeat)
        rows.append((f"cache + bloom + decide, {entries:,} entries", per_alert(t),
                     f"{stats['hits'] / n:.0%} cache hits, {stats['reads'] / n:.0%} table reads (a dict here), "
                     f"{1 - (stats['hits'] + stats['reads']) / n:.0%} bloom negatives"))
        if faust is not None:
            with_reads = per_alert(t) + stats["reads"] / n * faust[0]
            without = (stats["known"] * faust[0] + (n - stats["known"]) * faust[1]) / n
            rows.append(("  modelled with Faust reads", with_reads,
                         f"vs {without:.2f} µs/alert reading the Faust table for every alert"))

    def whole() -> None:
        cache: HotCache[bytes, DedupState] = HotCache(cache_entries)
        bf = BloomFilter(identities, 0.01)
        table: dict[bytes, DedupState] = {}
        ms = 1_736_935_500_000
        for provider, _, value in raw:
            for a in normalize(provider, value, _CTX):
                chash = default_rules.apply(a)
                key = state_key(a.tenant, a.fingerprint)
                previous = cache.get(key)
                if previous is None and key in bf:
                    previous = table.get(key)
                outcome, state = decide(previous, chash, a.status, ms)
                if state is not None:
                    table[key] = state
                    if previous is None:
                        bf.add(key)
                    cache.put(key, state, 0)
                elif previous is not None:
                    cache.put(key, previous, 0)

    t = _best(whole, repeat)
    rows.append(("whole path, one loop", per_alert(t), "normalize → rules → hash → cache/bloom → decide"))

    if faust is not None:
        rows.append(("ref: Faust table read, hit", faust[0], "DedupStore.get, RocksDB store (saved by a cache hit)"))
        rows.append(("ref: Faust table read, miss", faust[1], "DedupStore.get, RocksDB store (saved by a bloom negative)"))
    return rows


def internal_record_steps(profile: str, records: int, repeat: int) -> list[tuple[str, float, str]]:
    """The internal topic's side, in µs per alert: packing the normalized alerts, decoding a packed
    record (each alert's head; its JSON stays bytes), and the dedup plan plus the Postgres rows, with
    Python's young collection every 700 allocations and every 50,000 (the worker's
    `ALERTSTREAM_GC_GEN0_THRESHOLD`)."""
    from core.records import RawRecord
    from pipeline.deduplicator import PackedRecord, plan_batch
    from pipeline.normalizer import pack, process_records, unpack
    from sinks.postgres import alert_rows, last_alert_rows

    raw = [RawRecord("alerts", 0, i, 1_736_935_500_000, r.key, r.value,
                     {"tenant": r.tenant.encode(), **({"provider": r.provider.encode()} if r.provider != "keep" else {})})
           for i, r in enumerate(PayloadFactory(load_profile(profile)).take(records))]
    def stage_one() -> list:
        return process_records(raw, partitions=1, default_tenant="default", max_payload_bytes=1 << 20).by_partition[0]

    alerts = stage_one()
    blobs = pack(alerts, 256 * 1024)
    packed = [PackedRecord(0, i, blob, None) for i, blob in enumerate(blobs)]
    n = len(alerts)

    def plan_and_rows() -> None:
        plan = plan_batch(packed, lambda key, event: None)
        alert_rows(plan.batch.stored), last_alert_rows(plan.batch.sightings)

    webhooks = [r.value for r in raw if r.headers.get("provider") == b"prometheus"]
    am_ctx = NormalizeContext(tenant="default", received_at="2025-01-15T10:05:00.000Z", check_content=False)
    am_alerts = sum(len(normalize("prometheus", v, am_ctx)) for v in webhooks)

    def alertmanager_normalize() -> None:
        for value in webhooks:
            normalize("prometheus", value, am_ctx)

    rows: list[tuple[str, float, str]] = []
    if am_alerts:
        am_note = f"{profile} mix's Alertmanager webhooks, {am_alerts:,} alerts"
        rows.append((f"Alertmanager normalize(), typed path ({profile})",
                     _best(alertmanager_normalize, repeat) / am_alerts * 1e6, am_note))
        with _parsed_alertmanager():
            rows.append((f"Alertmanager normalize(), parsed path ({profile})",
                         _best(alertmanager_normalize, repeat) / am_alerts * 1e6, am_note))
    young = gc.get_threshold()
    try:
        for threshold in (700, 50_000):
            gc.set_threshold(threshold, *young[1:])
            note = f"{profile} mix, {n:,} alerts, {sum(map(len, blobs)) / n:,.0f} B each packed, young GC every {threshold:,}"
            rows.append((f"normalize stage ({profile})", _best(stage_one, repeat) / n * 1e6, note))
            with _parsed_alertmanager():
                rows.append((f"normalize stage, Alertmanager's parsed path only ({profile})",
                             _best(stage_one, repeat) / n * 1e6, note + "; the typed path off (its before)"))
            rows.append((f"pack ({profile})", _best(lambda: pack(alerts, 256 * 1024), repeat) / n * 1e6, note))
            rows.append((f"unpack ({profile})", _best(lambda: [unpack(b) for b in blobs], repeat) / n * 1e6, note))
            rows.append((f"plan + Postgres rows ({profile})", _best(plan_and_rows, repeat) / n * 1e6, note))
    finally:
        gc.set_threshold(*young)
    return rows


def resend_cache_steps(profile: str, records: int, repeat: int, cache_bytes: int = 128 << 20) -> list[tuple[str, float, str]]:
    """The normalize stage over the second half of a `records`-long stream, in batches of 500, with the
    re-send cache (filled by the first half, as a running worker's is) and without, in µs per alert;
    best of `repeat`, interleaved, with the worker's young-GC threshold."""
    from core.records import RawRecord
    from pipeline.normalizer import process_records
    from pipeline.resend_cache import ResendCache

    raw = [RawRecord("alerts", 0, i, 1_736_935_500_000 + i, r.key, r.value,
                     {"tenant": r.tenant.encode(), **({"provider": r.provider.encode()} if r.provider != "keep" else {})})
           for i, r in enumerate(PayloadFactory(load_profile(profile)).take(records))]
    half = records // 2

    def run_half(part: list[RawRecord], cache: ResendCache | None) -> tuple[float, int]:
        alerts, started = 0, time.process_time()
        for at in range(0, len(part), 500):
            alerts += process_records(part[at:at + 500], partitions=12, default_tenant="default",
                                      max_payload_bytes=1 << 20, cache=cache).alerts
        return time.process_time() - started, alerts

    young = gc.get_threshold()
    gc.set_threshold(50_000, *young[1:])
    best = {"off": float("inf"), "on": float("inf")}
    try:
        for _ in range(repeat):
            cache = ResendCache(cache_bytes)
            run_half(raw[:half], cache)
            cache.hits = cache.misses = 0
            seconds, n = run_half(raw[half:], cache)
            best["on"] = min(best["on"], seconds / n * 1e6)
            hit_ratio, held = cache.hits / (cache.hits + cache.misses), cache.bytes
            del cache
            gc.collect()
            seconds, n = run_half(raw[half:], None)
            best["off"] = min(best["off"], seconds / n * 1e6)
    finally:
        gc.set_threshold(*young)
    note = f"{profile} mix, second half of a {records:,}-record stream ({n:,} alerts), batches of 500"
    return [(f"normalize stage, no re-send cache ({profile})", best["off"], note),
            (f"normalize stage, re-send cache {cache_bytes >> 20} MiB ({profile})", best["on"],
             note + f"; {hit_ratio:.0%} of records hit, {held / 2 ** 20:.0f} MiB held")]


@contextlib.contextmanager
def _parsed_alertmanager() -> Iterator[None]:
    """Alertmanager webhooks through the parsed path only, as before the typed path
    (schemas/normalizers/alertmanager.py `normalize_bytes`)."""
    import schemas.normalizers as normalizers
    from schemas.normalizers import alertmanager

    saved = dict(normalizers._loaded)
    normalizers._loaded.update({p: (alertmanager.normalize, None) for p in ("prometheus", "alertmanager")})
    try:
        yield
    finally:
        normalizers._loaded.clear()
        normalizers._loaded.update(saved)


def bloom_fp(n: int = 100_000, target: float = 0.01) -> tuple[float, float, float, float]:
    """(measured FP rate, estimate, ns per add, ns per contains) on n random keys."""
    rng = random.Random(1)
    keys = [rng.randbytes(24) for _ in range(n)]
    probes = [rng.randbytes(24) for _ in range(n)]
    bf = BloomFilter(n, target)
    add_s = _best(lambda: [bf.add(k) for k in keys], 1)
    neg_s = _best(lambda: [k in bf for k in probes], 3)
    measured = sum(1 for k in probes if k in bf) / n
    return measured, bf.fp_rate_estimate(), add_s / n * 1e9, neg_s / n * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--cardinality", type=int, default=2_000, help="identities per provider")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cache-entries", type=int, default=100_000)
    parser.add_argument("--stream-records", type=int, default=200_000, help="records of the re-send cache's stream")
    args = parser.parse_args()
    rows = run(args.records, args.cardinality, args.seed, args.repeat, args.cache_entries)
    for profile in ("default", "heavy"):
        rows += internal_record_steps(profile, args.records, args.repeat)
        rows += resend_cache_steps(profile, args.stream_records, args.repeat)
    width = max(len(r[0]) for r in rows)
    print(f"{'step':<{width}}  µs/alert  note")
    for name, us, note in rows:
        print(f"{name:<{width}}  {us:8.2f}  {note}")
    for target in (0.01, 0.001):
        measured, estimate, add_ns, neg_ns = bloom_fp(target=target)
        print(f"bloom p={target}: measured FP {measured:.4%} on 100,000 random keys (estimate {estimate:.4%}); "
              f"{add_ns:,.0f} ns/add, {neg_ns:,.0f} ns/contains (absent keys)")


if __name__ == "__main__":
    main()
