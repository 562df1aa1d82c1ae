-- Snapshots are kept along a stream's history, not only its newest: a
-- look into the past (time travel) folds from the nearest snapshot at or
-- before the version it asks for, so its cost is bounded however long the
-- stream. Still a cache: dropping any row loses nothing. Only the current
-- shape is kept (saving a new shape drops a stream's older ones).
ALTER TABLE snapshots DROP CONSTRAINT snapshots_pkey;
ALTER TABLE snapshots ADD PRIMARY KEY (stream_id, version);
