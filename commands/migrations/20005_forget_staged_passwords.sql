-- A password staged for a registration that never took effect (a crash
-- between staging and appending, an unclear failure, a repeat answered
-- from its receipt) is deleted with the customer's other password when
-- the customer is forgotten, in the transaction that appends
-- `CustomerForgotten`; expired stagings are swept by the roles hourly.
CREATE OR REPLACE FUNCTION events_forget_password() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    customer uuid := substr(NEW.stream_id, strpos(NEW.stream_id, '-') + 1)::uuid;
BEGIN
    DELETE FROM customer_passwords WHERE customer_id = customer;
    DELETE FROM staged_passwords WHERE customer_id = customer;
    RETURN NEW;
END
$$;
CREATE INDEX staged_passwords_customer ON staged_passwords (customer_id);
