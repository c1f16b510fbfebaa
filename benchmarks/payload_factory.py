"""Realistic provider webhook payloads for load tests: pure, seeded, fast.

Each provider has one payload template shaped like its example in
`schemas/examples/` (Alertmanager, Grafana, Datadog, PagerDuty v3, CloudWatch
via SNS, Sentry, Zabbix, Keep's generic AlertDto). A template is serialized
once, with orjson, to JSON with `@@SLOT@@` sentinels and split into literal
segments, so producing a payload is one join of segments and slot values, not
a JSON encode of a dict.

An identity is an index: its slot values (names, labels, ids) derive from the
index and the seed on each render, and its state is a few integers (status,
content counter, padding). The current payload of each identity is kept while
a memory budget lasts, so a full duplicate costs nothing; past the budget it
is re-rendered to the same bytes.

What a record is (`GeneratedRecord.kind`):
- `new`: the first payload of an identity (for Alertmanager/Grafana, the first
  webhook of an alert group, all alerts firing);
- `full_dup`: the exact bytes of the identity's previous payload, re-sent;
- `partial_dup`: same identity, content changed (a metric value, a counter in
  the description, the event id and time) and the status unchanged;
- `flap`: same identity, only the status flipped (firing <-> resolved).

Cardinality is the number of distinct alert identities (fingerprints) per
provider. Alertmanager and Grafana send groups of 1..`alerts_per_webhook`
alerts; a group is one identity on the wire (one Kafka key), its alerts stay
in it for good, and dup/flap records change one alert of the group. Once a
provider has emitted all its identities, `new` draws are re-drawn among the
duplicate kinds by their weights (a bounded pool cannot produce new
identities). Sentry's webhook plugin has no resolved state, so a flap drawn
for Sentry becomes a partial duplicate. `GeneratedRecord.kind` always tells
what was actually produced.

Sizes: each identity draws one target payload size from a log-normal
distribution with mean `mean_size_bytes` and pads a description-like field up
to it; the padding is kept for the identity's life, so a partial duplicate
changes only what it claims to change. A payload whose bare rendering is
already larger than its target is left unpadded (multi-alert webhooks often
are), so the achieved mean can exceed the requested one. With `size_per_alert`
the target is per alert: an identity of N alerts draws one size and is padded
to N times it.

Group sizes: uniform in `alerts_per_webhook_min..alerts_per_webhook` (1..N by
default; min = max for exactly N), except the last group of a pool, which gets
what is left of its cardinality.

Lean payloads (`lean=True`): Alertmanager and Keep have a second, lean
template (a few labels, one annotation, no runbook or group-wide extras), with
the same identity, content and status fields; the other providers have none and
send their full payload.

Named profiles: `LOAD_PROFILES` and `load_profile(name, seed=, tenants=,
**overrides)`; `default` is the generator's defaults (what `benchmarks.loadgen`
and `alertstream bench` send without `--load`), `heavy` the heavy mix.
"""

from __future__ import annotations

import bisect
import functools
import itertools
import hashlib
import math
import operator
import random
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Mapping

import orjson

Kind = Literal["new", "full_dup", "partial_dup", "flap"]
KINDS: tuple[Kind, ...] = ("new", "full_dup", "partial_dup", "flap")
PROVIDERS: tuple[str, ...] = ("keep", "prometheus", "grafana", "datadog", "pagerduty", "cloudwatch", "sentry", "zabbix")
MULTI_ALERT_PROVIDERS = frozenset({"prometheus", "grafana"})

# Kafka's default max.message.bytes is ~1 MB: a size draw from the far tail must not make unproducible records.
MAX_PAYLOAD_BYTES = 900_000
DEFAULT_MIX: dict[str, float] = {"prometheus": 4, "grafana": 2, "datadog": 1, "keep": 1, "pagerduty": 0.5,
                                 "cloudwatch": 0.5, "sentry": 0.5, "zabbix": 0.5}
_BASE_EPOCH = 1_736_935_500  # 2025-01-15T10:05:00Z, the examples' time: payload times stay deterministic


# ---------------------------------------------------------------------------------------------- public API


@dataclass
class LoadProfile:
    mix: Mapping[str, float]  # provider -> weight (need not sum to 1)
    cardinality: int | Mapping[str, int]  # distinct alert identities per provider
    full_dup_ratio: float
    partial_dup_ratio: float
    flap_ratio: float
    alerts_per_webhook: int  # Alertmanager/Grafana: alerts_per_webhook_min..N alerts per webhook, uniform
    mean_size_bytes: int  # per record (per alert with size_per_alert)
    seed: int
    tenants: list[str] = field(default_factory=lambda: ["default"])
    size_sigma: float = 0.3  # log-normal shape: 0 gives every identity exactly the mean
    alerts_per_webhook_min: int = 1  # = alerts_per_webhook: exactly that many alerts per webhook
    size_per_alert: bool = False  # mean_size_bytes is per alert: a webhook of N alerts targets N x the draw
    lean: bool = False  # Alertmanager and Keep send their lean payloads (the other providers have none)

    def __post_init__(self) -> None:
        unknown = set(self.mix) - set(PROVIDERS)
        if unknown:
            raise ValueError(f"unknown providers in mix: {sorted(unknown)}; known: {', '.join(PROVIDERS)}")
        if not any(w > 0 for w in self.mix.values()) or any(w < 0 for w in self.mix.values()):
            raise ValueError("mix needs non-negative weights and at least one positive weight")
        ratios = (self.full_dup_ratio, self.partial_dup_ratio, self.flap_ratio)
        if any(r < 0 for r in ratios) or sum(ratios) > 1 + 1e-9:
            raise ValueError("dup/flap ratios must be >= 0 and sum to at most 1")
        if self.alerts_per_webhook < 1 or self.mean_size_bytes < 1 or not self.tenants:
            raise ValueError("alerts_per_webhook and mean_size_bytes must be >= 1, tenants non-empty")
        if not 1 <= self.alerts_per_webhook_min <= self.alerts_per_webhook:
            raise ValueError("alerts_per_webhook_min must be between 1 and alerts_per_webhook")
        if any(self.cardinality_of(p) < 1 for p, w in self.mix.items() if w > 0):
            raise ValueError("cardinality must be >= 1 for every provider in the mix")

    def cardinality_of(self, provider: str) -> int:
        if isinstance(self.cardinality, int):
            return self.cardinality
        return int(self.cardinality.get(provider, 0))


# Named profiles: LoadProfile fields but seed and tenants (a run's own). `load_profile` builds one.
LOAD_PROFILES: dict[str, dict[str, Any]] = {
    # The generator's defaults: every provider, 1..5 alerts per Alertmanager/Grafana webhook, a 1.5 KB target per
    # record (~1.3 KB per alert as generated), 30% exact re-sends.
    "default": {"mix": DEFAULT_MIX, "cardinality": 10_000, "full_dup_ratio": 0.3, "partial_dup_ratio": 0.2,
                "flap_ratio": 0.05, "alerts_per_webhook": 5, "mean_size_bytes": 1500, "size_sigma": 0.3},
    # The heavy mix: half the records Alertmanager webhooks of exactly 10 lean alerts, half single lean Keep
    # alerts, ~0.5 KB per alert, 70% exact re-sends; changes and flaps as the default, new identities the rest
    # (5%). 10,000 webhook identities per provider: 10,000 groups of 10 alerts, 10,000 Keep alerts.
    "heavy": {"mix": {"prometheus": 1, "keep": 1}, "cardinality": {"prometheus": 100_000, "keep": 10_000},
              "full_dup_ratio": 0.7, "partial_dup_ratio": 0.2, "flap_ratio": 0.05, "alerts_per_webhook": 10,
              "alerts_per_webhook_min": 10, "mean_size_bytes": 500, "size_per_alert": True, "lean": True,
              "size_sigma": 0.3},
}


