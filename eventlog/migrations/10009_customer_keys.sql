-- Crypto-shredding (see eventlog/src/vault.rs). One data key per
-- customer; forgetting a customer deletes its key and leaves the row as a
-- tombstone (key NULL), so that no key is ever made for it again.
CREATE TABLE customer_keys (
    customer_id uuid PRIMARY KEY,
    key bytea,
    created_at timestamptz NOT NULL DEFAULT now(),
    forgotten_at timestamptz,
    CHECK ((key IS NULL) = (forgotten_at IS NOT NULL)),
    -- 32 bytes, or 72 when wrapped under STOREKEEPER_VAULT_KEY (a nonce,
    -- the key sealed, its tag), so that the database's files never hold a
    -- usable key once the key encryption key is kept elsewhere.
    CHECK (key IS NULL OR length(key) IN (32, 72))
);

-- The secret that unique personal values (emails) are claimed under as
-- keyed hashes: 256 bits from PostgreSQL's strong random source.
CREATE TABLE vault_secrets (
    name text PRIMARY KEY,
    secret bytea NOT NULL
);
INSERT INTO vault_secrets (name, secret)
VALUES ('unique_values', decode(replace(gen_random_uuid()::text || gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));

-- Whether the log holds email claims made before they were keyed (named
-- after the plain address): while it does, a claim is checked against
-- that name too, so upgrading never lets an address be taken twice.
CREATE TABLE vault_settings (
    name text PRIMARY KEY,
    value boolean NOT NULL
);
INSERT INTO vault_settings (name, value)
SELECT 'legacy_email_claims', EXISTS (SELECT FROM events WHERE event_type = 'UniqueValueClaimed' AND data->>'kind' = 'email');

-- Snapshots of customers and orders held their state in the clear; they
-- are no longer taken (a cache: nothing depends on them).
DELETE FROM snapshots WHERE stream_id LIKE 'customer-%' OR stream_id LIKE 'order-%';

-- Forgetting deletes the key in the transaction that appends
-- `CustomerForgotten`, whoever appends it (the command service, an
-- import): no crash between the two can leave the event with a live key.
CREATE FUNCTION events_forget_customer() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO customer_keys (customer_id, key, forgotten_at)
    VALUES (substr(NEW.stream_id, strpos(NEW.stream_id, '-') + 1)::uuid, NULL, now())
    ON CONFLICT (customer_id) DO UPDATE SET key = NULL, forgotten_at = coalesce(customer_keys.forgotten_at, now());
    RETURN NEW;
END
$$;
CREATE TRIGGER events_forget_customer AFTER INSERT ON events
    FOR EACH ROW WHEN (NEW.event_type = 'CustomerForgotten') EXECUTE FUNCTION events_forget_customer();
