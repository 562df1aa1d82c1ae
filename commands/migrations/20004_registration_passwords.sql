-- A password given with a registration waits here, under the id of the
-- `CustomerRegistered` event that is to carry the registration, and moves
-- into `customer_passwords` in the transaction that appends that event:
-- both are written, or neither. A staging whose event never comes (the
-- append failed or lost a race) is never moved; it is deleted by the next
-- staging after an hour.
CREATE TABLE staged_passwords (
    event_id uuid PRIMARY KEY,
    customer_id uuid NOT NULL,
    phc text NOT NULL,
    staged_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX staged_passwords_staged_at ON staged_passwords (staged_at);

CREATE FUNCTION events_register_password() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH staged AS (
        DELETE FROM staged_passwords
         WHERE event_id = NEW.event_id
           AND customer_id = substr(NEW.stream_id, strpos(NEW.stream_id, '-') + 1)::uuid
        RETURNING customer_id, phc
    )
    INSERT INTO customer_passwords (customer_id, phc) SELECT customer_id, phc FROM staged
    ON CONFLICT (customer_id) DO UPDATE SET phc = EXCLUDED.phc, updated_at = now();
    RETURN NEW;
END
$$;
CREATE TRIGGER events_register_password AFTER INSERT ON events
    FOR EACH ROW WHEN (NEW.event_type = 'CustomerRegistered') EXECUTE FUNCTION events_register_password();
