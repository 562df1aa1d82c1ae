-- The people who run storekeeper: each signs in with an email and a
-- password for an admin token, so that no one needs the signing secret.
-- Outside the log, like customers' passwords: removing an operator
-- deletes it. `email_key` is the email lower-cased, unique.
CREATE TABLE operators (
    id uuid PRIMARY KEY,
    email text NOT NULL,
    email_key text NOT NULL UNIQUE,
    phc text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
