-- The role the example configurations dial the local PostgreSQL with: not a superuser,
-- no server files, no programs, no row-level security bypass, no roles or databases of
-- its own. `scripts/serve` runs this file (safe to run again) in database "test":
--   psql -h 127.0.0.1 -U postgres -d test -f examples/demo_role.sql
--
-- Grants (docs/policy.md, "Least privilege"): connect to "test"; use and create in its
-- own schema "demo", which is first on its search_path, and read the schema "public".
-- Whatever the gateway's policy lets through, the database itself stops at this.
-- Trust authentication on the local server means no password; on a real server give it
-- one and hand it to the gateway as password: env:DEMO_PG_PASSWORD (or secret:NAME).

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'wardgate_demo') THEN
        CREATE ROLE wardgate_demo LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
    END IF;
END
$$;

GRANT CONNECT ON DATABASE test TO wardgate_demo;
CREATE SCHEMA IF NOT EXISTS demo AUTHORIZATION wardgate_demo;
GRANT USAGE ON SCHEMA public TO wardgate_demo;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO wardgate_demo;
ALTER ROLE wardgate_demo IN DATABASE test SET search_path = demo, public;
