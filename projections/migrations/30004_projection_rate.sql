-- How fast each projection (and each rebuild) applied events lately: a
-- moving average over its batches, written with its checkpoint, so that
-- `projections list` and /v1/projections can say how long a catch-up or a
-- rebuild has left.
ALTER TABLE projection_checkpoints ADD COLUMN events_per_second double precision NOT NULL DEFAULT 0;
