-- Crypto-shredding (see eventlog/src/vault.rs). One data key per
-- customer; forgetting a customer deletes its key and leaves the row as a
-- tombstone (key NULL), so that no key is ever made for it again.
CREATE TABLE customer_keys (
    customer_id uuid PRIMARY KEY,
    key bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    forgotten_at timestamptz,
    CHECK ((key IS NULL) = (forgotten_at IS NOT NULL)),
    CHECK (key IS NULL OR length(key) = 32)
);

-- The secret that unique personal values (emails) are claimed under as
-- keyed hashes: 256 bits from PostgreSQL's strong random source.
CREATE TABLE vault_secrets (
    name text PRIMARY KEY,
    secret bytea NOT NULL
);
INSERT INTO vault_secrets (name, secret)
VALUES ('unique_values', decode(replace(gen_random_uuid()::text || gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));

-- Snapshots of customers and orders held their state in the clear; they
-- are no longer taken (a cache: nothing depends on them).
DELETE FROM snapshots WHERE stream_id LIKE 'customer-%' OR stream_id LIKE 'order-%';
