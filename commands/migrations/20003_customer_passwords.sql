-- Customers' sign-in passwords, as argon2id hashes (PHC strings), kept
-- outside the event log so that they can be deleted. Forgetting a
-- customer deletes its password in the transaction that appends
-- `CustomerForgotten`, whoever appends it.
CREATE TABLE customer_passwords (
    customer_id uuid PRIMARY KEY,
    phc text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION events_forget_password() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM customer_passwords WHERE customer_id = substr(NEW.stream_id, strpos(NEW.stream_id, '-') + 1)::uuid;
    RETURN NEW;
END
$$;
CREATE TRIGGER events_forget_password AFTER INSERT ON events
    FOR EACH ROW WHEN (NEW.event_type = 'CustomerForgotten') EXECUTE FUNCTION events_forget_password();
