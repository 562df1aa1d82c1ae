-- How far each non-projection consumer of the log (the order process
-- manager, the Kafka relay) has got. This table used to be created by the
-- command API's migration 20001 (since split: consumer progress belongs to
-- the event log crate); databases that applied it already have the table,
-- so this is written to be a no-op there.
CREATE TABLE IF NOT EXISTS checkpoints (
    name text PRIMARY KEY,
    position bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