def load_profile(name: str = "default", *, seed: int = 1, tenants: list[str] | None = None,
                 **overrides: Any) -> LoadProfile:
    """The named profile, with `overrides` (LoadProfile fields) replacing its values."""
    try:
        base = LOAD_PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown load profile {name!r}; known: {', '.join(LOAD_PROFILES)}") from None
    fields: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}  # copies
    fields.update(overrides)
    return LoadProfile(seed=seed, tenants=list(tenants) if tenants else ["default"], **fields)


@dataclass(frozen=True, slots=True)
class GeneratedRecord:
    provider: str
    tenant: str
    key: bytes
    value: bytes
    alerts: int
    kind: Kind


# ---------------------------------------------------------------------------------------------- templates

_SENTINEL = re.compile(r'"@@RAW:(\w+)@@"|@@(\w+)@@')


class _Template:
    """JSON with named holes: literal segments around slot names.

    `"@@RAW:X@@"` (with its quotes) becomes raw JSON (a number, a list of
    alerts); `@@X@@` elsewhere is text inside a JSON string. Slot values must
    not need JSON escaping (no quote, backslash or control character): they
    are all generated here from safe alphabets.

    Rendering interleaves segments and values with list slicing and one join,
    all in C: ~1 us for a 2 KB payload, where `%` or `str.format` rescan every
    literal character (5-10x slower).
    """

    __slots__ = ("slots", "_skeleton", "_get")

    def __init__(self, segs: list[str], slots: list[str]) -> None:
        self.slots = tuple(slots)
        self._skeleton = [""] * (2 * len(slots) + 1)
        self._skeleton[::2] = segs
        if len(slots) == 1:
            self._get: Callable[[Mapping[str, str]], tuple[str, ...]] = lambda v, _s=slots[0]: (v[_s],)
        else:
            self._get = operator.itemgetter(*slots) if slots else (lambda v: ())

    @classmethod
    def compile(cls, doc: Any) -> _Template:
        text = orjson.dumps(doc).decode()
        segs, slots, pos = [], [], 0
        for m in _SENTINEL.finditer(text):
            segs.append(text[pos:m.start()])
            slots.append(m.group(1) or m.group(2))
            pos = m.end()
        segs.append(text[pos:])
        return cls(segs, slots)

    def render(self, values: Mapping[str, str]) -> str:
        out = self._skeleton.copy()
        out[1::2] = self._get(values)
        return "".join(out)


# ---------------------------------------------------------------------------------------------- data pools

_ALERTNAMES = ("KubePodCrashLooping", "KubePodNotReady", "NodeFilesystemSpaceFillingUp", "TargetDown",
               "KubeDeploymentReplicasMismatch", "CPUThrottlingHigh", "KubeContainerWaiting",
               "NodeMemoryHighUtilization")
_NAMESPACES = ("payments", "checkout", "orders", "search", "auth", "inventory", "billing", "shipping")
_SERVICES = ("checkout-api", "payments-api", "order-processor", "search-indexer", "auth-gateway", "inventory-sync",
             "billing-worker", "shipping-router")
_SEVERITIES = ("critical", "warning", "warning", "info")
_KEEP_SEVERITIES = ("critical", "high", "warning", "info", "low")
_GRAFANA_RULES = ("High HTTP 5xx ratio", "Latency p99 above SLO", "Error budget burn rate", "Queue depth growing")
_DD_MONITORS = ("High CPU on {svc} hosts", "Disk usage high on {svc}", "Memory pressure on {svc}", "{svc} p95 latency")
_ZABBIX_TRIGGERS = ("High CPU utilization (over 90% for 5m)", "Free disk space is less than 10%",
                    "Zabbix agent is not available", "High memory utilization (over 90% for 5m)")
_CW_METRICS = ("HTTPCode_Target_5XX_Count", "TargetResponseTime", "CPUUtilization", "UnHealthyHostCount")
_SENTRY_ERRORS = (("PaymentGatewayTimeout", "upstream gateway did not respond within 10s"),
                  ("KeyError", "'customer_id' missing from session"),
                  ("IntegrityError", "duplicate key value violates unique constraint orders_pkey"),
                  ("ConnectionResetError", "connection reset by peer while reading response"))
_PAD_WORDS = ("observed", "threshold", "window", "replica", "latency", "upstream", "retry", "budget", "queue", "node",
              "evaluation", "datapoint", "sustained", "capacity", "degraded", "recovered", "partition", "shard",
              "request", "timeout", "the", "for", "over", "since", "last", "minutes", "cluster", "region")


def _pad_source() -> str:
    """~128 KB of word-like ASCII, fixed (no seed): padding that compresses like prose, not like zeros."""
    state, words, length = 12345, [], 0
    while length < 131_072:  # joined length so far (a running total: summing each time was quadratic)
        state = (state * 1103515245 + 12345) & 0x7FFFFFFF
        words.append(_PAD_WORDS[state % len(_PAD_WORDS)])
        length += len(words[-1]) + 1
    return " ".join(words)


_PAD = _pad_source()


_PAD2 = _PAD * 2  # any slice shorter than _PAD, from any offset inside it, without building a string first


