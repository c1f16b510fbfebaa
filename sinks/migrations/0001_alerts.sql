-- The alert history, the latest state per alert identity, and raw payloads (docs/postgres.md).
--
-- `alert` and `alert_raw` are range-partitioned by day on received_at. The maintenance job
-- (`alertstream maintain`, or the worker's periodic task: sinks/maintenance.py) creates the daily
-- partitions ahead of time, moves rows that landed in the DEFAULT partition into their day, and
-- drops (or detaches) the days older than the retention. The DEFAULT partition exists so that no
-- write ever fails for a missing partition.

-- `alert` rows are append-only: one per new or changed alert (never per exact duplicate).
CREATE TABLE alert (
    id             uuid        NOT NULL,   -- derived from the source record position: replays collide, so they add nothing
    received_at    timestamptz NOT NULL,   -- Kafka timestamp of the source record; the partition key
    tenant         text        NOT NULL,
    fingerprint    text        NOT NULL,
    provider_type  text        NOT NULL,
    provider_id    text,
    name           text        NOT NULL,
    status         text        NOT NULL,
    severity       text        NOT NULL,
    content_hash   text        NOT NULL,
    event          json        NOT NULL,   -- the canonical alert (Keep AlertDto field names), as encoded: json, not jsonb,
                                           -- is 14% smaller stored (docs/postgres.md); -> and ->> work on both
    stored_at      timestamptz NOT NULL DEFAULT now(),  -- commit time (transaction start): stored_at - received_at is the pipeline latency
    PRIMARY KEY (id, received_at)          -- the partition key must be part of every unique key
) PARTITION BY RANGE (received_at);
-- history of one fingerprint, newest first
CREATE INDEX alert_tenant_fingerprint_received ON alert (tenant, fingerprint, received_at DESC);
-- latest alerts of a tenant, and a tenant's time range
CREATE INDEX alert_tenant_received ON alert (tenant, received_at DESC);
-- alerts of one provider (type) of a tenant, newest first / in a time range
CREATE INDEX alert_tenant_provider_received ON alert (tenant, provider_type, received_at DESC);

-- Raw provider payloads, kept per the raw storage policy (sinks/raw_storage.py): one row per input
-- record (a webhook may carry many alerts), or per record that went to the DLQ (`error` set).
CREATE TABLE alert_raw (
    id             uuid        NOT NULL,   -- derived from the source record position (idempotent)
    received_at    timestamptz NOT NULL,   -- Kafka timestamp of the source record; the partition key
    tenant         text        NOT NULL,
    provider_type  text        NOT NULL,
    source         text,                   -- topic/partition/offset of the source record
    raw            bytea,                  -- the payload (field-filtered per policy); NULL when withheld
    error          text,                   -- NULL: processed; else why it could not be ("reason: detail")
    stored_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, received_at)
) PARTITION BY RANGE (received_at);
CREATE INDEX alert_raw_tenant_received ON alert_raw (tenant, received_at DESC);
-- the "error alerts" view (Keep's /alerts/event/error): only error rows are in this index
CREATE INDEX alert_raw_tenant_errors ON alert_raw (tenant, received_at DESC) WHERE error IS NOT NULL;

-- lz4 for the large columns where the server has it (PostgreSQL built --with-lz4, as Debian's and
-- most distributions' are); pglz otherwise (the embedded test server lacks lz4). PostgreSQL
-- compresses a value only in a row over ~2 KB (TOAST_TUPLE_THRESHOLD): most alerts are about that
-- size, raw payloads often more (measured in docs/postgres.md). Set on the parent before any
-- partition exists: partitions, and tables made LIKE the parent INCLUDING COMPRESSION, inherit it.
DO $$
BEGIN
    ALTER TABLE alert ALTER COLUMN event SET COMPRESSION lz4;
    ALTER TABLE alert_raw ALTER COLUMN raw SET COMPRESSION lz4;
    ALTER TABLE alert_raw ALTER COLUMN error SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'lz4 is not available on this server: large columns use pglz';
END
$$;

CREATE TABLE alert_default PARTITION OF alert DEFAULT;
CREATE TABLE alert_raw_default PARTITION OF alert_raw DEFAULT;

-- One row per alert identity, updated on every sighting (coalesced per batch, in key order).
CREATE TABLE last_alert (
    tenant          text        NOT NULL,
    fingerprint     text        NOT NULL,
    alert_id        uuid        NOT NULL,  -- the newest stored `alert` row of this identity (no FK: partitions are dropped)
    name            text        NOT NULL,
    status          text        NOT NULL,
    severity        text        NOT NULL,
    provider_type   text        NOT NULL,
    content_hash    text        NOT NULL,
    first_received  timestamptz NOT NULL,
    last_received   timestamptz NOT NULL,  -- advances on exact duplicates too (Keep #2316)
    received_count  bigint      NOT NULL,  -- every sighting, duplicates included
    src_partition   integer     NOT NULL,  -- position of the last applied sighting on the internal topic:
    src_position    bigint      NOT NULL,  -- a replayed sighting at or before it is not counted again (-1: imported from Keep)
    PRIMARY KEY (tenant, fingerprint)
);
-- latest (current) alerts of a tenant
CREATE INDEX last_alert_tenant_last_received ON last_alert (tenant, last_received DESC);
