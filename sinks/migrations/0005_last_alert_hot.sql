-- `last_alert` is updated on every sighting (received_count, last_received, source_marks). Postgres
-- can make such an update heap-only (HOT: the new row version on the same page, no new index entry)
-- only when no indexed column changes and the page has room. `last_received` was indexed, so every
-- sighting wrote an entry into both indexes, which bloated until vacuum caught up. The index goes
-- (the "latest alerts of a tenant" listing reads the tenant's rows through the primary key and
-- sorts them: 48 ms at 110,000 identities, docs/postgres.md), and 30% of each page is left free for
-- the new versions. Measured by benchmarks/last_alert_micro.py: docs/decisions.md.
-- The fill factor applies to pages written from now on; existing pages fill as they are rewritten.
DROP INDEX IF EXISTS last_alert_tenant_last_received;
ALTER TABLE last_alert SET (fillfactor = 70);
