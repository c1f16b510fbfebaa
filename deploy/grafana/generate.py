"""Generates the Grafana dashboards of this folder with Grafana's own typed builders
(`grafana-foundation-sdk`, its Grafana 10.1 models): panel, field-config, query and variable shapes
are the SDK's classes and enums, not hand-written dicts. The output is importable with the
`${DS_PROMETHEUS}` data-source input and works file-provisioned through the data-source variable.

Edit here, then run `python deploy/grafana/generate.py`; tests/unit/docs/test_metrics_docs.py checks
that the committed files are current, read back into the SDK's models unchanged, and query only
metrics documented in docs/metrics.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.builders.dashboard import Dashboard, DashboardLink, DatasourceVariable, QueryVariable, Row
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    GraphDrawStyle,
    LegendDisplayMode,
    LegendPlacement,
    SortOrder,
    StackingMode,
    TooltipDisplayMode,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DashboardLinkType,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableOption,
    VariableRefresh,
)

HERE = Path(__file__).resolve().parent
DS = DataSourceRef(type_val="prometheus", uid="${DS_PROMETHEUS}")
# every worker process reports every partition: lag is always deduplicated with max by partition

Query = tuple[str, str]  # (PromQL, legend)
PanelBuilder = timeseries.Panel | stat.Panel | Row


def _targets(queries: list[Query]) -> list[cogbuilder.Builder[cogvariants.Dataquery]]:
    return [prometheus.Dataquery().datasource(DS).expr(expr).legend_format(legend).ref_id(chr(65 + i))
            for i, (expr, legend) in enumerate(queries)]


def _thresholds(steps: list[tuple[float | None, str]]) -> dashboard_builders.ThresholdsConfig:
    return dashboard_builders.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(
        [Threshold(value=value, color=color) for value, color in steps])


def panel(title: str, queries: list[Query], *, unit: str = "short", w: int = 12, h: int = 8, description: str = "",
          stack: bool = False, thresholds: list[tuple[float | None, str]] | None = None) -> timeseries.Panel:
    """A time series: one line per series, legend as a table on the right with last and max."""
    p = (timeseries.Panel().title(title).description(description).datasource(DS).span(w).height(h).unit(unit)
         .draw_style(GraphDrawStyle.LINE).line_width(1).fill_opacity(20 if stack else 0)
         .stacking(common_builders.StackingConfig().mode(StackingMode.NORMAL if stack else StackingMode.NONE).group("A"))
         .legend(common_builders.VizLegendOptions().show_legend(True).display_mode(LegendDisplayMode.TABLE)
                 .placement(LegendPlacement.RIGHT).calcs(["lastNotNull", "max"]))
         .tooltip(common_builders.VizTooltipOptions().mode(TooltipDisplayMode.SINGLE).sort(SortOrder.NONE))
         .targets(_targets(queries)))
    return p.thresholds(_thresholds(thresholds)) if thresholds else p


def stat_panel(title: str, queries: list[Query], *, unit: str = "short", w: int = 12, h: int = 8, description: str = "",
               thresholds: list[tuple[float | None, str]] | None = None) -> stat.Panel:
    """A single value: the last one of each series."""
    p = (stat.Panel().title(title).description(description).datasource(DS).span(w).height(h).unit(unit)
         .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).fields("").values(False))
         .targets(_targets(queries)))
    return p.thresholds(_thresholds(thresholds)) if thresholds else p


def row(title: str) -> Row:
    """An expanded row: the panels after it, up to the next row, are under it."""
    return Row(title).collapsed(False)


def variable(name: str, query: str, label: str) -> QueryVariable:
    """A multi-value label filter, `All` (`.*`) by default."""
    return (QueryVariable(name).label(label).datasource(DS).query({"query": query, "refId": name})
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).include_all(True).multi(True).all_value(".*")
            .current(VariableOption(selected=True, text=["All"], value=["$__all"])))


# The data-source variable makes the same file work both imported by hand (`__inputs`) and
# file-provisioned, where Grafana never fills `__inputs` in.
DATASOURCE_VARIABLE = DatasourceVariable("DS_PROMETHEUS").label("Prometheus").type("prometheus")

# Grafana's export envelope (what "Import" asks for): not part of the dashboard model, so not in the SDK.
ENVELOPE = {
    "__inputs": [{"name": "DS_PROMETHEUS", "label": "Prometheus", "description": "Prometheus that scrapes the alertstream workers and gateways",
                  "type": "datasource", "pluginId": "prometheus", "pluginName": "Prometheus"}],
    "__requires": [{"type": "grafana", "id": "grafana", "name": "Grafana", "version": "10.0.0"},
                   {"type": "datasource", "id": "prometheus", "name": "Prometheus", "version": "1.0.0"}],
}


def dashboard(uid: str, title: str, description: str, panels: list[PanelBuilder], variables: list[QueryVariable]) -> Dashboard:
    board = (Dashboard(title).uid(uid).description(description).tags(["alertstream"]).version(1).editable()
             .tooltip(DashboardCursorSync.CROSSHAIR).time("now-1h", "now").refresh("10s").timezone("utc")
             .variables([DATASOURCE_VARIABLE, *variables]).annotations([])
             .link(DashboardLink("alertstream").type(DashboardLinkType.DASHBOARDS).tags(["alertstream"]).as_dropdown(True)))
    for i, p in enumerate(panels):  # the SDK lays the panels out left to right in rows of 24 columns
        p.id(i + 1)
        if isinstance(p, Row):
            board.with_row(p)
        else:
            board.with_panel(p)
    return board


def lag_dashboard() -> Dashboard:
    g = 'group=~"$group"'
    return dashboard("alertstream-lag", "alertstream / Consumer lag and throughput",
                     "Backlog per consumer group, topic and partition (end offset minus committed offset), and how fast the stages work through it.", [
        row("Lag"),
        panel("Lag per group and topic", [(f"sum by (group, topic) (max by (group, topic, partition) (alertstream_consumer_lag{{{g}}}))", "{{group}} {{topic}}")],
              w=16, description="Records behind, summed over partitions."),
        stat_panel("Total lag", [(f"sum(max by (group, topic, partition) (alertstream_consumer_lag{{{g}}}))", "records")], w=8,
                   thresholds=[(None, "green"), (10000, "orange"), (100000, "red")]),
        panel("Lag per partition", [(f"max by (group, topic, partition) (alertstream_consumer_lag{{{g}}})", "{{group}} {{topic}}/{{partition}}")], w=16),
        panel("Lag growth (records/s)", [(f"sum by (group, topic) (deriv(alertstream:consumer_lag:sum{{{g}}}[5m]))", "{{group}} {{topic}}")], w=8,
              description="Positive: input arrives faster than the group processes it. Uses the recording rule of deploy/prometheus/alertstream-rules.yml."),
        row("Throughput"),
        panel("Records taken per stage (records/s)", [("sum by (stage) (rate(alertstream_records_received_total[1m]))", "{{stage}}")]),
        panel("Alerts per outcome (alerts/s)", [("sum by (outcome) (rate(alertstream_alerts_total[1m]))", "{{outcome}}")], stack=True),
        panel("Alerts per tenant (alerts/s)", [("sum by (tenant) (rate(alertstream_alerts_total[1m]))", "{{tenant}}")], stack=True),
        panel("End-to-end latency to Postgres", [
            ("histogram_quantile(0.5, sum by (le) (rate(alertstream_e2e_ingest_latency_seconds_bucket[5m])))", "p50 from ingest"),
            ("histogram_quantile(0.99, sum by (le) (rate(alertstream_e2e_ingest_latency_seconds_bucket[5m])))", "p99 from ingest"),
            ("histogram_quantile(0.99, sum by (le) (rate(alertstream_e2e_event_latency_seconds_bucket[5m])))", "p99 from event time")], unit="s"),
        panel("End-to-end latency to the search store", [
            ("histogram_quantile(0.5, sum by (le) (rate(alertstream_e2e_index_latency_seconds_bucket[5m])))", "p50 from ingest"),
            ("histogram_quantile(0.99, sum by (le) (rate(alertstream_e2e_index_latency_seconds_bucket[5m])))", "p99 from ingest")], unit="s",
              description="Ingest to the search store's acknowledgement; searchable at the index's next refresh (ALERTSTREAM_SEARCH_REFRESH_INTERVAL) after it."),
        row("Workers"),
        panel("Event-loop lag", [("max by (instance) (alertstream_event_loop_lag_seconds)", "{{instance}}")], unit="s"),
        panel("Event loop blocked (per 5 min)", [("sum by (instance) (increase(alertstream_event_loop_blocked_total[5m]))", "{{instance}}")]),
        panel("Worker RSS", [("alertstream_worker_rss_bytes", "{{instance}}")], unit="bytes"),
        panel("Lag poll errors (per 5 min)", [("sum by (group) (increase(alertstream_consumer_lag_poll_errors_total[5m]))", "{{group}}")]),
    ], [variable("group", "label_values(alertstream_consumer_lag, group)", "consumer group")])


def dedup_dashboard() -> Dashboard:
    sel = 'tenant=~"$tenant", provider=~"$provider"'
    return dashboard("alertstream-dedup", "alertstream / Dedup and noise reduction",
                     "How much of the incoming alert stream is repetition that alertstream does not store.", [
        stat_panel("Exact duplicates (share of alerts, 1h)", [
            (f'sum(increase(alertstream_alerts_total{{{sel}, outcome="duplicate"}}[1h])) / sum(increase(alertstream_alerts_total{{{sel}}}[1h]))', "duplicates")],
                   unit="percentunit", w=6),
        stat_panel("Noise reduction (alerts seen per alert stored, 1h)", [
            (f'sum(increase(alertstream_alerts_total{{{sel}}}[1h])) / sum(increase(alertstream_alerts_total{{{sel}, outcome!="duplicate"}}[1h]))', "x")],
                   unit="x", w=6),
        panel("Alerts stored vs seen (alerts/s)", [
            (f"sum(rate(alertstream_alerts_total{{{sel}}}[5m]))", "seen"),
            (f'sum(rate(alertstream_alerts_total{{{sel}, outcome!="duplicate"}}[5m]))', "stored (new + changed)")], w=12),
        panel("Dedup ratio per tenant and provider (30 min)", [(f"alertstream:dedup_ratio:30m{{{sel}}}", "{{tenant}}/{{provider}}")],
              unit="percentunit", description="Recording rule; AlertstreamDedupRatioChanged fires when it moves 25 points from its 6h level."),
        panel("Dedup ratio since worker start", [(f"max by (tenant, provider) (alertstream_dedup_ratio{{{sel}}})", "{{tenant}}/{{provider}}")],
              unit="percentunit"),
        panel("Outcomes per provider (alerts/s)", [(f"sum by (provider, outcome) (rate(alertstream_alerts_total{{{sel}}}[5m]))", "{{provider}} {{outcome}}")], stack=True),
        panel("Dedup cache hit ratio", [("alertstream_dedup_cache_hit_ratio", "{{instance}}")], unit="percentunit"),
        panel("Normalize re-send cache hit ratio", [(
            "sum by (instance) (rate(alertstream_normalize_resend_cache_hits_total[5m])) / (sum by (instance) "
            "(rate(alertstream_normalize_resend_cache_hits_total[5m])) + sum by (instance) "
            "(rate(alertstream_normalize_resend_cache_misses_total[5m])))", "{{instance}}")],
            unit="percentunit"),
        panel("State expired by TTL (per hour)", [("sum(increase(alertstream_dedup_state_expired_total[1h]))", "identities")]),
        panel("Table reads skipped by the Bloom filter", [("sum(alertstream_dedup_bloom_skipped_reads)", "reads")]),
    ], [variable("tenant", "label_values(alertstream_alerts_total, tenant)", "tenant"),
        variable("provider", "label_values(alertstream_alerts_total, provider)", "provider")])


def sinks_dashboard() -> Dashboard:
    return dashboard("alertstream-sinks", "alertstream / Sinks, retries and DLQ",
                     "Postgres and search-store writes, their circuits, the retry tiers and the dead-letter topic.", [
        stat_panel("Circuit state (0 closed, 1 open, 2 half-open)", [("max by (sink) (alertstream_sink_circuit_state)", "{{sink}}")], w=8,
                   thresholds=[(None, "green"), (1, "red"), (2, "orange")]),
        panel("Rows written (rows/s)", [("sum by (sink) (rate(alertstream_sink_rows_written_total[1m]))", "{{sink}}")], w=16),
        panel("Flush time", [("histogram_quantile(0.5, sum by (sink, le) (rate(alertstream_sink_flush_seconds_bucket[5m])))", "{{sink}} p50"),
                             ("histogram_quantile(0.99, sum by (sink, le) (rate(alertstream_sink_flush_seconds_bucket[5m])))", "{{sink}} p99")], unit="s"),
        panel("Batch size (alerts per write)", [("sum by (sink) (rate(alertstream_sink_batch_size_sum[5m])) / sum by (sink) (rate(alertstream_sink_batch_size_count[5m]))", "{{sink}} mean")]),
        panel("Failed write attempts (per second)", [("sum by (sink, error) (rate(alertstream_sink_errors_total[5m]))", "{{sink}} {{error}}")]),
        panel("Alerts refused for good (to the DLQ)", [("sum by (sink) (rate(alertstream_sink_rejected_total[5m]))", "{{sink}}")]),
        panel("Dead letters by reason (records/s)", [("sum by (reason) (rate(alertstream_dlq_records_total[5m]))", "{{reason}}")], stack=True),
        panel("Records parked on retry tiers (records/s)", [("sum by (topic) (rate(alertstream_retry_records_total[5m]))", "{{topic}}")], stack=True),
        panel("Retry-tier and indexer lag", [('sum by (group, topic) (max by (group, topic, partition) '
                                              '(alertstream_consumer_lag{group=~".*-retry-.*|.*-index"}))', "{{group}} {{topic}}")]),
    ], [])


def gateway_dashboard() -> Dashboard:
    sel = 'tenant=~"$tenant", provider=~"$provider"'
    return dashboard("alertstream-gateway", "alertstream / Gateway and providers",
                     "Webhooks per provider and tenant: accepted, rejected by reason, deferred, bytes and latency.", [
        panel("Webhooks accepted (req/s)", [(f"sum by (provider) (rate(alertstream_gateway_requests_accepted_total{{{sel}}}[1m]))", "{{provider}}")], stack=True),
        panel("Alerts accepted (alerts/s)", [(f"sum by (tenant) (rate(alertstream_gateway_alerts_accepted_total{{{sel}}}[1m]))", "{{tenant}}")], stack=True),
        panel("Rejected by reason (req/s)", [(f"sum by (reason) (rate(alertstream_gateway_requests_rejected_total{{{sel}}}[1m]))", "{{reason}}")], stack=True),
        panel("Rate-limited share per provider", [
            (f'sum by (tenant, provider) (rate(alertstream_gateway_requests_rejected_total{{{sel}, reason="rate_limited"}}[5m])) / '
             f'(sum by (tenant, provider) (rate(alertstream_gateway_requests_accepted_total{{{sel}}}[5m])) + '
             f'sum by (tenant, provider) (rate(alertstream_gateway_requests_rejected_total{{{sel}, reason="rate_limited"}}[5m])))', "{{tenant}}/{{provider}}")],
              unit="percentunit", description="AlertstreamProviderRateLimited fires over 5% for 10 minutes."),
        panel("Throttled by the normalizer (records/s)", [("sum by (tenant, provider) (rate(alertstream_normalizer_throttled_records_total[1m]))", "{{tenant}}/{{provider}}")],
              description="Records over their provider's processing rate, parked on the first retry tier. AlertstreamProviderThrottled fires over 1/s for 10 minutes."),
        panel("Deferred to the retry tier (req/s)", [(f"sum by (provider) (rate(alertstream_gateway_requests_deferred_total{{{sel}}}[1m]))", "{{provider}}")]),
        panel("Bytes received", [(f"sum by (provider) (rate(alertstream_gateway_received_bytes_total{{{sel}}}[1m]))", "{{provider}}")], unit="Bps"),
        panel("Request latency", [
            (f"histogram_quantile(0.5, sum by (le) (rate(alertstream_gateway_request_duration_seconds_bucket{{{sel}}}[5m])))", "p50"),
            (f"histogram_quantile(0.99, sum by (le) (rate(alertstream_gateway_request_duration_seconds_bucket{{{sel}}}[5m])))", "p99")], unit="s"),
        panel("Broker reachable / bytes in flight", [("min(alertstream_gateway_broker_up)", "broker up"),
                                                     ("sum(alertstream_gateway_inflight_bytes)", "in-flight bytes")]),
        panel("Input lag seen by the gateway", [("max(alertstream_gateway_consumer_lag_records)", "records")]),
        panel("Alerts per provider after normalization (alerts/s)", [("sum by (provider) (rate(alertstream_alerts_total[1m]))", "{{provider}}")], stack=True),
    ], [variable("tenant", "label_values(alertstream_gateway_requests_accepted_total, tenant)", "tenant"),
        variable("provider", "label_values(alertstream_gateway_requests_accepted_total, provider)", "provider")])


DASHBOARDS: dict[str, Callable[[], Dashboard]] = {
    "alertstream-lag.json": lag_dashboard, "alertstream-dedup.json": dedup_dashboard,
    "alertstream-sinks.json": sinks_dashboard, "alertstream-gateway.json": gateway_dashboard}


def model(name: str) -> dict[str, Any]:
    """The dashboard as Grafana's JSON model (the SDK's own encoding), in its import envelope."""
    board = json.loads(json.dumps(DASHBOARDS[name]().build(), cls=JSONEncoder))
    return {**ENVELOPE, **board}


def render(name: str) -> str:
    return json.dumps(model(name), indent=2) + "\n"


if __name__ == "__main__":
    for name in DASHBOARDS:
        (HERE / name).write_text(render(name))
        print(f"wrote {HERE / name}")
