-- The event log: the system's only source of truth.
--
-- global_position is (writing transaction id << 20) + the event's index in
-- that transaction. It is unique, grows with the writing transaction, and
-- lets a reader that only reads below the oldest transaction still running
-- (pg_snapshot_xmin) see every event exactly once, in per-stream order,
-- even when a transaction with a lower position commits after a higher one.
CREATE TABLE events (
    global_position bigint PRIMARY KEY,
    stream_id text NOT NULL,
    stream_version bigint NOT NULL,
    event_id uuid NOT NULL UNIQUE,
    event_type text NOT NULL,
    schema_version integer NOT NULL,
    occurred_at timestamptz NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    metadata jsonb NOT NULL,
    data jsonb NOT NULL,
    CONSTRAINT events_stream_version_unique UNIQUE (stream_id, stream_version),
    CONSTRAINT events_stream_version_non_negative CHECK (stream_version >= 0)
);

-- Events are facts: they are never updated or deleted.
CREATE FUNCTION events_are_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'events are append-only';
END;
$$;

CREATE TRIGGER events_no_update BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_are_immutable();
