-- Archive progress: one row per UTC day of `alert` that the archiver (sinks/archiver.py) works on.
--
-- The archiver copies a day's rows to the search store in keyset order (received_at, id), records
-- its position after every batch (resumable), then walks the day again checking that every row is
-- in the store, deletes the rows it found, and finally drops the day's partition. While archiving is
-- enabled, retention (sinks/maintenance.py) drops only days whose state here is `archived`.
CREATE TABLE archive_progress (
    day            date        PRIMARY KEY,
    state          text        NOT NULL CHECK (state IN ('copying', 'verifying', 'archived')),
    last_received  timestamptz,            -- keyset position of the current pass: the last row handled
    last_id        uuid,
    rows_total     bigint,                 -- rows of the day in Postgres when copying began
    copied         bigint      NOT NULL DEFAULT 0,  -- documents indexed by the copy pass
    verified       bigint      NOT NULL DEFAULT 0,  -- rows found in the store (and then deleted from Postgres)
    missing        bigint      NOT NULL DEFAULT 0,  -- rows not in the store after re-indexing: kept in Postgres
    detail         text,                   -- why the last pass left rows behind, if it did
    started_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
