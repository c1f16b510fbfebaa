-- `last_alert` counts each sighting once by its source position (where it entered alertstream),
-- not by its position on the internal topic: after a crash the normalize stage sends a batch again
-- at new internal positions, which the old columns counted a second time.
--
-- source_marks: per flow (source topic:partition, plus "!" for the critical internal topic), the
-- highest source position counted. '{}' means no sighting counted by alertstream yet (a row
-- imported from Keep). Rows written before this migration start with '{}': a sighting in flight
-- during the upgrade may be counted once more.
ALTER TABLE last_alert ADD COLUMN source_marks jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE last_alert DROP COLUMN src_partition, DROP COLUMN src_position;
