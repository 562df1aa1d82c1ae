-- A projection's generation changes whenever it starts over from the
-- beginning of the log (a new version, a rebuild), so that a partitioned
-- source joins a fresh consumer group instead of resuming an old one's
-- offsets.
ALTER TABLE projection_checkpoints ADD COLUMN generation uuid NOT NULL DEFAULT gen_random_uuid();
