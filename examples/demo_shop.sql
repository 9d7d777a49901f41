-- A small shop for the wardgate demos (examples/autogen_sod.py), in database "test":
--   psql -h 127.0.0.1 -U postgres -d test -f examples/demo_shop.sql
-- Safe to run again: it creates what is missing and puts the rows back as below
-- (including the data problem), leaving other tables and rows alone. Everything is in
-- its own schema, "shop", so a database that already has customers or orders tables
-- of its own is not touched (queries name shop.customers, shop.orders).
--
-- The problem the agent finds: orders 1002 and 1005 were paid (paid_at is set) but
-- are still 'pending' because the payment provider's callback failed.
-- The PII (emails, phone numbers, IBANs) looks real; wardgate masks it for agents.

BEGIN;

CREATE SCHEMA IF NOT EXISTS shop;

CREATE TABLE IF NOT EXISTS shop.customers (
    id    integer PRIMARY KEY,
    name  text NOT NULL,
    email text NOT NULL,
    phone text,
    iban  text
);

CREATE TABLE IF NOT EXISTS shop.orders (
    id          integer PRIMARY KEY,
    customer_id integer NOT NULL REFERENCES shop.customers (id),
    status      text NOT NULL CHECK (status IN ('pending', 'paid', 'shipped', 'cancelled')),
    total       numeric(10, 2) NOT NULL,
    paid_at     timestamptz
);

INSERT INTO shop.customers (id, name, email, phone, iban) VALUES
    (1, 'Amelie Fischer', 'amelie.fischer@example.com', '+49 30 901820', 'DE89370400440532013000'),
    (2, 'Oliver Bennett', 'o.bennett@example.org', '+44 20 7946 0958', 'GB29NWBK60161331926819'),
    (3, 'Sanne de Vries', 'sanne.devries@example.net', '+31 20 794 8877', 'NL91ABNA0417164300'),
    (4, 'Lucas Moreau', 'lucas.moreau@example.com', '+33 1 42 68 53 00', 'FR1420041010050500013M02606')
ON CONFLICT (id) DO UPDATE
    SET name = EXCLUDED.name, email = EXCLUDED.email, phone = EXCLUDED.phone, iban = EXCLUDED.iban;

INSERT INTO shop.orders (id, customer_id, status, total, paid_at) VALUES
    (1001, 1, 'shipped', 84.90, '2026-03-02 09:14:00+00'),
    (1002, 2, 'pending', 129.00, '2026-03-03 17:42:00+00'),
    (1003, 3, 'pending', 42.50, NULL),
    (1004, 1, 'paid', 15.99, '2026-03-04 08:05:00+00'),
    (1005, 4, 'pending', 310.00, '2026-03-04 11:30:00+00')
ON CONFLICT (id) DO UPDATE
    SET customer_id = EXCLUDED.customer_id, status = EXCLUDED.status,
        total = EXCLUDED.total, paid_at = EXCLUDED.paid_at;

COMMIT;
