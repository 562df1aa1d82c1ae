-- Responses to requests that carried an Idempotency-Key, kept 24 hours.
-- First created by the command API's migration 20001 (since split: this
-- table belongs to the command core, `checkpoints` to the event log);
-- written to be a no-op on databases that applied 20001.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    principal text NOT NULL,
    key text NOT NULL,
    request_hash bytea NOT NULL,
    -- NULL while the first request is still being handled.
    response jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created_at ON idempotency_keys (created_at);
