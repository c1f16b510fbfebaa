-- The alert history and the latest state per alert identity.
-- `alert` rows are append-only: one per new or changed alert (never per exact duplicate).
-- The primary key carries received_at so the table can be range-partitioned on it.
CREATE TABLE alert (
    id             uuid        NOT NULL,   -- derived from the source record position: replays collide, so they add nothing
    received_at    timestamptz NOT NULL,   -- Kafka timestamp of the source record
    tenant         text        NOT NULL,
    fingerprint    text        NOT NULL,
    provider_type  text        NOT NULL,
    provider_id    text,
    name           text        NOT NULL,
    status         text        NOT NULL,
    severity       text        NOT NULL,
    content_hash   text        NOT NULL,
    event          jsonb       NOT NULL,   -- the canonical alert (Keep AlertDto field names)
    stored_at      timestamptz NOT NULL DEFAULT now(),  -- commit time (transaction start): stored_at - received_at is the pipeline latency
    PRIMARY KEY (id, received_at)
);
-- history of one fingerprint, newest first
CREATE INDEX alert_tenant_fingerprint_received ON alert (tenant, fingerprint, received_at DESC);
-- latest alerts of a tenant, and time-range scans
CREATE INDEX alert_tenant_received ON alert (tenant, received_at DESC);

CREATE TABLE last_alert (
    tenant          text        NOT NULL,
    fingerprint     text        NOT NULL,
    alert_id        uuid        NOT NULL,  -- the newest stored `alert` row of this identity
    name            text        NOT NULL,
    status          text        NOT NULL,
    severity        text        NOT NULL,
    provider_type   text        NOT NULL,
    content_hash    text        NOT NULL,
    first_received  timestamptz NOT NULL,
    last_received   timestamptz NOT NULL,  -- advances on exact duplicates too (Keep #2316)
    received_count  bigint      NOT NULL,  -- every sighting, duplicates included
    src_partition   integer     NOT NULL,  -- position of the last applied sighting on the internal topic:
    src_position    bigint      NOT NULL,  -- a replayed sighting at or before it is not counted again
    PRIMARY KEY (tenant, fingerprint)
);
CREATE INDEX last_alert_tenant_last_received ON last_alert (tenant, last_received DESC);