def _padding(length: int, offset: int) -> str:
    """`length` characters of prose, starting with a space so it reads as a new sentence."""
    if length <= 0:
        return ""
    offset %= len(_PAD)
    if length <= len(_PAD):
        return " " + _PAD2[offset:offset + length - 1]
    return " " + (_PAD * (length // len(_PAD) + 2))[offset:offset + length - 1]


# ---------------------------------------------------------------------------------------------- time and content


_TWO = tuple(f"{n:02d}" for n in range(100))
_MS = tuple(f"{n:03d}" for n in range(1000))


@functools.lru_cache(maxsize=1024)
def _date(days: int) -> tuple[str, str]:
    """ISO and Zabbix dates of a day since the epoch: gmtime + formatting cost ~4 us, a cache hit ~0.1."""
    t = time.gmtime(days * 86_400)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}", f"{t.tm_year:04d}.{t.tm_mon:02d}.{t.tm_mday:02d}"


def _clock(epoch_s: int) -> str:
    rem = epoch_s % 86_400
    return _TWO[rem // 3600] + ":" + _TWO[rem // 60 % 60] + ":" + _TWO[rem % 60]


def _iso(epoch_s: int, ms: int) -> str:
    return _date(epoch_s // 86_400)[0] + "T" + _clock(epoch_s) + "." + _MS[ms] + "Z"


@dataclass(slots=True)
class _AlertState:
    """One alert identity: its index (statics derive from it) and what records change.

    Nothing rendered is kept here: statics are re-derived on each render, so a
    million identities cost ~100 MB, not the ~5 GB their payloads would.
    """

    index: int  # within its provider; with the seed it derives names, labels and ids
    epoch: int  # the identity's first-seen time; content times advance from it
    pad_len: int = -1  # fixed per identity once sized (-1: not yet): a re-send changes only what its kind says
    pad_off: int = 0
    firing: bool = True
    counter: int = 0  # bumped by partial duplicates: drives values, event ids and times

    def now(self) -> int:
        return self.epoch + self.counter * 60

    def value(self) -> str:
        return f"{50 + (self.counter * 37 + self.epoch) % 500 / 10:.1f}"


# ---------------------------------------------------------------------------------------------- provider specs

StaticFn = Callable[[int, str, dict[str, str]], dict[str, str]]
DynamicFn = Callable[[_AlertState], dict[str, str]]


@dataclass(frozen=True)
class ProviderSpec:
    """How one provider's payload is built, and which fields mean what.

    `identity_fields`/`content_fields`/`status_fields` are dotted paths into
    the payload, for the reader and for tests; the slots do the work.
    """

    name: str
    payload: _Template  # the whole payload, or the envelope around `alert` items
    alert: _Template | None
    static: StaticFn  # (identity index, hex id, group statics) -> identity slot values, incl. "@key"
    dynamic: DynamicFn  # content slot values from the alert's counter
    status: tuple[dict[str, str], dict[str, str]]  # slot values when (resolved, firing)
    identity_fields: tuple[str, ...]
    content_fields: tuple[str, ...]
    status_fields: tuple[str, ...]
    can_flap: bool = True
    group_static: Callable[[int, str], dict[str, str]] | None = None  # multi-alert: per group
    group_status: Callable[[int, int], dict[str, str]] | None = None  # multi-alert: (firing, total) -> envelope


def _both(firing: dict[str, str], resolved: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    return (resolved, firing)


# --- Keep's generic AlertDto

_KEEP_DOC = {
    "id": "@@UUID@@", "name": "@@NAME@@", "status": "@@STATUS@@", "severity": "@@SEV@@", "lastReceived": "@@TS@@",
    "environment": "production", "service": "@@SVC@@", "source": ["legacy-monitor"],
    "message": "Consumer group @@SVC@@ lag is @@VAL@@ messages on topic @@TOPIC@@",
    "description": "Lag has been above 10,000 messages for 10 minutes; consumers may be stuck or under-provisioned (check @@N@@).@@PAD@@",
    "description_format": "markdown", "url": "https://legacy-monitor.example.com/checks/@@FP@@",
    "imageUrl": "https://legacy-monitor.example.com/checks/@@FP@@/graph.png",
    "labels": {"topic": "@@TOPIC@@", "consumer_group": "@@SVC@@", "cluster": "kafka-prod-1", "region": "eu-west-1",
               "team": "fulfilment"},
    "fingerprint": "@@FP@@", "assignee": None, "note": None, "dismissed": False, "dismissUntil": None,
    "lag": "@@RAW:VALNUM@@", "threshold": 10000,
}


def _keep_static(i: int, h: str, _g: dict[str, str]) -> dict[str, str]:
    svc, topic = _SERVICES[i % 8], f"orders.v{i % 5}"
    fp = f"{svc}:{topic}:lag-{h[:12]}"
    return {"@key": fp, "UUID": f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:32]}", "FP": fp,
            "NAME": f"Order queue lag above threshold on {topic}", "SVC": svc, "TOPIC": topic,
            "SEV": _KEEP_SEVERITIES[i % 5]}


def _keep_dynamic(a: _AlertState) -> dict[str, str]:
    v = a.value()
    return {"N": str(a.counter), "VAL": v, "VALNUM": v, "TS": _iso(a.now(), a.counter % 1000)}


# Lean: what a small in-house script posts, the fields Keep's docs show and little else.
_KEEP_LEAN_DOC = {
    "id": "@@UUID@@", "name": "@@NAME@@", "status": "@@STATUS@@", "severity": "@@SEV@@", "lastReceived": "@@TS@@",
    "service": "@@SVC@@", "source": ["legacy-monitor"], "message": "@@SVC@@ lag is @@VAL@@ on @@TOPIC@@",
    "description": "Lag above 10,000 messages (check @@N@@).@@PAD@@", "labels": {"topic": "@@TOPIC@@"},
    "fingerprint": "@@FP@@",
}


# --- Prometheus Alertmanager (webhook v4, many alerts per group)

_AM_ENVELOPE = {
    "version": "4",
    "groupKey": "{}/{severity=~\"critical|warning\"}:{alertname=\"@@ALERTNAME@@\", namespace=\"@@NS@@\", group=\"@@GID@@\"}",
    "truncatedAlerts": 0, "status": "@@GSTATUS@@", "receiver": "keep",
    "groupLabels": {"alertname": "@@ALERTNAME@@", "namespace": "@@NS@@"},
    "commonLabels": {"alertname": "@@ALERTNAME@@", "cluster": "prod-eu-west-1", "job": "kube-state-metrics",
                     "namespace": "@@NS@@", "prometheus": "monitoring/kube-prometheus-stack-prometheus",
                     "severity": "@@SEV@@"},
    "commonAnnotations": {"runbook_url": "https://runbooks.prometheus-operator.dev/runbooks/kubernetes/@@ALERTNAME@@",
                          "summary": "@@ALERTNAME@@ in @@NS@@"},
    "externalURL": "http://alertmanager.monitoring.svc:9093",
    "alerts": "@@RAW:ALERTS@@",
}
_AM_ALERT = {
    "status": "@@STATUS@@",
    "labels": {"alertname": "@@ALERTNAME@@", "cluster": "prod-eu-west-1", "container": "@@SVC@@", "endpoint": "http",
               "instance": "@@INSTANCE@@", "job": "kube-state-metrics", "namespace": "@@NS@@", "pod": "@@POD@@",
               "prometheus": "monitoring/kube-prometheus-stack-prometheus", "service": "@@SVC@@",
               "severity": "@@SEV@@", "uid": "@@UID@@"},
    "annotations": {"description": "Pod @@NS@@/@@POD@@ (@@SVC@@) restarted @@N@@ times, last value @@VAL@@.@@PAD@@",
                    "runbook_url": "https://runbooks.prometheus-operator.dev/runbooks/kubernetes/@@ALERTNAME@@",
                    "summary": "@@ALERTNAME@@ on @@POD@@"},
    "startsAt": "@@STARTS@@", "endsAt": "@@ENDS@@",
    "generatorURL": "http://prometheus.monitoring.svc:9090/graph?g0.expr=kube_pod_container_status_waiting_reason&g0.tab=1",
    "fingerprint": "@@FP@@",
}


def _am_group(g: int, h: str) -> dict[str, str]:
    return {"@key": f"am-{h[:16]}", "GID": h[:12], "ALERTNAME": _ALERTNAMES[g % 8], "NS": _NAMESPACES[(g // 8) % 8],
            "SEV": _SEVERITIES[g % 4]}


def _am_static(i: int, h: str, g: dict[str, str]) -> dict[str, str]:
    svc = _SERVICES[i % 8]
    return {**g, "SVC": svc, "INSTANCE": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:8080",
            "POD": f"{svc}-{h[:9]}-{h[9:14]}", "UID": f"{h[:8]}-{h[8:12]}-4{h[13:16]}-9{h[17:20]}-{h[20:32]}",
            "FP": h[:16], "STARTS": _iso(_BASE_EPOCH + i % 3600, i % 1000)}


_ZERO_TIME = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt of a firing alert; a resolved one ends 5 min in


def _am_dynamic(a: _AlertState) -> dict[str, str]:
    v = a.value()
    return {"N": str(a.counter), "VAL": v, "VALNUM": v, "ENDS": _ZERO_TIME if a.firing else _iso(a.epoch + 300, 0)}


def _am_group_status(firing: int, total: int) -> dict[str, str]:
    return {"GSTATUS": "firing" if firing else "resolved"}


# Lean: a plain Prometheus rule's alerts (four labels, one annotation), the envelope's group fields kept short.
_AM_LEAN_ENVELOPE = {
    "version": "4", "groupKey": "{}:{alertname=\"@@ALERTNAME@@\", group=\"@@GID@@\"}", "truncatedAlerts": 0,
    "status": "@@GSTATUS@@", "receiver": "keep", "groupLabels": {"alertname": "@@ALERTNAME@@"},
    "commonLabels": {"alertname": "@@ALERTNAME@@", "severity": "@@SEV@@"}, "commonAnnotations": {},
    "externalURL": "http://alertmanager:9093", "alerts": "@@RAW:ALERTS@@",
}
_AM_LEAN_ALERT = {
    "status": "@@STATUS@@",
    "labels": {"alertname": "@@ALERTNAME@@", "instance": "@@INSTANCE@@", "job": "@@SVC@@", "severity": "@@SEV@@"},
    "annotations": {"description": "@@SVC@@ restarted @@N@@ times, last value @@VAL@@.@@PAD@@"},
    "startsAt": "@@STARTS@@", "endsAt": "@@ENDS@@", "generatorURL": "http://prometheus:9090/graph?g0.expr=up",
    "fingerprint": "@@FP@@",
}


# --- Grafana unified alerting (many alerts per group; status is the group's)

_GF_ENVELOPE = {
    "receiver": "keep", "status": "@@GSTATUS@@", "orgId": 1, "alerts": "@@RAW:ALERTS@@",
    "groupLabels": {"alertname": "@@RULE@@", "grafana_folder": "@@FOLDER@@"},
    "commonLabels": {"alertname": "@@RULE@@", "grafana_folder": "@@FOLDER@@", "environment": "production",
                     "severity": "@@SEV@@"},
    "commonAnnotations": {"summary": "@@RULE@@ in @@FOLDER@@", "runbook_url": "https://runbooks.example.com/@@GID@@"},
    "externalURL": "https://grafana.example.com/", "version": "1",
    "groupKey": "{}/{__grafana_receiver__=\"keep\"}:{alertname=\"@@RULE@@\", grafana_folder=\"@@FOLDER@@\", group=\"@@GID@@\"}",
    "truncatedAlerts": 0, "title": "[@@GTITLE@@] @@RULE@@ @@FOLDER@@", "state": "@@GSTATE@@",
    "message": "**@@GWORD@@**\n\nLabels:\n - alertname = @@RULE@@\n - grafana_folder = @@FOLDER@@\nSource: https://grafana.example.com/alerting/grafana/@@GID@@/view?orgId=1\n",
}
_GF_ALERT = {
    "status": "@@STATUS@@",
    "labels": {"alertname": "@@RULE@@", "grafana_folder": "@@FOLDER@@", "service": "@@SVC@@",
               "environment": "production", "severity": "@@SEV@@", "region": "eu-west-1", "instance": "@@INSTANCE@@"},
    "annotations": {"description": "@@RULE@@ for @@SVC@@ is @@VAL@@ (threshold 5) over the last 5 minutes, check @@N@@.@@PAD@@",
                    "summary": "@@SVC@@ breached @@RULE@@", "runbook_url": "https://runbooks.example.com/@@GID@@"},
    "startsAt": "@@STARTS@@", "endsAt": "@@ENDS@@",
    "generatorURL": "https://grafana.example.com/alerting/grafana/@@GID@@/view?orgId=1",
    "fingerprint": "@@FP@@",
    "silenceURL": "https://grafana.example.com/alerting/silence/new?alertmanager=grafana&matcher=alertname%3D@@GID@@&orgId=1",
    "dashboardURL": "https://grafana.example.com/d/@@GID@@/overview?orgId=1",
    "panelURL": "https://grafana.example.com/d/@@GID@@/overview?orgId=1&viewPanel=4",
    "values": {"A": "@@RAW:VALNUM@@", "C": 1},
    "valueString": "[ var='A' labels={service=@@SVC@@} value=@@VAL@@ ], [ var='C' labels={service=@@SVC@@} value=1 ]",
    "orgId": 1,
}


def _gf_group(g: int, h: str) -> dict[str, str]:
    return {"@key": f"gf-{h[:16]}", "GID": h[:14], "RULE": _GRAFANA_RULES[g % 4],
            "FOLDER": _NAMESPACES[(g // 4) % 8].capitalize(), "SEV": _SEVERITIES[g % 4]}


def _gf_static(i: int, h: str, g: dict[str, str]) -> dict[str, str]:
    return {**g, "SVC": _SERVICES[i % 8], "INSTANCE": f"{_SERVICES[i % 8]}-{h[:6]}", "FP": h[:16],
            "STARTS": _iso(_BASE_EPOCH + i % 3600, 0)}


def _gf_group_status(firing: int, total: int) -> dict[str, str]:
    if firing:
        return {"GSTATUS": "firing", "GSTATE": "alerting", "GTITLE": f"FIRING:{firing}", "GWORD": "Firing"}
    return {"GSTATUS": "resolved", "GSTATE": "ok", "GTITLE": "RESOLVED", "GWORD": "Resolved"}


# --- Datadog (Keep's WEBHOOK_PAYLOAD template)

_DD_DOC = {
    "body": "%%%\n@@MONNAME@@: system.cpu.user over host:@@HOST@@ was @@VAL@@ on average during the last 10m (#@@N@@).@@PAD@@\n\n@webhook-keep\n%%%",
    "last_updated": "@@TSMS@@", "event_type": "query_alert_monitor",
    "title": "[@@DDTRANS@@ on {host:@@HOST@@}] @@MONNAME@@", "severity": "@@DDSEV@@", "alert_type": "@@DDTYPE@@",
    "alert_query": "avg(last_10m):avg:system.cpu.user{service:@@SVC@@} by {host} > 90",
    "alert_transition": "@@DDTRANS@@", "date": "@@TSMS@@", "scopes": "host:@@HOST@@",
    "org": {"id": "123456", "name": "Acme Corp"},
    "url": "https://app.datadoghq.com/event/event?id=@@EVBASE@@@@N6@@",
    "tags": "env:production,host:@@HOST@@,monitor,service:@@SVC@@,team:payments",
    "id": "@@EVBASE@@@@N6@@", "monitor_id": "@@MONID@@",
}


def _dd_static(i: int, h: str, _g: dict[str, str]) -> dict[str, str]:
    # Several hosts (scopes) share one monitor, as a multi-alert monitor does.
    svc, monitor = _SERVICES[i % 8], 90_000_000 + i // 4
    host = f"ip-10-{(i >> 16) & 255}-{(i >> 8) & 255}-{i & 255}"
    return {"@key": f"{monitor}/host:{host}", "SVC": svc, "HOST": host, "MONID": str(monitor),
            "MONNAME": _DD_MONITORS[(i // 4) % 4].format(svc=svc), "DDSEV": f"P{1 + i % 4}",
            "EVBASE": str(int(h[:12], 16) % 10**13)}


def _dd_dynamic(a: _AlertState) -> dict[str, str]:
    return {"N": str(a.counter), "N6": f"{a.counter:06d}", "VAL": a.value(), "TSMS": str(a.now() * 1000)}


# --- PagerDuty webhook v3 (incident.*)

_PD_REF = {"html_url": "https://acme.pagerduty.com/services/@@SVCID@@", "id": "@@SVCID@@",
           "self": "https://api.pagerduty.com/services/@@SVCID@@", "summary": "@@SVC@@ (production)",
           "type": "service_reference"}
_PD_DOC = {"event": {
    "id": "01@@EVBASE@@@@N6@@", "event_type": "incident.@@PDSTATUS@@", "resource_type": "incident",
    "occurred_at": "@@TS@@", "agent": _PD_REF, "client": None,
    "data": {
        "id": "@@INCID@@", "type": "incident", "self": "https://api.pagerduty.com/incidents/@@INCID@@",
        "html_url": "https://acme.pagerduty.com/incidents/@@INCID@@", "number": "@@RAW:INCNUM@@",
        "status": "@@PDSTATUS@@", "incident_key": "@@SVC@@/@@CHECK@@", "created_at": "@@CREATED@@",
        "title": "@@TITLE@@", "service": _PD_REF,
        "assignees": [{"html_url": "https://acme.pagerduty.com/users/PUSR456", "id": "PUSR456",
                       "self": "https://api.pagerduty.com/users/PUSR456", "summary": "Jane Oncall",
                       "type": "user_reference"}],
        "escalation_policy": {"html_url": "https://acme.pagerduty.com/escalation_policies/PEP789", "id": "PEP789",
                              "self": "https://api.pagerduty.com/escalation_policies/PEP789",
                              "summary": "Payments Primary", "type": "escalation_policy_reference"},
        "teams": [{"html_url": "https://acme.pagerduty.com/teams/PTM012", "id": "PTM012",
                   "self": "https://api.pagerduty.com/teams/PTM012", "summary": "Payments", "type": "team_reference"}],
        "priority": {"html_url": "https://acme.pagerduty.com/account/incident_priorities", "id": "PPRI001",
                     "self": "https://api.pagerduty.com/priorities/PPRI001", "summary": "@@PRIO@@", "type": "priority"},
        "urgency": "high", "conference_bridge": None, "resolve_reason": None,
        "body": {"type": "incident_body", "details": "@@CHECK@@ measured @@VAL@@ at check @@N@@.@@PAD@@"},
    },
}}


def _pd_static(i: int, h: str, _g: dict[str, str]) -> dict[str, str]:
    svc, check = _SERVICES[i % 8], f"check-{h[:6]}"
    inc = "Q" + h[:13].upper()
    return {"@key": inc, "INCID": inc, "INCNUM": str(10_000 + i), "SVC": svc, "SVCID": f"PSVC{i % 8:03d}",
            "CHECK": check, "TITLE": f"{svc} {check} is failing", "PRIO": f"P{1 + i % 4}",
            "CREATED": _iso(_BASE_EPOCH + i % 3600, 0)[:19] + "Z", "EVBASE": h[16:32].upper()}


def _pd_dynamic(a: _AlertState) -> dict[str, str]:
    return {"N": str(a.counter), "N6": f"{a.counter:06d}", "VAL": a.value(), "TS": _iso(a.now(), a.counter % 1000)}


# --- CloudWatch alarm via SNS (the alarm is a JSON string inside `Message`)

_CW_MESSAGE = {
    "AlarmName": "@@ALARM@@", "AlarmDescription": "@@METRIC@@ for @@SVC@@ above threshold.@@PAD@@",
    "AWSAccountId": "123456789012", "AlarmConfigurationUpdatedTimestamp": "2024-11-02T08:14:55.120+0000",
    "NewStateValue": "@@CWNEW@@",
    "NewStateReason": "Threshold Crossed: 1 out of the last 1 datapoints [@@VAL@@ (check @@N@@)] was greater than the threshold (50.0) (minimum 1 datapoint for OK -> ALARM transition).",
    "StateChangeTime": "@@TSCW@@", "Region": "EU (Ireland)",
    "AlarmArn": "arn:aws:cloudwatch:eu-west-1:123456789012:alarm:@@ALARM@@", "OldStateValue": "@@CWOLD@@",
    "OKActions": ["arn:aws:sns:eu-west-1:123456789012:keep-alerts"],
    "AlarmActions": ["arn:aws:sns:eu-west-1:123456789012:keep-alerts"], "InsufficientDataActions": [],
    "Trigger": {"MetricName": "@@METRIC@@", "Namespace": "AWS/ApplicationELB", "StatisticType": "Statistic",
                "Statistic": "SUM", "Unit": None,
                "Dimensions": [{"value": "app/@@SVC@@-alb/@@LBID@@", "name": "LoadBalancer"}], "Period": 60,
                "EvaluationPeriods": 1, "DatapointsToAlarm": 1, "ComparisonOperator": "GreaterThanThreshold",
                "Threshold": 50.0, "TreatMissingData": "missing", "EvaluateLowSampleCountPercentile": ""},
}
_CW_DOC = {
    "Type": "Notification", "MessageId": "@@MSGID@@-@@N6@@", "TopicArn": "arn:aws:sns:eu-west-1:123456789012:keep-alerts",
    "Subject": "@@CWNEW@@: \"@@ALARM@@\" in EU (Ireland)",
    "Message": orjson.dumps(_CW_MESSAGE).decode(),
    "Timestamp": "@@TS@@", "SignatureVersion": "1",
    "Signature": "bXlTaWduYXR1cmVCYXNlNjRFeGFtcGxlTm90UmVhbFNpZ25hdHVyZUpVU1RQTEFDRUhPTERFUg==",
    "SigningCertURL": "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-9c6465fa7f48f5cacd23014631ec1136.pem",
    "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:eu-west-1:123456789012:keep-alerts:6b0e71bd",
}


def _cw_static(i: int, h: str, _g: dict[str, str]) -> dict[str, str]:
    svc, metric = _SERVICES[i % 8], _CW_METRICS[(i // 8) % 4]
    alarm = f"prod-{svc}-{metric.lower()}-{h[:12]}"
    return {"@key": alarm, "ALARM": alarm, "SVC": svc, "METRIC": metric, "LBID": h[8:24],
            "MSGID": f"{h[:8]}-{h[8:12]}-5{h[13:16]}-9{h[17:20]}"}


def _cw_dynamic(a: _AlertState) -> dict[str, str]:
    t, ms = a.now(), a.counter % 1000
    iso = _iso(t, ms)
    return {"N": str(a.counter), "N6": f"{a.counter:06d}", "VAL": a.value(), "TS": iso,
            "TSCW": iso[:-1] + "+0000"}


# --- Sentry legacy webhooks plugin (issue alerts: no resolved state)

_SENTRY_DOC = {
    "id": "@@ISSUE@@", "project": "@@SVC@@", "project_name": "@@SVC@@", "project_slug": "@@SVC@@", "logger": None,
    "level": "error", "culprit": "app.@@MOD@@ in handle", "message": "@@EXC@@: @@EXCVAL@@",
    "url": "https://acme.sentry.io/issues/@@ISSUE@@/?referrer=webhooks_plugin",
    "triggering_rules": ["Notify Keep on new or regressed issues"],
    "event": {
        "event_id": "@@EVBASE@@@@N6@@", "level": "error", "version": "7", "type": "error", "logger": "",
        "platform": "python", "timestamp": "@@RAW:TSF@@", "received": "@@RAW:TSF@@", "environment": "production",
        "release": "@@SVC@@@2025.01.14-3", "server_name": "@@SVC@@-5c7f9d8b6-qx2lp",
        "user": {"id": "u_@@N@@", "ip_address": "203.0.113.24"},
        "request": {"url": "https://api.example.com/v1/@@MOD@@", "method": "POST",
                    "headers": [["Content-Type", "application/json"], ["User-Agent", "acme-web/5.12.0"]]},
        "contexts": {"runtime": {"name": "CPython", "version": "3.11.7", "type": "runtime"},
                     "os": {"name": "Linux", "type": "os"}},
        "tags": [["environment", "production"], ["level", "error"], ["release", "@@SVC@@@2025.01.14-3"],
                 ["transaction", "/v1/@@MOD@@"]],
        "sdk": {"name": "sentry.python.fastapi", "version": "2.19.2"},
        "exception": {"values": [{
            "type": "@@EXC@@", "value": "@@EXCVAL@@", "module": "app.@@MOD@@",
            "mechanism": {"type": "fastapi", "handled": False},
            "stacktrace": {"frames": [
                {"filename": "app/api/@@MOD@@.py", "function": "handle", "module": "app.api.@@MOD@@", "lineno": 88,
                 "in_app": True, "context_line": "    result = process(order)"}]},
        }]},
        "extra": {"detail": "attempt @@N@@ took @@VAL@@ ms.@@PAD@@"},
        "fingerprint": ["{{ default }}"], "hashes": ["@@HASH@@"], "culprit": "app.@@MOD@@ in handle",
        "metadata": {"type": "@@EXC@@", "value": "@@EXCVAL@@", "filename": "app/api/@@MOD@@.py", "function": "handle"},
        "title": "@@EXC@@: @@EXCVAL@@", "location": "app/api/@@MOD@@.py", "id": "@@EVBASE@@@@N6@@",
    },
}


def _sentry_static(i: int, h: str, _g: dict[str, str]) -> dict[str, str]:
    exc, val = _SENTRY_ERRORS[i % 4]
    issue = str(10**12 + int(h[:12], 16) % 10**12)
    return {"@key": issue, "ISSUE": issue, "SVC": _SERVICES[i % 8], "MOD": f"{_NAMESPACES[i % 8]}_{h[:4]}",
            "EXC": exc, "EXCVAL": val, "HASH": h[:32], "EVBASE": h[:26]}


def _sentry_dynamic(a: _AlertState) -> dict[str, str]:
    return {"N": str(a.counter), "N6": f"{a.counter:06d}", "VAL": a.value(), "TSF": f"{a.now()}.118"}


# --- Zabbix (params of Keep's zabbix_provider_script.js)

_ZABBIX_DOC = {
    "id": "@@EVBASE@@@@N6@@", "triggerId": "@@TRIGID@@", "lastReceived": "@@TSZ@@",
    "message": "Problem started at @@TIMEZ@@\r\nProblem name: @@TRIG@@\r\nHost: @@HOST@@\r\nSeverity: @@ZSEV@@\r\nOperational data: Current value: @@VAL@@ %\r\n",
    "name": "@@TRIG@@", "service": "@@HOST@@", "severity": "@@ZSEV@@", "status": "@@ZSTATUS@@",
    "tags": "[{\"tag\":\"environment\",\"value\":\"prod\"},{\"tag\":\"component\",\"value\":\"cpu\"},{\"tag\":\"team\",\"value\":\"platform\"}]",
    "description": "@@TRIG@@ on @@HOST@@ (check @@N@@).@@PAD@@", "time": "@@TIMEZ@@", "value": "@@ZVALUE@@",
    "host_ip": "@@IP@@", "host_name": "@@HOSTFQDN@@", "url": "https://zabbix.example.com", "update_action": "",
    "event_ack": "No",
}
_ZABBIX_SEVERITIES = ("Disaster", "High", "Average", "Warning", "Information")


def _zabbix_static(i: int, h: str, _g: dict[str, str]) -> dict[str, str]:
    host = f"db-prod-{i:05d}"
    trig = _ZABBIX_TRIGGERS[i % 4]
    return {"@key": f"{trig}@{host}", "TRIG": trig, "HOST": host, "HOSTFQDN": f"{host}.dc1.example.com",
            "TRIGID": str(30_000 + i % 4), "IP": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}",
            "ZSEV": _ZABBIX_SEVERITIES[i % 5], "EVBASE": str(int(h[:8], 16) % 10**8)}


def _zabbix_dynamic(a: _AlertState) -> dict[str, str]:
    now = a.now()
    clock = _clock(now)
    return {"N": str(a.counter), "N6": f"{a.counter:06d}", "VAL": a.value(), "TIMEZ": clock,
            "TSZ": _date(now // 86_400)[1] + " " + clock}


SPECS: dict[str, ProviderSpec] = {
    "keep": ProviderSpec(
        "keep", _Template.compile(_KEEP_DOC), None, _keep_static, _keep_dynamic,
        _both({"STATUS": "firing"}, {"STATUS": "resolved"}),
        identity_fields=("fingerprint", "name"), content_fields=("message", "description", "lag", "lastReceived"),
        status_fields=("status",)),
    "prometheus": ProviderSpec(
        "prometheus", _Template.compile(_AM_ENVELOPE), _Template.compile(_AM_ALERT), _am_static, _am_dynamic,
        _both({"STATUS": "firing"}, {"STATUS": "resolved"}),
        identity_fields=("alerts[].labels.alertname", "alerts[].labels.instance", "alerts[].fingerprint", "groupKey"),
        content_fields=("alerts[].annotations.description",),
        status_fields=("alerts[].status", "alerts[].endsAt", "status"),
        group_static=_am_group, group_status=_am_group_status),
    "grafana": ProviderSpec(
        "grafana", _Template.compile(_GF_ENVELOPE), _Template.compile(_GF_ALERT), _gf_static, _am_dynamic,
        _both({"STATUS": "firing"}, {"STATUS": "resolved"}),
        identity_fields=("alerts[].labels", "alerts[].fingerprint", "groupKey"),
        content_fields=("alerts[].annotations.description", "alerts[].values", "alerts[].valueString"),
        status_fields=("status", "state", "title", "alerts[].status", "alerts[].endsAt"),
        group_static=_gf_group, group_status=_gf_group_status),
    "datadog": ProviderSpec(
        "datadog", _Template.compile(_DD_DOC), None, _dd_static, _dd_dynamic,
        _both({"DDTRANS": "Triggered", "DDTYPE": "error"}, {"DDTRANS": "Recovered", "DDTYPE": "success"}),
        identity_fields=("monitor_id", "scopes"), content_fields=("body", "id", "last_updated", "date"),
        status_fields=("alert_transition", "alert_type", "title")),
    "pagerduty": ProviderSpec(
        "pagerduty", _Template.compile(_PD_DOC), None, _pd_static, _pd_dynamic,
        _both({"PDSTATUS": "triggered"}, {"PDSTATUS": "resolved"}),
        identity_fields=("event.data.id", "event.data.title"),
        content_fields=("event.id", "event.occurred_at", "event.data.body.details"),
        status_fields=("event.event_type", "event.data.status")),
    "cloudwatch": ProviderSpec(
        "cloudwatch", _Template.compile(_CW_DOC), None, _cw_static, _cw_dynamic,
        _both({"CWNEW": "ALARM", "CWOLD": "OK"}, {"CWNEW": "OK", "CWOLD": "ALARM"}),
        identity_fields=("Message.AlarmName",),
        content_fields=("MessageId", "Timestamp", "Message.NewStateReason", "Message.StateChangeTime"),
        status_fields=("Subject", "Message.NewStateValue", "Message.OldStateValue")),
    "sentry": ProviderSpec(
        "sentry", _Template.compile(_SENTRY_DOC), None, _sentry_static, _sentry_dynamic, ({}, {}),
        identity_fields=("id",), content_fields=("event.event_id", "event.timestamp", "event.extra.detail"),
        status_fields=(), can_flap=False),
    "zabbix": ProviderSpec(
        "zabbix", _Template.compile(_ZABBIX_DOC), None, _zabbix_static, _zabbix_dynamic,
        _both({"ZSTATUS": "PROBLEM", "ZVALUE": "1"}, {"ZSTATUS": "RESOLVED", "ZVALUE": "0"}),
        identity_fields=("name", "host_name"), content_fields=("id", "message", "description", "lastReceived"),
        status_fields=("status", "value")),
}


# Lean variants (`LoadProfile.lean`): the same provider, identities, keys and kinds, fewer bytes.
LEAN_SPECS: dict[str, ProviderSpec] = {
    "keep": ProviderSpec(
        "keep", _Template.compile(_KEEP_LEAN_DOC), None, _keep_static, _keep_dynamic,
        _both({"STATUS": "firing"}, {"STATUS": "resolved"}),
        identity_fields=("fingerprint", "name"), content_fields=("message", "description", "lastReceived"),
        status_fields=("status",)),
    "prometheus": ProviderSpec(
        "prometheus", _Template.compile(_AM_LEAN_ENVELOPE), _Template.compile(_AM_LEAN_ALERT), _am_static,
        _am_dynamic, _both({"STATUS": "firing"}, {"STATUS": "resolved"}),
        identity_fields=("alerts[].labels.alertname", "alerts[].labels.instance", "alerts[].fingerprint", "groupKey"),
        content_fields=("alerts[].annotations.description",),
        status_fields=("alerts[].status", "alerts[].endsAt", "status"),
        group_static=_am_group, group_status=_am_group_status),
}


def spec_for(provider: str, lean: bool = False) -> ProviderSpec:
    """The provider's spec: its lean one when asked for and it has one, else its full one."""
    return LEAN_SPECS.get(provider, SPECS[provider]) if lean else SPECS[provider]


# ---------------------------------------------------------------------------------------------- identities


@dataclass(slots=True)
class _Identity:
    """One Kafka key: a single alert, or an Alertmanager/Grafana group of alerts."""

    spec: ProviderSpec
    tenant: str
    key: bytes
    group: int  # multi-alert: the group's index (its statics derive from it); else -1
    alerts: list[_AlertState]
    # Kept while the factory's cache budget lasts: a single alert's current payload, or a group's rendered
    # alerts (a changed alert's entry is None), so that a group re-send re-renders only what changed.
    last: bytes | None = None
    parts: list[str | None] | None = None

    def render(self, seed: int, cache: _Budget | None) -> bytes:
        spec = self.spec
        if spec.group_static is None:
            return _render_alert(spec, spec.payload, seed, self.alerts[0], _NO_GROUP).encode()
        group = spec.group_static(self.group, _hex(seed, spec.name + "/group", self.group))
        parts = self.parts
        if parts is None:
            parts = [_render_alert(spec, spec.alert, seed, a, group) for a in self.alerts]  # type: ignore[arg-type]
            if cache is not None and cache.take(sum(map(len, parts))):  # type: ignore[arg-type]
                self.parts = parts
        else:
            for n, part in enumerate(parts):
                if part is None:
                    parts[n] = _render_alert(spec, spec.alert, seed, self.alerts[n], group)  # type: ignore[arg-type]
        values = spec.group_status(sum(a.firing for a in self.alerts), len(self.alerts))  # type: ignore[misc]
        values.update(group)
        values["ALERTS"] = "[" + ",".join(parts) + "]"  # type: ignore[arg-type]
        return spec.payload.render(values).encode()


class _Budget:
    """Bytes of rendered payload the factory may keep (a counter; a few bytes of drift per change are fine)."""

    __slots__ = ("left",)

    def __init__(self, left: int) -> None:
        self.left = left

    def take(self, n: int) -> bool:
        if self.left < n:
            return False
        self.left -= n
        return True


_NO_GROUP: dict[str, str] = {}


def _render_alert(spec: ProviderSpec, template: _Template, seed: int, a: _AlertState, group: dict[str, str]) -> str:
    values = spec.static(a.index, _hex(seed, spec.name, a.index), group)
    values.update(spec.dynamic(a))
    values.update(spec.status[a.firing])
    values["PAD"] = _padding(a.pad_len, a.pad_off) if a.pad_len >= 0 else _PAD_MARK
    return template.render(values)


_PAD_MARK = "\x00"  # where an unsized alert's padding goes: orjson escapes control characters, no value has one


class _Pool:
    """The identities of one provider, created lazily up to its cardinality."""

    __slots__ = ("spec", "cardinality", "used", "groups", "emitted")

    def __init__(self, spec: ProviderSpec, cardinality: int) -> None:
        self.spec, self.cardinality = spec, cardinality
        self.used = 0  # alert identities created so far
        self.groups = 0
        self.emitted: list[_Identity] = []

    @property
    def exhausted(self) -> bool:
        return self.used >= self.cardinality


def _hex(seed: int, provider: str, n: int) -> str:
    return hashlib.blake2b(f"{seed}:{provider}:{n}".encode(), digest_size=16).hexdigest()


# ---------------------------------------------------------------------------------------------- the factory


class PayloadFactory:
    """Deterministic stream of `GeneratedRecord`s for a `LoadProfile` (same seed, same bytes).

    `cache_bytes` bounds the memory spent keeping each identity's current
    payload, which makes a full duplicate free; past it, a full duplicate is
    re-rendered from the identity's state, to the same bytes.
    """

    def __init__(self, profile: LoadProfile, *, cache_bytes: int = 256 << 20) -> None:
        self.profile = profile
        self._seed = profile.seed
        self._rng = random.Random(profile.seed)
        self._providers = [p for p in PROVIDERS if profile.mix.get(p, 0) > 0]
        self._cum = list(itertools.accumulate(profile.mix[p] for p in self._providers))
        self._total = self._cum[-1]
        self._pools = {p: _Pool(spec_for(p, profile.lean), profile.cardinality_of(p)) for p in self._providers}
        f, pd, fl = profile.full_dup_ratio, profile.partial_dup_ratio, profile.flap_ratio
        self._thresholds = (f, f + pd, f + pd + fl)
        # log-normal with the requested arithmetic mean: mu = ln(mean) - sigma^2 / 2
        self._size_mu = math.log(profile.mean_size_bytes) - profile.size_sigma ** 2 / 2
        self._cache = _Budget(cache_bytes)
        self.counts: dict[str, int] = dict.fromkeys(KINDS, 0)

    def __iter__(self) -> PayloadFactory:
        return self

    def __next__(self) -> GeneratedRecord:
        return self.next()

    def take(self, n: int) -> list[GeneratedRecord]:
        return [self.next() for _ in range(n)]

    def next(self) -> GeneratedRecord:
        rng = self._rng
        provider = (self._providers[bisect.bisect_right(self._cum, rng.random() * self._total)]
                    if len(self._providers) > 1 else self._providers[0])
        pool = self._pools[provider]
        kind = self._draw_kind(pool)
        if kind == "new":
            ident, value = self._create(pool)
            value = self._remember(ident, value)
        else:
            ident = pool.emitted[rng.randrange(len(pool.emitted))]
            if kind == "full_dup":
                value = ident.last if ident.last is not None else ident.render(self._seed, self._cache)
            else:
                n = rng.randrange(len(ident.alerts)) if len(ident.alerts) > 1 else 0
                alert = ident.alerts[n]
                if kind == "flap":
                    alert.firing = not alert.firing
                else:
                    alert.counter += 1
                if ident.parts is not None:
                    ident.parts[n] = None
                value = self._remember(ident, ident.render(self._seed, self._cache))
        self.counts[kind] += 1
        return GeneratedRecord(provider, ident.tenant, ident.key, value, len(ident.alerts), kind)

    def _remember(self, ident: _Identity, value: bytes) -> bytes:
        """Keep a single alert's current payload while the cache budget lasts (groups keep their parts)."""
        if ident.spec.group_static is not None:
            return value
        if ident.last is not None:
            self._cache.left += len(ident.last)
            ident.last = None
        if self._cache.take(len(value)):
            ident.last = value
        return value

    # -- kinds

    def _draw_kind(self, pool: _Pool) -> Kind:
        r = self._rng.random()
        full, partial, flap = self._thresholds
        kind: Kind = "full_dup" if r < full else "partial_dup" if r < partial else "flap" if r < flap else "new"
        if not pool.emitted:
            return "new"  # nothing to duplicate yet
        if kind == "new" and pool.exhausted:
            kind = self._redraw_dup()
        if kind == "flap" and not pool.spec.can_flap:
            kind = "partial_dup"
        return kind

    def _redraw_dup(self) -> Kind:
        """A `new` draw on an exhausted pool, re-drawn among the dup kinds by their weights."""
        p = self.profile
        total = p.full_dup_ratio + p.partial_dup_ratio + p.flap_ratio
        if total <= 0:
            return "partial_dup"  # only new identities were asked for: the closest is a content change
        r = self._rng.random() * total
        if r < p.full_dup_ratio:
            return "full_dup"
        return "partial_dup" if r < p.full_dup_ratio + p.partial_dup_ratio else "flap"

    # -- identities

    def _create(self, pool: _Pool) -> tuple[_Identity, bytes]:
        spec, rng, seed = pool.spec, self._rng, self._seed
        tenant = self.profile.tenants[rng.randrange(len(self.profile.tenants))]
        epoch = _BASE_EPOCH + rng.randrange(86_400)
        if spec.group_static is not None:
            group = pool.groups
            pool.groups += 1
            size = min(rng.randint(self.profile.alerts_per_webhook_min, self.profile.alerts_per_webhook),
                       pool.cardinality - pool.used)
            key_id = spec.group_static(group, _hex(seed, spec.name + "/group", group))["@key"]
        else:
            group, size = -1, 1
            key_id = spec.static(pool.used, _hex(seed, spec.name, pool.used), _NO_GROUP)["@key"]
        alerts = [_AlertState(pool.used + n, epoch) for n in range(size)]
        pool.used += size
        ident = _Identity(spec, tenant, f"{spec.name}:{tenant}:{key_id}".encode(), group, alerts)
        value = self._fit_size(ident)
        pool.emitted.append(ident)
        return ident, value

    def _fit_size(self, ident: _Identity) -> bytes:
        """Pad the identity's alerts so that its payload reaches a target size drawn for it; return the payload.

        One render with a marker where each alert's padding goes gives both the bare size and, split on the
        marker, the pieces the padded payload is joined from (a second render would cost as much again).
        """
        pieces = ident.render(self._seed, None).split(_PAD_MARK.encode())  # not cached: it has the markers
        bare = sum(map(len, pieces))
        draw = self._rng.lognormvariate(self._size_mu, self.profile.size_sigma)
        if self.profile.size_per_alert:
            draw *= len(ident.alerts)
        target = min(MAX_PAYLOAD_BYTES, round(draw))
        share, extra = divmod(max(0, target - bare), len(ident.alerts))
        offset = _PAD.find(" ", self._rng.randrange(len(_PAD) - 64)) + 1  # start on a word: reads as prose
        out = [pieces[0]]
        for n, (alert, piece) in enumerate(zip(ident.alerts, pieces[1:])):
            alert.pad_len = share + (extra if n == 0 else 0)
            alert.pad_off = offset + n * 97
            out.append(_padding(alert.pad_len, alert.pad_off).encode())
            out.append(piece)
        return b"".join(out)


def measure(profile: LoadProfile, records: int, warmup: int = 0) -> dict[str, float]:
    """Generation speed on this core, after `warmup` records: records/s, alerts/s, MB/s.

    CPU time, not wall time, so that other processes on a shared machine distort it less.
    """
    factory = PayloadFactory(profile)
    factory.take(warmup)
    before = dict(factory.counts)
    started = time.process_time()
    alerts = size = 0
    for _ in range(records):
        rec = factory.next()
        alerts += rec.alerts
        size += len(rec.value)
    cpu = time.process_time() - started
    return {"records_per_s": records / cpu, "alerts_per_s": alerts / cpu, "mb_per_s": size / 1e6 / cpu,
            "mean_bytes": size / records, **{k: float(v - before[k]) for k, v in factory.counts.items()}}


__all__ = ["DEFAULT_MIX", "GeneratedRecord", "KINDS", "LEAN_SPECS", "LOAD_PROFILES", "LoadProfile",
           "MULTI_ALERT_PROVIDERS", "PROVIDERS", "PayloadFactory", "ProviderSpec", "SPECS", "load_profile", "measure",
           "spec_for"]


if __name__ == "__main__":  # python -m benchmarks.payload_factory [records] [cardinality] [warmup]
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    card = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    warm = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    for label, mix in (("all providers", {p: 1.0 for p in PROVIDERS}), ("keep only", {"keep": 1.0}),
                       ("prometheus only", {"prometheus": 1.0})):
        prof = LoadProfile(mix=mix, cardinality=card, full_dup_ratio=0.3, partial_dup_ratio=0.2, flap_ratio=0.05,
                           alerts_per_webhook=5, mean_size_bytes=1500, seed=1)
        result = measure(prof, n, warm)
        print(f"{label:16s} cardinality {card:>9,}: {result['records_per_s']:>9,.0f} records/s "
              f"{result['alerts_per_s']:>9,.0f} alerts/s {result['mb_per_s']:6.1f} MB/s "
              f"(mean {result['mean_bytes']:,.0f} B; new {result['new']:,.0f} of {n:,})")
