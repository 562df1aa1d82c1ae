-- A projection's generation changes whenever it starts over from the
-- beginning of the log (a new version, a rebuild), so that a partitioned
-- source joins a fresh consumer group instead of resuming an old one's
-- offsets. `rebuild_requested` is set by `storekeeper projections rebuild
-- NAME`; a running worker then builds the projection beside its live
-- tables and swaps it in.
ALTER TABLE projection_checkpoints
    ADD COLUMN generation uuid NOT NULL DEFAULT gen_random_uuid(),
    ADD COLUMN rebuild_requested boolean NOT NULL DEFAULT false;
