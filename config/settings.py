"""Every setting of alertstream, in one place.

Each field is read from the environment as ``ALERTSTREAM_<NAME>`` (nested
blocks as ``ALERTSTREAM_<BLOCK>__<FIELD>``, e.g. ``ALERTSTREAM_STREAM_BATCH__MAX_EVENTS``).
The description of each field is the documentation: `alertstream config` prints
the table that the README carries.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class BatchConfig(BaseModel):
    """How records are grouped before a write (Vector's `batch` block), shared by every stage and sink."""

    max_events: int = Field(2000, ge=1, description="Flush a batch once it holds this many records.")
    timeout_s: float = Field(0.5, gt=0, description="Flush a batch at the latest this long after its first record.")


class RetryConfig(BaseModel):
    """How a failed write is retried (Vector's `request` block), shared by every sink."""

    initial_backoff_s: float = Field(0.5, gt=0, description="First wait after a failed write.")
    max_backoff_s: float = Field(30.0, gt=0, description="Longest wait between two attempts (the wait doubles, with full jitter).")
    attempt_timeout_s: float = Field(60.0, gt=0, description="One write attempt is abandoned (and retried) after this long.")


class RateLimit(BaseModel):
    """A token bucket: `rate_per_s` requests per second on average, bursts of up to `burst`."""

    rate_per_s: float = Field(gt=0, description="Requests per second the bucket refills.")
    burst: float = Field(ge=1, description="Bucket size: requests that may arrive at once after a quiet period.")


class NormalizerLimits(BaseModel):
    """What one input record may cost the normalizer, whatever it contains (docs/security.md).
    Over a bound the record goes to the DLQ with the reason named here; never truncated. The
    gateway refuses exactly what the worker would (same limits)."""

    max_alerts_per_record: int = Field(10_000, ge=1, le=0xFFFF, description="Alerts in one record (a webhook's `alerts` list); more: DLQ `too_many_alerts`, refused before any alert is read.")
    max_labels_per_alert: int = Field(1_000, ge=1, description="Labels of one alert; more: DLQ `over_budget`.")
    max_depth: int = Field(64, ge=2, description="Nesting depth of an alert's JSON (`extra`); deeper: DLQ `too_deep`.")
    record_cpu_budget_ms: float = Field(500.0, gt=0, description="CPU time one record may take to normalize, checked between alerts; more: DLQ `over_budget`. The backstop for whatever the other bounds miss.")
    max_output_ratio: float = Field(4.0, gt=0, description="The record's normalized alerts (as JSON) may be at most this many times its input bytes, plus `output_allowance_per_alert` per alert; more: DLQ `output_too_large`.")
    output_allowance_per_alert: int = Field(1_024, ge=0, description="Bytes of normalized output each alert may add beyond `max_output_ratio` × input.")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ALERTSTREAM_", env_nested_delimiter="__", extra="ignore"
    )

    # --- where the servers are; unset means "start them locally with `alertstream stack up`"
    kafka_bootstrap: str | None = Field(None, description="Kafka bootstrap servers, host:port[,host:port]. Unset: the local broker of `alertstream stack up` (Apache Kafka, or Tansu where Java is missing).")
    database_url: SecretStr | None = Field(None, description="PostgreSQL URL (postgresql://user:pass@host:port/db). Unset: the local embedded PostgreSQL.")
    search_url: str | None = Field(None, description="Elasticsearch/OpenSearch base URL. Unset: the local osmem store.")
    search_username: str | None = Field(None, description="Basic-auth user for the search store, if it needs one.")
    search_password: SecretStr | None = Field(None, description="Basic-auth password for the search store.")
    search_api_key: SecretStr | None = Field(None, description="Elasticsearch API key (sent as `Authorization: ApiKey ...`), instead of user/password.")
    local_broker: Literal["auto", "kafka", "tansu"] = Field("auto", description="Broker that `alertstream stack up` starts when `kafka_bootstrap` is unset: `kafka` (Apache Kafka in KRaft mode from Maven Central, needs Java 17+ and Maven), `tansu` (the in-memory stand-in), or `auto` (Kafka where Java and Maven are found, else Tansu, said in one line).")
    local_search: Literal["auto", "opensearch", "elasticsearch", "osmem"] = Field("auto", description="Search server that `alertstream stack up` starts when `search_url` is unset: a real OpenSearch/Elasticsearch from Maven Central (needs Java), `osmem` (the in-memory stand-in), or `auto` (the real one where Java and Maven are found, else osmem, said in one line).")
    local_stack_clean: bool = Field(False, description="`stack up` wipes the local broker's and search server's data first (a clean start); by default their data survives `stack down` / `stack up`.")
    search_enabled: bool = Field(True, description="Write alerts to the search store as well as Postgres.")
    search_index: str = Field("alertstream-alerts", description="Index (or write alias) that alert documents are written to.")

    # --- topics
    topic_alerts: str = Field("alerts", description="Input topic: provider payloads, header `provider` and `tenant`.")
    topic_critical: str = Field("alerts.critical", description="Input topic for critical alerts (the gateway routes critical severity here); its own consumer, so a backlog on `alerts` does not delay them.")
    topic_normalized_critical: str = Field("alerts.normalized.critical", description="Internal topic: critical canonical alerts (from either input topic), deduplicated by their own agent.")
    topic_normalized: str = Field("alerts.normalized", description="Internal topic: canonical alerts packed per partition, partitioned by (tenant, fingerprint).")
    topic_stored: str = Field("alerts.stored", description="Internal topic: stored (new or changed) alerts, packed, consumed by the search indexer.")
    topic_retry_prefix: str = Field("alerts.retry.", description="Retry topics are this prefix plus the tier number (1, 2, ...), one per entry of `retry_delays_s`.")
    retry_delays_s: list[float] = Field(default_factory=lambda: [10.0, 60.0, 600.0], description="Delay of each retry tier (JSON list): a record that failed transiently waits this long on tier N before attempt N+1; after the last tier, the DLQ.")
    topic_dlq: str = Field("alerts.dlq", description="Dead-letter topic: original bytes plus headers naming the reason.")
    topic_partitions: int = Field(4, ge=1, description="Partitions of every alertstream topic (the ceiling on parallel workers).")
    topic_replication: int = Field(1, ge=1, description="Replication factor of the topics alertstream creates.")

    # --- the worker
    app_id: str = Field("alertstream", description="Faust app id: the consumer group and the prefix of changelog topics.")
    data_dir: Path = Field(Path(".alertstream"), description="Local state: RocksDB tables, the local stack's data and PID files.")
    worker_web_port: int = Field(6066, ge=1, le=65535, description="Port of the worker's web server (/metrics).")
    worker_web_bind: str = Field("127.0.0.1", description="Address the worker's web server binds to.")
    worker_processes: int = Field(0, ge=0, description="Worker processes that `alertstream worker` runs, each a member of the consumer group on web port `worker_web_port + i`; 0 = one per CPU core. Never more than `topic_partitions`. In containers set 1 and scale with replicas.")
    worker_stateless_processes: int = Field(0, ge=0, description="Of the worker's processes, this many run only the stateless stages (normalize, index, retry forwarders) and the others only the deduplicate stage and the housekeeping jobs, so that the dedup stage has a core of its own instead of sharing one event loop with normalizing (docs/scaling.md). Needs at least one process left for the dedup stage. 0 = every process runs every stage.")
    worker_role: Literal["all", "stateless", "stateful"] = Field("all", description="Stages this worker process runs: `all`; `stateless` (normalize, index, retry forwarders: no dedup table, no state to restore); `stateful` (deduplicate with its table, housekeeping jobs). The supervisor sets it for each process from `worker_stateless_processes`; in containers, one deployment per role scales each side on its own.")
    group_instance_id: str | None = Field(None, description="Static consumer-group membership (KIP-345): a stable name for this worker, e.g. the StatefulSet pod name; process i joins as `<name>-<i>`. A restarted process then takes its old place at once, without a rebalance or waiting out the dead member's session. Unset: dynamic membership (the default; docs/decisions.md has why).")
    worker_stall_timeout_s: float = Field(60.0, ge=0, description="A dedup agent idle this long while its partitions hold records it was never handed (a Faust stall, not a slow sink) makes its process exit; the supervisor starts a fresh one, which resumes from committed offsets. 0 = never (skipped offsets still exit at once).")
    worker_stop_timeout_s: float = Field(60.0, gt=0, description="On SIGTERM, how long the worker's processes get to flush their batches and commit before they are killed.")
    gc_gen0_threshold: int = Field(50_000, ge=0, description="Allocations between two young-generation garbage collections in a worker process (Python's default is 700). Every collection walks the young objects, and a batch allocates hundreds of thousands; at 700 the collector took about two thirds of decoding a batch (docs/performance.md). Startup objects are frozen out of collection too. 0 = Python's default.")
    broker_session_timeout_s: float = Field(30.0, gt=0, description="Kafka consumer session timeout; a dead worker's partitions move after this long.")
    consumer_fetch_min_bytes: int = Field(1024 * 1024, ge=1, description="Kafka `fetch.min.bytes` of the pipeline's bulk consumers (normalize, index, and the dedup agents' Faust consumer; the sparse topics have `consumer_sparse_fetch_max_wait_ms`): the broker holds a fetch until this much is ready or `consumer_fetch_max_wait_ms` has passed. Below saturation a consumer otherwise takes whatever arrived since its last fetch, a few records at a time, and every small batch costs the whole pipeline per-record work downstream (docs/performance.md). 1 = answer at once.")
    consumer_fetch_max_wait_ms: int = Field(50, ge=0, le=5000, description="Kafka `fetch.max.wait.ms` of the same consumers: the longest the broker holds a fetch for `consumer_fetch_min_bytes`; the latency it can add at each hop it is used on.")
    consumer_sparse_fetch_max_wait_ms: int = Field(500, ge=0, le=5000, description="Kafka `fetch.max.wait.ms` of the consumers of sparse topics (the critical lane's input, the retry tiers), which fetch with `fetch.min.bytes` 1, Kafka's defaults: the broker answers as soon as a record arrives, and an idle consumer asks once per this wait instead of once per `consumer_fetch_max_wait_ms`.")
    stream_batch: BatchConfig = Field(default_factory=lambda: BatchConfig(max_events=1000, timeout_s=0.2), description="Input records taken per normalizer iteration.")
    dedup_batch: BatchConfig = Field(default_factory=lambda: BatchConfig(max_events=16, timeout_s=0.2), description="Packed internal records (each up to one normalizer batch's alerts for its partition) taken per dedup iteration; one sink write each (docs/performance.md measured 8 and 16).")
    index_batch: BatchConfig = Field(default_factory=lambda: BatchConfig(max_events=32, timeout_s=0.5), description="Records of the stored-alerts topic (each a dedup batch's stored alerts for a partition) taken per search bulk request: bigger bulks cost the search server less per document; searchable within about timeout + the index's refresh interval.")
    packed_record_max_bytes: int = Field(512 * 1024, ge=16 * 1024, description="Largest record written to the internal topic; bigger packs are split.")
    sink_retry: RetryConfig = Field(default_factory=RetryConfig, description="Retry policy of every sink.")
    internal_record_format: int = Field(2, ge=1, le=2, description="Format the worker writes its internal topics in (`schemas/alert.py` `WIRE_VERSION`); it reads both. 1 only for the first roll of a two-step rolling upgrade from a version that writes format 1 (before 2026-12-03): old workers still running cannot read format 2 (docs/runbook.md, Upgrade).")
    producer_compression: Literal["none", "lz4", "zstd", "gzip", "snappy"] = Field("zstd", description="Compression of what the worker's own producer sends: the internal topics (packed alerts), retry tiers and the DLQ. zstd shrinks packed alerts 10x for ~3 µs per alert and measured no dearer than none in worker CPU; aiokafka's lz4 compresses at level 9, 13 µs per alert, and cost the worker ~12% (docs/performance.md). none: for a broker without zstd (Kafka before 2.1).")
    producer_one_record_batches: bool = Field(False, description="Send every record of the worker's own producer in a batch of its own. Only for brokers that under-report end offsets (the local Tansu broker) where a test needs exact table recovery; costs ~10x produce throughput. Never in production.")
    kafka_idempotent_producers: bool = Field(True, description="The producers that write input (the gateway, the demo, the load generator) are idempotent: a retry after a lost ack never writes a record twice, so every sighting is counted once. `stack up` turns it off for the local stand-in broker (Tansu), which refuses InitProducerId; a retry there may then count a sighting twice, never lose one.")
    changelog_send_timeout_s: float = Field(60.0, gt=0, description="How long a dedup-state checkpoint waits for the broker to ack its changelog records before the batch fails (and is retried, never acked).")
    table_recovery_consistency_check: bool = Field(True, description="Refuse to start when a table's local state is ahead of its changelog (Faust's check). `stack up` turns it off for the local broker, whose end offsets are under-reported: a restart then re-applies at most one changelog batch less, and those identities are stored once more as new, never lost.")
    fingerprint_rules_path: Path | None = Field(None, description="YAML fingerprint/dedup rules per tenant and provider (docs/dedup.md; example in deploy/config/). Unset: Keep's default rule.")
    dedup_state_ttl_s: float = Field(30 * 86400, ge=0, description="An identity not seen for this long is forgotten (its next sighting counts as new); 0 keeps state forever. The sweep that forgets them rests for 1% of this after each full pass over a partition, so an identity may be forgotten up to that much (plus a pass) late.")
    dedup_sweep_budget: int = Field(2000, ge=1, description="Table entries the TTL sweep examines per partition each second while a pass runs, so it never stalls the stream.")
    dedup_cache_entries: int = Field(100_000, ge=1, description="Dedup states of hot identities kept in memory per worker (LRU).")
    dedup_bloom_capacity: int = Field(0, ge=0, description="Identities per partition the new-identity Bloom filter is sized for (1% false positives); 0 turns it off. Worth it when many alerts are new identities.")
    default_tenant: str = Field("default", description="Tenant of a record that carries no `tenant` header.")
    record_max_age_s: float = Field(0, ge=0, description="An input record older than this when it is processed goes to the DLQ with reason `expired` (queue TTL); 0 = no limit.")
    max_payload_bytes: int = Field(1_048_576, ge=1024, description="A record larger than this goes to the DLQ with reason `too_large`.")
    normalizer_limits: NormalizerLimits = Field(default_factory=NormalizerLimits, description="Per-record bounds of the normalizer (worker and gateway alike).")
    normalizer_chunk_max_ms: float = Field(100.0, gt=0, description="The normalize stage hands the event loop back (sends what it has) after this much time on a batch, so one batch of costly records never holds the loop longer.")
    normalizer_chunk_max_output_bytes: int = Field(16 * 1024 * 1024, ge=1, description="The normalize stage sends what it has once a batch's normalized alerts reach this many bytes, so a batch's output held in memory is bounded.")
    normalizer_resend_cache_bytes: int = Field(128 * 1024 * 1024, ge=0, description="Memory per worker process for what the normalize stage built from records it has seen: a record whose bytes, topic, tenant and provider were seen before is not normalized again, only given its own position and time (re-sends are most of alerting's traffic). Least recently used first out; 0 turns it off.")
    db_pool_size: int = Field(4, ge=1, description="Connections in the worker's Postgres pool.")

    dedup_pipeline_window: int = Field(2, ge=1, le=4, description="Dedup batches unfinished at once: with 2 (the default), the next batch is taken and planned while the previous one is written to Postgres (durable phases still run one at a time, in order; +6-7% in paired runs). 1 makes each batch durable before the next is planned (docs/decisions.md).")
    dedup_batch_attempts: int = Field(3, ge=1, description="Times a dedup batch that failed (a produce, an offset query) is tried in-process, with a growing wait, before the process exits for a fresh one. A failed batch is never acked.")
    failpoints_path: Path | None = Field(None, description="Testing: a JSON file of fail points to trigger and how often (streams/failpoints.py), e.g. `{\"dedup.send_stored\": 2}`. Unset in production.")
    loop_blocked_threshold_s: float = Field(0.5, gt=0, description="An event loop that did not run a 0.1 s timer for this much longer is logged and counted as blocked.")
    log_level: str = Field("INFO", description="Python log level of the worker and the CLI.")

    # --- the Postgres store: partitions, retention, maintenance, raw payloads (docs/postgres.md)
    pg_partition_premake_days: int = Field(3, ge=1, description="Daily partitions (UTC) of `alert` and `alert_raw` that the maintenance job keeps created ahead of today.")
    pg_alert_retention_days: int = Field(30, ge=0, description="Daily partitions of `alert` older than this many days are dropped (or detached, see `ALERTSTREAM_PG_RETENTION_ACTION`); 0 keeps them forever.")
    pg_raw_retention_days: int = Field(7, ge=0, description="Daily partitions of `alert_raw` (raw payloads) older than this many days are dropped (or detached); 0 keeps them forever.")
    pg_retention_action: Literal["drop", "detach"] = Field("drop", description="What retention does with an expired partition: `drop` it, or `detach` it (renamed `<name>_detached`) to archive and drop it by hand.")
    pg_last_alert_ttl_days: float | None = Field(None, ge=0, description="A `last_alert` row whose identity was not seen for this many days is deleted; 0 keeps rows forever. Unset: the dedup state TTL plus one day. Never shorter than that: a row deleted while the dedup state remembers its identity could not be re-created by a duplicate sighting.")
    pg_maintenance_interval_s: float = Field(600.0, gt=0, description="How often each worker tries the Postgres maintenance jobs (partitions ahead, retention, `last_alert` TTL); an advisory lock lets one worker at a time run each.")
    raw_storage_policy_path: Path | None = Field(None, description="YAML policy for storing raw payloads in `alert_raw`, per tenant and provider: off, all, sample:<rate> or errors, with allow/deny field lists (docs/postgres.md has an example). Unset: only records that went to the DLQ are kept (Keep keeps its error alerts too).")
    # --- search store, lifecycle, archiver, federated search (issue #8; docs/search.md)
    search_flavour: Literal["auto", "elasticsearch", "opensearch"] = Field("auto", description="Search store flavour, for the index template and lifecycle policy: `auto` reads `version.distribution` from `GET /`.")
    search_shards: int = Field(1, ge=1, description="Primary shards of each alert index (index template).")
    search_replicas: int = Field(1, ge=0, description="Replicas of each alert index (index template).")
    search_refresh_interval: str = Field("1s", pattern=r"^(-1|\d+(ms|s|m))$", description="How often the search store makes new alert documents searchable (index template `refresh_interval`): longer costs the server less CPU per document and delays searchability by up to that much (docs/performance.md measures it). Applies to indices created after a change.")
    search_lifecycle_enabled: bool = Field(True, description="Install the lifecycle policy (Elasticsearch ILM / OpenSearch ISM: hot, warm, cold, delete) and roll the write alias over; a store without lifecycle support is reported, not fatal.")
    search_rollover_max_age: str = Field("1d", description="Roll the write index over once it is this old (lifecycle hot phase).")
    search_rollover_max_primary_shard_size: str = Field("50gb", description="Roll the write index over once a primary shard is this large (lifecycle hot phase).")
    search_warm_after: str = Field("7d", description="Age after rollover at which an index moves to the warm phase (force-merged, lower priority).")
    search_cold_after: str = Field("30d", description="Age after rollover at which an index moves to the cold phase (read-only, lowest priority).")
    search_delete_after: str = Field("365d", description="Age after rollover at which an index is deleted; the end of the searchable history.")
    search_throttle_retries: int = Field(5, ge=0, description="Times a bulk request answered 429, or its documents answered 429/503, is retried within one write (jittered backoff from the sink retry policy) before the documents go to a retry topic.")
    archive_enabled: bool = Field(False, description="Run the archiver in the worker: move alerts older than `archive_after_days` from Postgres to the search store. While on, retention never drops a day of `alert` that is not verified archived.")
    archive_after_days: int = Field(7, ge=1, description="Alerts of UTC days older than this many days are archived (copied to the search store, verified, then deleted from Postgres).")
    archive_batch_size: int = Field(1000, ge=1, le=10000, description="Alerts read, indexed, verified and deleted per archiver step (one checkpoint each).")
    archive_interval_s: float = Field(3600.0, gt=0, description="How often each worker tries the archiver; an advisory lock lets one worker at a time run it.")
    search_query_max_limit: int = Field(500, ge=1, description="Largest page `GET /alerts/search` returns.")
    search_cursor_secret: SecretStr | None = Field(None, description="Key that signs `GET /alerts/search` cursors; every gateway replica needs the same one. Unset: derived from the database URL.")

    # --- observability (issue #9): consumer lag, health and readiness, status page (docs/metrics.md)
    lag_poll_interval_s: float = Field(5.0, gt=0, description="How often the worker measures consumer lag (committed vs end offsets) of its consumer groups for `alertstream_consumer_lag`.")
    lag_extra_groups: dict[str, list[str]] = Field(default_factory=dict, description="More consumer groups whose lag the worker exports, with the topics each reads (JSON: `{\"group\": [\"topic\"]}`), e.g. a downstream reader of `alerts.stored`.")
    ready_max_lag: int = Field(100_000, ge=0, description="`/readyz` fails while any watched partition lags more records than this; 0 turns the lag check off.")
    health_blocked_window_s: float = Field(30.0, gt=0, description="`/healthz` fails for this long after the event loop was seen blocked beyond `ALERTSTREAM_LOOP_BLOCKED_THRESHOLD_S`.")

    # --- the HTTP gateway (issue #7, docs/gateway.md)
    gateway_port: int = Field(8080, ge=1, le=65535, description="Port of the HTTP gateway (`alertstream gateway`): webhooks on /alerts/event[/{provider}], plus /healthz, /readyz and /alerts/search (`/metrics` has its own listener, `gateway_metrics_port`).")
    gateway_bind: str = Field("127.0.0.1", description="Address the HTTP gateway binds to (0.0.0.0 to take webhooks from other hosts).")
    gateway_max_body_bytes: int = Field(1_048_576, ge=1024, description="Largest webhook body the gateway takes (413 above); never more than `max_payload_bytes`.")
    gateway_tenant_rate_limit: RateLimit = Field(default_factory=lambda: RateLimit(rate_per_s=200, burst=400), description="Token bucket of every tenant (all its providers together).")
    gateway_provider_rate_limit: RateLimit = Field(default_factory=lambda: RateLimit(rate_per_s=100, burst=200), description="Token bucket of each (tenant, provider) pair, so one noisy source cannot use up its tenant's bucket.")
    gateway_tenant_rate_limits: dict[str, RateLimit] = Field(default_factory=dict, description='Per-tenant overrides of the tenant bucket (JSON: {"acme": {"rate_per_s": 50, "burst": 100}}).')
    gateway_provider_rate_limits: dict[str, RateLimit] = Field(default_factory=dict, description='Per-provider overrides of the (tenant, provider) bucket (JSON: {"grafana": {"rate_per_s": 20, "burst": 40}}).')
    gateway_lag_threshold: int = Field(1_000_000, ge=0, description="Consumer lag (records of the normalizer group on the input topics) above which the gateway pushes back (503/429 with Retry-After); 0 turns the check off.")
    gateway_health_interval_s: float = Field(2.0, gt=0, description="How often the gateway checks broker metadata and consumer lag.")
    gateway_max_inflight_bytes: int = Field(64 * 1024 * 1024, ge=1024 * 1024, description="Bytes of webhooks produced but not yet acknowledged by the broker; above this the gateway answers 503 instead of buffering more.")
    gateway_produce_timeout_s: float = Field(10.0, gt=0, description="A webhook whose record the broker has not acknowledged after this long gets 503 (the sender retries).")
    gateway_retry_after_s: int = Field(5, ge=1, description="Retry-After (seconds) sent with 503 answers when the broker is unreachable, too slow or the pipeline lags.")
    gateway_apikey_cache_ttl_s: float = Field(30.0, ge=0, description="How long the gateway caches an API key lookup; a revoked key stops working at most this long after `apikey revoke`.")
    gateway_metrics_bind: str = Field("127.0.0.1", description="Address of the gateway's metrics listener (`/metrics`, which names tenants: never the public webhook port). 0.0.0.0 only on a private network, for Prometheus.")
    gateway_metrics_port: int = Field(9181, ge=0, le=65535, description="Port of the gateway's metrics listener, apart from `gateway_port`; 0 = no metrics listener.")
    gateway_tenant_byte_rate_limit: RateLimit = Field(default_factory=lambda: RateLimit(rate_per_s=4 * 1024 * 1024, burst=16 * 1024 * 1024), description="Token bucket of every tenant in body bytes (rate in bytes/s, burst in bytes), beside its request buckets: a 1 MB body costs a million tokens, a 12-byte one twelve. A body over the burst passes once the bucket is full.")
    gateway_tenant_byte_rate_limits: dict[str, RateLimit] = Field(default_factory=dict, description='Per-tenant overrides of the bytes bucket (JSON: {"acme": {"rate_per_s": 16777216, "burst": 67108864}}).')
    gateway_defer_max_debt: float = Field(1.0, ge=0, description="Senders that never retry (Grafana) are deferred to the first retry tier over their rate limit only while their buckets are at most this many bursts in debt; the deferral is charged, so the debt is paid back at the bucket's rate. Beyond it: 503. 0 = never defer.")
    gateway_validation_processes: int = Field(2, ge=1, description="Processes that validate webhook bodies (the pipeline's normalizer) off the gateway's event loop. One tenant holds at most all but one of them, so another tenant's webhook never waits behind its bodies.")
    gateway_validation_timeout_s: float = Field(10.0, gt=0, description="A body still being validated after this long has its process killed and replaced, and is refused (400 validation_timeout). Keep it above the normalizer's own per-record budget.")
    gateway_validation_tenant_pending: int = Field(16, ge=1, description="Validations one tenant may have queued or running at once; over it the tenant's webhooks are pushed back (429, or 503 for senders that retry only on 5xx) instead of piling up in memory.")
    gateway_auth_failure_rate_limit: RateLimit = Field(default_factory=lambda: RateLimit(rate_per_s=1, burst=30), description="Token bucket per client address (IPv6: per /64) of API keys that Postgres did not know; while it is empty the address gets 429 (503 for senders that retry only on 5xx) before any lookup. Keys in the cache are not affected. Behind a proxy, list it in uvicorn's FORWARDED_ALLOW_IPS so the client's address is used.")
    gateway_key_lookup_rate_limit: RateLimit = Field(default_factory=lambda: RateLimit(rate_per_s=50, burst=100), description="Token bucket per gateway process of Postgres lookups for API keys not in the cache, whoever sends them; when empty, an uncached key gets 503 keystore_busy (a key seen before is served from its cached entry).")
    consumer_provider_rate_limits: dict[str, RateLimit] = Field(default_factory=dict, description='Consumer-side throttling: alerts per second (and burst, in alerts) that the normalizer processes per (tenant, provider), by provider (JSON: {"zabbix": {"rate_per_s": 500, "burst": 1000}}). Records over it wait on the first retry tier and come back, never dropped; critical input is never throttled. Empty: off (docs/gateway.md).')

    @field_validator("*", mode="before")
    @classmethod
    def _merge_block_with_its_default(cls, value: Any, info: ValidationInfo) -> Any:
        """A block set in part (`ALERTSTREAM_DEDUP_BATCH__TIMEOUT_S` alone) keeps this field's
        other defaults (dedup max_events 8), not the block class's (BatchConfig's 2000)."""
        if isinstance(value, dict) and info.field_name is not None:
            default = cls.model_fields[info.field_name].get_default(call_default_factory=True)
            if isinstance(default, BaseModel):
                return {**default.model_dump(), **value}
        return value

    def require_database_url(self) -> str:
        if self.database_url is None:
            raise RuntimeError("ALERTSTREAM_DATABASE_URL is not set: run `eval \"$(alertstream stack up)\"` or point it at Postgres")
        return self.database_url.get_secret_value()

    def require_kafka(self) -> str:
        if not self.kafka_bootstrap:
            raise RuntimeError("ALERTSTREAM_KAFKA_BOOTSTRAP is not set: run `eval \"$(alertstream stack up)\"` or point it at Kafka")
        return self.kafka_bootstrap


def settings_table() -> str:
    """The Markdown table of every setting, generated from the fields above."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]

    def add(prefix: str, model: type[BaseModel], defaults: BaseModel | None, context: str = "") -> None:
        for name, field in model.model_fields.items():
            env = f"{prefix}{name.upper()}"
            default = getattr(defaults, name) if defaults is not None else field.get_default(call_default_factory=True)
            if isinstance(default, BaseModel):  # a nested block: its rows say what the block is for
                add(env + "__", type(default), default, f"{field.description} ")
                continue
            shown = "(unset)" if default is None else f"`{default}`"
            rows.append(f"| `{env}` | {shown} | {context}{field.description or ''} |")

    add("ALERTSTREAM_", Settings, None)
    return "\n".join(rows)


SETTINGS_BEGIN, SETTINGS_END = "<!-- settings:begin -->", "<!-- settings:end -->"
