-- API keys of the HTTP gateway (docs/gateway.md). Only the sha256 of a key is stored: the key
-- itself is shown once, by `alertstream apikey create`. A key writes to its own tenant only.
CREATE TABLE api_key (
    key_id      text        PRIMARY KEY,           -- public part of the key (`as_<key_id>_<secret>`), names it in listings
    tenant      text        NOT NULL,
    name        text,                              -- free label: who or what uses the key
    key_sha256  bytea       NOT NULL UNIQUE,       -- the gateway looks keys up by hash (one index probe)
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz                        -- set by `alertstream apikey revoke`; the row stays for audit
);
CREATE INDEX api_key_tenant ON api_key (tenant, created_at);
