"""Benchmark outputs: the results JSON, a Markdown summary, PNG plots, and profile summaries.

    .venv/bin/python -m benchmarks.report benchmarks/results/20250101T000000Z.json   # re-render md + PNGs

Files of one run, in the output dir, all named by the run id (its UTC start time):
    <id>.json                 every number, the time series and the configuration
    <id>.md                   the summary
    <id>-throughput.png       produced vs processed alerts/s over time
    <id>-lag.png              backlog, indexer lag and Kafka consumer-group lag over time
    <id>-latency.png          latency distribution and p50/p99 over time
    <id>-cpu.png              CPU cores used by each process over time
    <id>-worker-N.flamegraph.svg, .collapsed.txt, -profile.png   with --profile
"""

from __future__ import annotations

import html
import zlib
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks.sampling import STOLEN

TOP_N = 15

# ---------------------------------------------------------------------------------------------- outputs


def _engine(r: dict[str, Any], service: str) -> str | None:
    """The engine a run's local stack ran for `service`; None for servers from the environment (or a
    result written before engines were recorded)."""
    return (r.get("engines") or {}).get(service)


def _servers(r: dict[str, Any]) -> str:
    names = {"kafka": "Apache Kafka", "tansu": "Tansu (stand-in)", "opensearch": "OpenSearch",
             "elasticsearch": "Elasticsearch", "osmem": "osmem (stand-in)"}
    broker, search = _engine(r, "kafka"), _engine(r, "search")
    if broker is None and search is None:
        return "The broker, PostgreSQL and the search store (from the environment)"
    return f"Broker ({names.get(broker or '', broker or '?')}), PostgreSQL and the search store ({names.get(search or '', search or '?')})"


