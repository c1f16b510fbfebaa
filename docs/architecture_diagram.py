"""Render docs/img/architecture.png: the data flow of docs/architecture.md, drawn with matplotlib.

    .venv/bin/python docs/architecture_diagram.py [OUT.png]

Topic, group and index names come from the settings' defaults (the same source `alertstream
topology` prints from), so a renamed topic shows up in the picture on the next render.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from config.settings import Settings  # noqa: E402

OUT = Path(__file__).resolve().parent / "img" / "architecture.png"
COLORS = {"ext": "#e8e8e8", "topic": "#fde9b8", "stage": "#cfe3f7", "store": "#d5efd0", "bad": "#f6d0cc"}


def _box(ax, xy: tuple[float, float], text: str, kind: str, w: float = 2.3, h: float = 0.9) -> tuple[float, float, float, float]:  # noqa: ANN001
    x, y = xy
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.05,rounding_size=0.12",
                                fc=COLORS[kind], ec="#444", lw=1))
    ax.text(x, y, text, ha="center", va="center", fontsize=8.5, wrap=True)
    return x, y, w, h


def _arrow(ax, a, b, label: str = "", style: str = "-|>", color: str = "#333") -> None:  # noqa: ANN001
    (ax0, ay0, aw, ah), (bx0, by0, bw, bh) = a, b
    # leave each box through the side facing the other
    if abs(bx0 - ax0) > abs(by0 - ay0):
        start = (ax0 + aw / 2 * (1 if bx0 > ax0 else -1), ay0)
        end = (bx0 - bw / 2 * (1 if bx0 > ax0 else -1), by0)
    else:
        start = (ax0, ay0 + ah / 2 * (1 if by0 > ay0 else -1))
        end = (bx0, by0 - bh / 2 * (1 if by0 > ay0 else -1))
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle=style, mutation_scale=11, color=color, lw=1.1))
    if label:
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + 0.14, label, ha="center", va="bottom",
                fontsize=7, color="#333", style="italic")


def render(out: Path = OUT, settings: Settings | None = None) -> Path:
    s = settings or Settings(_env_file=None)
    fig, ax = plt.subplots(figsize=(14, 7.2), dpi=110)
    ax.set_xlim(-0.3, 17.5)
    ax.set_ylim(0.2, 8.6)
    ax.axis("off")

    def band(y: float, x0: float, x1: float, title: str, color: str) -> None:
        ax.add_patch(FancyBboxPatch((x0, y - 0.95), x1 - x0, 1.9, boxstyle="round,pad=0.05,rounding_size=0.2",
                                    fc="none", ec=color, lw=1.2, ls="--"))
        ax.text(x0 + 0.1, y + 0.78, title, ha="left", fontsize=8.5, color=color)

    band(7.3, 2.3, 17.3, "Kafka (topics partitioned alike; partitions = the ceiling on workers)", "#a07a10")
    band(4.3, 2.3, 14.7, f"alertstream worker × N (pods or processes): consumer groups {s.app_id}, {s.app_id}-normalize, {s.app_id}-index", "#335f9a")

    producers = _box(ax, (1.0, 7.3), "monitoring tools\nPrometheus, Grafana,\nDatadog, Sentry, ...", "ext", w=2.3, h=1.2)
    gateway = _box(ax, (1.0, 4.3), "gateway\nHTTP webhooks\nauth, rate limits", "stage", w=2.3, h=1.1)
    alerts = _box(ax, (3.9, 7.3), f"{s.topic_alerts}\n{s.topic_critical}", "topic", w=2.6)
    normalized = _box(ax, (7.4, 7.3), f"{s.topic_normalized}\n{s.topic_normalized_critical}", "topic", w=3.0)
    changelog = _box(ax, (10.8, 7.3), f"{s.app_id}-dedup-state-\nchangelog", "topic", w=2.6)
    stored = _box(ax, (13.4, 7.3), s.topic_stored, "topic", w=2.0)
    dlq = _box(ax, (15.9, 7.3), f"{s.topic_dlq}\nreason + original bytes", "bad", w=2.4)

    normalize = _box(ax, (3.9, 4.3), "normalize\ndecode, canonical alert,\nfingerprint (batch consumer)", "stage", w=2.8, h=1.1)
    dedup = _box(ax, (7.4, 4.3), "deduplicate (Faust agent)\nnew / changed / duplicate\nby (tenant, fingerprint)", "stage", w=3.0, h=1.1)
    rocks = _box(ax, (10.8, 4.3), "RocksDB\ndedup-state table\n(persistent volume)", "store", w=2.6, h=1.1)
    index = _box(ax, (13.4, 4.3), "index\n(batch consumer)", "stage", w=2.0, h=1.1)
    retry = _box(ax, (15.9, 4.3), f"{s.topic_retry_prefix}1..{len(s.retry_delays_s)}\n{', '.join(f'{d:g}' for d in s.retry_delays_s)} s, then DLQ", "bad", w=2.4, h=1.1)

    postgres = _box(ax, (7.4, 1.3), "PostgreSQL\nalert, last_alert, alert_raw", "store", w=3.0, h=1.0)
    search = _box(ax, (13.4, 1.3), f"Elasticsearch / OpenSearch\n{s.search_index}", "store", w=3.0, h=1.0)
    _box(ax, (2.6, 1.3), "Prometheus scrapes /metrics\nprobes /healthz, /readyz\nGrafana, KEDA (lag)", "ext", w=3.2, h=1.0)

    _arrow(ax, producers, alerts)
    _arrow(ax, producers, gateway, "webhooks")
    _arrow(ax, gateway, alerts)
    _arrow(ax, alerts, normalize)
    _arrow(ax, normalize, normalized, "packed")
    _arrow(ax, normalize, dlq, "invalid records", color="#a33")
    _arrow(ax, normalized, dedup)
    _arrow(ax, dedup, postgres, "1. rows")
    _arrow(ax, dedup, rocks)
    ax.text(9.2, 3.95, "2. state", fontsize=7, style="italic", ha="center")
    _arrow(ax, rocks, changelog)
    _arrow(ax, dedup, stored)
    _arrow(ax, stored, index)
    _arrow(ax, index, search, "_bulk")
    _arrow(ax, index, retry, color="#a33")
    ax.text(14.65, 4.85, "throttled", fontsize=7, color="#a33", style="italic", ha="center")

    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


if __name__ == "__main__":
    print(render(Path(sys.argv[1]) if len(sys.argv) > 1 else OUT))
