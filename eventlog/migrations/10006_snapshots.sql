-- Snapshots of long streams' folded state, so that loading one costs its
-- newest events rather than its whole history. A cache beside the log:
-- dropping any row loses nothing (the state is folded again from the
-- events). A row is trusted only for the aggregate's current
-- snapshot_version; a newer build ignores and replaces older ones.
CREATE TABLE snapshots (
    stream_id text PRIMARY KEY,
    snapshot_version integer NOT NULL,
    -- The stream version and global position of the last event folded in.
    version bigint NOT NULL,
    position bigint NOT NULL,
    state jsonb NOT NULL,
    taken_at timestamptz NOT NULL DEFAULT now()
);