def write_outputs(result: dict[str, Any], out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    stem = result["run_id"]
    files: dict[str, Path] = {"json": out / f"{stem}.json", "md": out / f"{stem}.md"}
    files.update(plot_all(result, out, stem))
    for name, prof in (result.get("profile") or {}).items():
        png = out / f"{stem}-{name}-profile.png"
        plot_profile(prof, png, f"{name}: where the CPU goes ({result['scenario']} {result['mode']})")
        prof["png"] = png.name
        files[f"profile-{name}"] = png
    result["files"] = {k: v.name for k, v in files.items()}
    files["json"].write_text(json.dumps(result, indent=1, default=str) + "\n")
    files["md"].write_text(render_markdown(result))
    return files


def rerender(json_path: Path) -> dict[str, Path]:
    result = json.loads(json_path.read_text())
    return write_outputs(result, json_path.parent)


# ---------------------------------------------------------------------------------------------- formatting


def _n(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def _mb(v: float | None) -> str:
    return "-" if v is None else f"{v / 2**20:,.0f} MiB"


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


STEAL_WARNING_SHARE = 0.05  # of the cores' time during load + drain


def _steal_note(r: dict[str, Any]) -> str:
    """A warning when the hypervisor took a noticeable share of the cores: every process then gets
    less done per second and often more CPU time per alert, so compare such a run only with runs
    beside it, by ratios."""
    stolen = r["cpu"].get(STOLEN, {}).get("cores")
    if not stolen or stolen / r["machine"]["cpus"] < STEAL_WARNING_SHARE:
        return ""
    return (f"**The hypervisor took {stolen / r['machine']['cpus']:.0%} of the cores' time (steal) during the run:** "
            "compare its figures only with runs made beside it. ")


def render_markdown(r: dict[str, Any]) -> str:
    c, t = r["config"], r["target"]
    ceil = r.get("ceilings") or {}
    lines = [
        f"# Benchmark {r['run_id']}: {r['scenario_detail']}",
        "",
        f"`{r['command']}`" + (f" — {r['label']}" if r.get("label") else ""),
        "",
        f"{c['workers']} worker(s), {c['partitions']} partitions, tenant `{c['tenant']}`, started {r['started_at']}; "
        f"machine: {r['machine']['cpus']} CPUs, {r['machine']['memory_gb']} GB, Python {r['machine']['python']}. "
        f"{_servers(r)} run on the same machine. " + _steal_note(r)
        + (f"Servers warmed first: {c['warm_load_s']:g} s of the same load from the warm-up tenant, drained, not measured."
           if c.get("warm_load_s") else "Servers freshly started (no warm load)."),
        "",
        "| metric | value |",
        "|---|---|",
        f"| throughput (dedup stage, load window) | **{_n(r['throughput_alerts_s'])} alerts/s**, "
        f"**{r['throughput_mb_s']:.2f} MB/s** of raw payload |",
        f"| load window / drain after it | {r['duration_s']:.1f} s / {_n(r.get('drain_s'), 1)} s "
        f"(indexed {_n(r.get('index_drain_s'), 1)} s after) |",
        f"| produced | {_n(r['produced']['alerts'])} alerts in {_n(r['produced']['records'])} records, "
        f"{r['produced']['bytes'] / 1e6:,.1f} MB ({r['produced']['bytes_per_alert']:,.0f} B/alert); "
        f"{_n(r['produced']['alerts_per_s'])} alerts/s, {r['produced']['mb_per_s']:.2f} MB/s offered |",
        f"| processed / stored / indexed | {_n(r['processed_alerts'])} / {_n(r['stored_alerts'])} / "
        f"{_n(r.get('indexed_alerts'))} (outcomes {', '.join(f'{k} {_n(v)}' for k, v in r['outcomes'].items())}) |",
        f"| latency produce → Postgres commit | p50 **{_n(r.get('latency_p50_s'), 3)} s**, p95 "
        f"{_n(r.get('latency_p95_s'), 3)} s, p99 **{_n(r.get('latency_p99_s'), 3)} s**, max "
        f"{_n(r.get('latency_max_s'), 3)} s ({_n(r.get('latency_rows'))} stored rows) |",
    ]
    if r.get("index_latency_p99_s") is not None:
        lines.append(
            f"| latency produce → indexed (search store acknowledged; the workers' histogram) | p50 "
            f"{_n(r['index_latency_p50_s'], 2)} s, p99 **{_n(r['index_latency_p99_s'], 2)} s**; searchable at the "
            f"next refresh: p99 ≤ **{_n(r.get('searchable_p99_bound_s'), 2)} s** |")
    if ceil:
        b, cp = ceil["broker"], ceil["copy"]
        lines += [
            f"| ceiling ratio | **{_pct(r['ceiling_ratio'])}** of min(broker, COPY) = "
            f"{_n(r['ceiling_alerts_s'])} alerts/s; broker ratio {_pct(r['broker_ratio'])}, "
            f"COPY ratio {_pct(r['copy_ratio'])} |",
            f"| broker ceiling (produce → consume, no processing) | {_n(b['items_s'])} records/s = "
            f"{_n(b['alerts_s'])} alerts/s, {b['mb_s']:.1f} MB/s ({_n(b['items'])} records) |",
            f"| COPY ceiling (alert rows into Postgres, no processing) | {_n(cp['items_s'])} rows/s "
            f"({_n(cp['items'])} rows) |",
        ]
    lines += [
        f"| target 600 GB/day = {t['mb_s']} MB/s = {_n(t['alerts_s'])} alerts/s at this size, p99 < "
        f"{t['p99_s']:g} s | throughput {'met' if t['throughput_met'] else 'not met'}, p99 "
        f"{'met' if t['p99_met'] else 'not met'}"
        + (f", p99 to searchable < {t['searchable_p99_s']:g} s {'met' if t['searchable_p99_met'] else 'not met'}"
           if r.get("searchable_p99_bound_s") is not None else "") + " |",
        f"| efficiency | {_n(r.get('alerts_per_cpu_s'))} alerts per CPU-second (workers + servers), "
        f"{_n(r.get('alerts_per_worker_cpu_s'))} per worker CPU-second; Keep: "
        f"{r['reference']['keep_alerts_s_per_core'][0]:g}–{r['reference']['keep_alerts_s_per_core'][1]:g} alerts/s per core |",
        f"| backlog max / mean | {_n(r['lag'].get('backlog_max_alerts'))} / {_n(r['lag'].get('backlog_mean_alerts'))} "
        f"alerts (produced − processed) |",
        f"| search indexer lag max | {_n(r['lag'].get('index_lag_max_alerts'))} alerts (stored − indexed) |",
        "| Kafka consumer lag max | "
        + ", ".join(f"{g} {_n(v)}" for g, v in (r["lag"].get("kafka_lag_max_records") or {}).items())
        + (" records (a lower bound: Tansu under-reports end offsets) |" if _engine(r, "kafka") == "tansu" else " records |"),
        f"| DLQ records | {_n(r['dlq_records'])} |",
        *([f"| Faust changelog stalls (stream paused until the table's changelog is sent) | "
           f"{_n(fs['count'])} stalls, {fs['total_s']:,.1f} s in total ({_pct(fs['share_of_worker_time'])} of worker "
           f"time), longest {_n(fs['max_s'], 2)} s |"] if (fs := r.get("faust_changelog_stalls")) else []),
        "",
        "## CPU and memory (load + drain)",
        "",
        "| process | CPU s | cores | CPU s / 1000 alerts | peak RSS |",
        "|---|---|---|---|---|",
    ]
    for name, cpu in r["cpu"].items():
        lines.append(f"| {name} | {cpu['cpu_s']:.1f} | {_n(cpu['cores'], 2)} | {_n(cpu['cpu_s_per_1000_alerts'], 3)} | "
                     f"{_mb(r['peak_rss_bytes'].get(name))} |")
    lines.append(f"| **pipeline (workers + servers)** | | | **{_n(r.get('cpu_pipeline_s_per_1000_alerts'), 3)}** | |")
    st = r.get("stages")
    if st:
        rec = st["records_received"]
        lines += ["", "## How the work was batched (load + drain)", "",
                  "| stage | records taken | alerts per record |", "|---|---|---|",
                  f"| normalize (input records) | {_n(rec.get('normalize'))} | {_n(st['alerts_per_input_record'], 2)}"
                  + (f"; {_pct(st['normalize_resend_cache_hit_ratio'])} of them from the re-send cache"
                     if st.get("normalize_resend_cache_hit_ratio") is not None else "") + " |",
                  f"| deduplicate (packed records of alerts.normalized) | {_n(rec.get('deduplicate'))} | "
                  f"{_n(st['alerts_per_packed_record'], 2)} |",
                  f"| index (packed records of alerts.stored) | {_n(rec.get('index'))} | "
                  f"{_n(st['stored_alerts_per_indexed_record'], 2)} stored alerts |",
                  "", "| sink | batches | stored alerts per batch | mean flush | time spent flushing |",
                  "|---|---|---|---|---|"]
        for sink, v in st["sinks"].items():
            lines.append(f"| {sink} | {_n(v['batches'])} | {_n(v['mean_batch_stored_alerts'], 1)} | "
                         f"{_n(v['mean_flush_s'], 4)} s | {_pct(v['share_of_time_flushing'])} of load + drain |")
    if r.get("phases_s"):
        lines += ["", "Phases of the run (s): " + ", ".join(f"{k} {v:g}" for k, v in r["phases_s"].items())]
    if len(r.get("per_worker_processed") or {}) > 1:
        lines += ["", "Alerts processed per worker: "
                  + ", ".join(f"{k} {_n(v)}" for k, v in r["per_worker_processed"].items())]
    lines += ["", "## Plots", ""]
    for key in ("throughput", "lag", "latency", "cpu"):
        if key in r.get("files", {}):
            lines.append(f"![{key}]({r['files'][key]})")
    for name, prof in (r.get("profile") or {}).items():
        lines += ["", f"## Profile of {name} (py-spy, {prof['samples']:,} samples)", "",
                  f"Flamegraph: [{prof['flamegraph']}]({prof['flamegraph']}); collapsed stacks (speedscope, "
                  f"flamegraph.pl): [{prof['collapsed']}]({prof['collapsed']}). "
                  f"Busy samples (all threads, idle excluded) per wall-clock sample slot: {_pct(prof.get('busy_fraction'))}.", ""]
        if prof.get("png"):
            lines += [f"![profile]({prof['png']})", ""]
        lines += ["| task (what the event loop was running) | share |", "|---|---|"]
        lines += [f"| {k} | {_pct(v)} |" for k, v in prof["tasks"].items()]
        lines += ["", "| function (inclusive: on the stack) | share |", "|---|---|"]
        lines += [f"| `{k}` | {_pct(v)} |" for k, v in prof["inclusive"].items()]
        lines += ["", "| component (self time, by the leaf frame's package) | share |", "|---|---|"]
        lines += [f"| {k} | {_pct(v)} |" for k, v in prof["components"].items()]
        lines += ["", "| function (self time) | share |", "|---|---|"]
        lines += [f"| `{k}` | {_pct(v)} |" for k, v in prof["top_self"].items()]
    if r.get("problems"):
        lines += ["", "## Problems", ""] + [f"- {p}" for p in r["problems"]]
    lines += ["", "## Definitions", "",
              "- throughput: alerts processed by the dedup stage (every outcome: new, changed, duplicate) during the "
              "load window ÷ its length; MB/s = that × raw payload bytes per alert produced.",
              "- latency: `stored_at − received_at` of every stored alert row of the run's tenant (new and changed "
              "alerts; exact duplicates write no row). `received_at` is the input record's Kafka timestamp (produce "
              "time), `stored_at` the start of the transaction that committed it.",
              f"- ceiling ratio: {r.get('ceiling_ratio_definition', '-')}.",
              "- backlog: alerts produced − alerts processed, from the load generator and the workers' counters "
              "(exact, broker-independent)."]
    return "\n".join(lines) + "\n"


def console_summary(r: dict[str, Any], files: dict[str, Path], console) -> None:  # noqa: ANN001
    from rich.table import Table

    table = Table(title=f"bench {r['run_id']}: {r['scenario_detail']}", show_header=False)
    table.add_row("throughput", f"{r['throughput_alerts_s']:,.0f} alerts/s, {r['throughput_mb_s']:.2f} MB/s "
                                f"(window {r['duration_s']:.0f} s, drain {_n(r.get('drain_s'), 1)} s)")
    table.add_row("latency p50 / p95 / p99", f"{_n(r.get('latency_p50_s'), 3)} / {_n(r.get('latency_p95_s'), 3)} / "
                                             f"{_n(r.get('latency_p99_s'), 3)} s")
    if r.get("searchable_p99_bound_s") is not None:
        table.add_row("p99 indexed / searchable", f"{_n(r.get('index_latency_p99_s'), 2)} / ≤ {_n(r['searchable_p99_bound_s'], 2)} s")
    if r.get("ceiling_ratio") is not None:
        table.add_row("ceiling ratio", f"{r['ceiling_ratio']:.1%} (broker {r['broker_ratio']:.1%}, "
                                       f"COPY {r['copy_ratio']:.1%})")
    table.add_row("CPU s / 1000 alerts", f"pipeline {_n(r.get('cpu_pipeline_s_per_1000_alerts'), 3)}, workers "
                                         f"{_n(r.get('cpu_workers_s_per_1000_alerts'), 3)}")
    table.add_row("backlog max", f"{_n(r['lag'].get('backlog_max_alerts'))} alerts")
    table.add_row("results", str(files["json"]))
    table.add_row("summary", str(files["md"]))
    console.print(table)


# ---------------------------------------------------------------------------------------------- plots


def _rates(samples: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    ts, vs = [], []
    for a, b in zip(samples, samples[1:]):
        dt = b["t"] - a["t"]
        if dt > 0:
            ts.append(b["t"])
            vs.append((b[key] - a[key]) / dt)
    return ts, vs


def _moving_average(values: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_all(r: dict[str, Any], out: Path, stem: str) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = r.get("timeseries") or []
    files: dict[str, Path] = {}
    if len(samples) < 2:
        return files
    title = f"{r['scenario_detail']} — {r['config']['workers']} worker(s), {r['config']['partitions']} partitions"
    end = r["duration_s"]
    bpa = r["produced"]["bytes_per_alert"] or 1.0

    # throughput: 5-second moving averages (a 1 s rate of a batching pipeline is mostly noise), raw faint
    fig, ax = plt.subplots(figsize=(10, 4.5))
    tops = [r["target"]["alerts_s"] or 0.0]
    for key, label, style, color in (("produced_alerts", "produced", "-", "C0"),
                                     ("processed", "processed (dedup stage)", "-", "C1"),
                                     ("stored", "stored in Postgres", ":", "C2"), ("indexed", "indexed", ":", "C3")):
        ts, vs = _rates(samples, key)
        if not any(vs):
            continue
        smooth = _moving_average(vs, 5)
        if key == "processed":
            ax.plot(ts, vs, "-", color=color, alpha=0.2, linewidth=0.8)
        ax.plot(ts, smooth, style, color=color, label=f"{label} (5 s average)", linewidth=1.4)
        tops.append(max(smooth[5:] or smooth))  # not the first seconds: a closed loop starts with a burst
    ax.axhline(r["target"]["alerts_s"] or 0, color="grey", linestyle="--", linewidth=0.8,
               label=f"600 GB/day ({_n(r['target']['alerts_s'])} alerts/s)")
    ax.axvline(end, color="black", linestyle=":", linewidth=0.8, label="load stops")
    ax.set_xlabel("seconds since the load started")
    ax.set_ylabel("alerts/s")
    sec = ax.secondary_yaxis("right", functions=(lambda a: a * bpa / 1e6, lambda m: m * 1e6 / bpa))
    sec.set_ylabel("MB/s of raw payload")
    ax.set_ylim(0, max(tops) * 1.25)
    ax.set_title(f"Throughput: {title}", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", ncol=3)
    ax.grid(alpha=0.3)
    files["throughput"] = _save(fig, out / f"{stem}-throughput.png")

    # lag
    fig, (a1, a2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    ts = [s["t"] for s in samples]
    a1.plot(ts, [s["backlog"] for s in samples], label="backlog: produced − processed (alerts)")
    if any(s["index_lag"] is not None for s in samples):
        a1.plot(ts, [s["index_lag"] for s in samples], label="search indexer lag: stored − indexed (alerts)")
    a1.axvline(end, color="black", linestyle=":", linewidth=0.8)
    a1.set_ylabel("alerts")
    a1.set_ylim(bottom=0)
    a1.legend(fontsize=8)
    a1.grid(alpha=0.3)
    a1.set_title(f"Lag: {title}", fontsize=10)
    groups = sorted({g for s in samples for g in s["kafka_lag"]})
    for g in groups:
        pts = [(s["t"], s["kafka_lag"][g]) for s in samples if s["kafka_lag"].get(g) is not None]
        if pts:
            a2.plot(*zip(*pts), label=f"group {g}", linewidth=1)
    a2.axvline(end, color="black", linestyle=":", linewidth=0.8)
    a2.set_ylabel("records" + (" (lower bound)" if _engine(r, "kafka") == "tansu" else ""))
    a2.set_xlabel("seconds since the load started")
    a2.set_ylim(bottom=0)
    a2.set_title("Kafka consumer-group lag (end offset − committed"
                 + ("; Tansu under-reports end offsets)" if _engine(r, "kafka") == "tansu" else ")"), fontsize=9)
    a2.legend(fontsize=8)
    a2.grid(alpha=0.3)
    files["lag"] = _save(fig, out / f"{stem}-lag.png")

    # latency
    hist = r.get("latency_histogram")
    if hist:
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5))
        lo, hi, nb = hist["log10_from"], hist["log10_to"], hist["buckets"]
        width = (hi - lo) / nb
        edges, counts = [], []
        for b, n in sorted((int(k), v) for k, v in hist["counts"].items()):
            b = min(max(b, 1), nb)  # under/overflow into the end buckets
            edges.append(10 ** (lo + (b - 1) * width))
            counts.append(n)
        a1.bar(edges, counts, width=[e * (10 ** width - 1) for e in edges], align="edge", alpha=0.7)
        a1.set_xscale("log")
        for q, color in (("p50", "green"), ("p95", "orange"), ("p99", "red")):
            v = r.get(f"latency_{q}_s")
            if v:
                a1.axvline(v, color=color, linestyle="--", label=f"{q} {v:.3f} s")
        a1.axvline(2.0, color="black", linestyle=":", label="target p99 2 s")
        a1.set_xlabel("produce → Postgres commit (s)")
        a1.set_ylabel("stored alerts")
        a1.legend(fontsize=8)
        a1.set_title("Latency distribution", fontsize=10)
        series = r.get("latency_timeseries") or []
        if series:
            a2.plot([p["s"] for p in series], [p["p50_s"] for p in series], label="p50", linewidth=1)
            a2.plot([p["s"] for p in series], [p["p99_s"] for p in series], label="p99", linewidth=1)
            a2.axvline(end, color="black", linestyle=":", linewidth=0.8)
            a2.set_yscale("log")
            a2.set_xlabel("produce time, seconds since the load started")
            a2.set_ylabel("latency (s)")
            a2.legend(fontsize=8)
            a2.grid(alpha=0.3)
            a2.set_title("Latency by produce second", fontsize=10)
        fig.suptitle(title, fontsize=9)
        files["latency"] = _save(fig, out / f"{stem}-latency.png")

    # cpu
    names = list(samples[0]["cpu_s"])
    fig, ax = plt.subplots(figsize=(10, 4))
    ts = [b["t"] for b in samples[1:]]
    stacks = []
    for name in names:
        stacks.append([max(0.0, (b["cpu_s"][name] - a["cpu_s"][name]) / max(b["t"] - a["t"], 1e-9))
                       for a, b in zip(samples, samples[1:])])
    if all("machine_cpu_s" in x for x in samples):  # everything else on the machine (a shared box)
        names.append("other processes")
        stacks.append([max(0.0, (b["machine_cpu_s"] - a["machine_cpu_s"]) / max(b["t"] - a["t"], 1e-9) - sum(col))
                       for a, b, col in zip(samples, samples[1:], zip(*stacks))])
    if all("stolen_cpu_s" in x for x in samples):  # a VM: time the host gave to other guests
        names.append("stolen by the hypervisor")
        stacks.append([max(0.0, (b["stolen_cpu_s"] - a["stolen_cpu_s"]) / max(b["t"] - a["t"], 1e-9))
                       for a, b in zip(samples, samples[1:])])
    ax.stackplot(ts, *stacks, labels=names, alpha=0.8)
    ax.axhline(r["machine"]["cpus"], color="black", linestyle="--", linewidth=0.8, label="all cores")
    ax.axvline(end, color="black", linestyle=":", linewidth=0.8)
    ax.set_ylabel("cores")
    ax.set_xlabel("seconds since the load started")
    ax.set_title(f"CPU by process: {title}", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)
    files["cpu"] = _save(fig, out / f"{stem}-cpu.png")
    return files


def _save(fig, path: Path) -> Path:  # noqa: ANN001
    import matplotlib.pyplot as plt

    from PIL import Image  # matplotlib's own dependency

    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    with Image.open(path) as img:  # a 64-colour palette: a quarter of the size, same look for line plots
        small = img.convert("RGB").quantize(colors=64)
    small.save(path, optimize=True)
    return path


# ---------------------------------------------------------------------------------------------- profiles

# Functions whose inclusive share is reported (name, file): a sample counts when the function is on its stack.
INCLUSIVE = (
    ("process_records", "pipeline/normalizer.py"), ("pack", "pipeline/normalizer.py"), ("unpack", "pipeline/normalizer.py"),
    ("create_app.<locals>.emit", "streams/app.py"), ("plan_batch", "pipeline/deduplicator.py"),
    ("PostgresSink.write", "sinks/postgres.py"), ("alert_rows", "sinks/postgres.py"),
    ("last_alert_rows", "sinks/postgres.py"), ("create_app.<locals>.hand_to_indexer", "streams/app.py"),
    ("DedupStore.put", "tables/dedup_state.py"), ("DedupStore.get", "tables/dedup_state.py"),
    ("SearchSink.write", "sinks/search.py"), ("Stream.take_events", "faust/streams.py"),
    ("create_app.<locals>.metrics", "streams/app.py"),
)
PROJECT = ("core", "config", "schemas", "tables", "pipeline", "sinks", "query", "streams", "gateway", "benchmarks", "cli")
PACKAGES = {
    "faust": "faust / mode", "mode": "faust / mode", "aiokafka": "aiokafka", "asyncpg": "asyncpg",
    "elasticsearch": "search client (elasticsearch, elastic_transport, aiohttp)",
    "elastic_transport": "search client (elasticsearch, elastic_transport, aiohttp)",
    "aiohttp": "search client (elasticsearch, elastic_transport, aiohttp)", "rocksdict": "rocksdict",
    "prometheus_client": "prometheus_client", "asyncio": "asyncio", "selectors.py": "asyncio",
    "logging": "logging", "json": "json (stdlib)", "msgspec": "msgspec", "orjson": "orjson",
}


def _parse_frame(frame: str) -> tuple[str, str]:
    """py-spy raw frame `name (file)` or `name (file:line)` -> (name, file)."""
    if frame.endswith(")") and " (" in frame:
        name, _, rest = frame.rpartition(" (")
        return name, rest[:-1].rsplit(":", 1)[0] if rest[:-1].rsplit(":", 1)[-1].isdigit() else rest[:-1]
    return frame, ""


def _short(file: str) -> str:
    return file.split("site-packages/")[-1].split("/work/main/")[-1]


def _component(file: str) -> str:
    top = _short(file).split("/", 1)[0]
    if top in PROJECT:
        return f"alertstream: {top}/"
    return PACKAGES.get(top, "python stdlib / other" if file else "native / unknown")


def _task(parsed: list[tuple[str, str]]) -> str:
    """What a sample was doing, by the event-loop callback it ran under: the first alertstream frame
    below the innermost `Handle._run` (the task's own coroutine, unwrapping Faust's task/agent runners),
    else that callback's first frame."""
    runs = [i for i, (n, _) in enumerate(parsed) if n == "Handle._run"]
    if not runs:
        if any(f.startswith("threading") for _, f in parsed[:3]):
            return "other threads (Faust's consumer thread, executors)"
        if parsed and parsed[-1][0].endswith("select"):
            return "event loop: waiting in select"
        return "event loop internals"
    rest = parsed[runs[-1] + 1:]
    if not rest:
        return "event loop internals"
    for name, file in rest:
        if _short(file).split("/", 1)[0] in PROJECT:
            return f"{name.replace('create_app.<locals>.', '')} ({_short(file)})"
    name, file = rest[0]
    return f"{name} ({_component(file)})"


def read_collapsed(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def profile_summary(path: Path, rate: int, duration_s: float) -> dict[str, Any]:
    """Shares of busy samples: by task, by selected function (inclusive), by package and by function (self)."""
    stacks = read_collapsed(path)
    total = sum(n for _, n in stacks) or 1
    tasks: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    components: Counter[str] = Counter()
    self_time: Counter[str] = Counter()
    for frames, n in stacks:
        parsed = [_parse_frame(f) for f in frames]
        name, file = parsed[-1]
        self_time[f"{name} ({_short(file)})"] += n
        components[_component(file)] += n
        tasks[_task(parsed)] += n
        on_stack = set(parsed)
        for fn, file_ in INCLUSIVE:
            if (fn, file_) in on_stack or any(pn == fn and pf.endswith(file_) for pn, pf in on_stack):
                inclusive[f"{fn.replace('create_app.<locals>.', '')} ({file_})"] += n

    def shares(c: Counter[str], top: int | None = None) -> dict[str, float]:
        return {k: round(v / total, 4) for k, v in c.most_common(top)}

    return {
        "samples": total,
        "rate": rate,
        "busy_fraction": round(total / (rate * duration_s), 3) if duration_s else None,
        "tasks": shares(tasks, TOP_N),
        "inclusive": shares(inclusive),
        "components": shares(components),
        "top_self": shares(self_time, TOP_N),
    }


def plot_profile(prof: dict[str, Any], png: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 5))
    for ax, key, sub in ((a1, "tasks", "by task (event-loop callback)"), (a2, "components", "by package (self time)")):
        items = list(prof[key].items())[:12][::-1]
        ax.barh([k for k, _ in items], [v * 100 for _, v in items])
        ax.set_xlabel("% of busy samples")
        ax.set_title(sub, fontsize=10)
        ax.tick_params(axis="y", labelsize=7)
    fig.suptitle(title, fontsize=10)
    return _save(fig, png)


def render_flamegraph(collapsed: Path, svg: Path, title: str = "", width: int = 1400, row: int = 16) -> Path:
    """A static flamegraph (root at the bottom) of py-spy's collapsed stacks, hover for names and shares."""
    tree: dict[str, Any] = {"n": 0, "c": {}}
    for frames, n in read_collapsed(collapsed):
        node = tree
        node["n"] += n
        for f in frames:
            node = node["c"].setdefault(f, {"n": 0, "c": {}})
            node["n"] += n
    total = tree["n"] or 1
    rects: list[str] = []
    depth_max = [0]
    min_px = 0.5

    def walk(node: dict[str, Any], x: float, depth: int) -> None:
        for name, child in sorted(node["c"].items(), key=lambda kv: -kv[1]["n"]):
            w = child["n"] / total * width
            if w < min_px:
                continue
            depth_max[0] = max(depth_max[0], depth)
            fn, file = _parse_frame(name)
            hue = zlib.crc32(_component(file).encode()) % 60
            label = html.escape(f"{fn} ({file.split('site-packages/')[-1]}) {child['n'] / total:.1%}")
            text = html.escape(fn[: int(w / 7)]) if w > 30 else ""
            rects.append(f'<g><title>{label}</title><rect x="{x:.1f}" y="{{Y{depth}}}" width="{w:.1f}" '
                         f'height="{row - 1}" fill="hsl({hue + 10},80%,60%)"/>'
                         f'<text x="{x + 3:.1f}" y="{{T{depth}}}" font-size="11">{text}</text></g>')
            walk(child, x, depth + 1)
            x += w

    walk(tree, 0.0, 0)
    height = (depth_max[0] + 3) * row
    body = "\n".join(rects)
    for d in range(depth_max[0] + 1):
        y = height - (d + 2) * row
        body = body.replace(f"{{Y{d}}}", str(y)).replace(f"{{T{d}}}", str(y + row - 4))
    svg.write_text(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="monospace">\n'
        f'<text x="4" y="14" font-size="12">{html.escape(title)} — {total:,} samples; hover a frame</text>\n'
        f"{body}\n</svg>\n")
    return svg


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(__doc__)
        return 2
    for p in argv:
        files = rerender(Path(p))
        print("\n".join(str(f) for f in files.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
