-- The request log's own role and database in the stack's PostgreSQL (not MLflow's).
-- Run by the one-shot `request-log-db` service of deploy/compose.yaml on every `up`, as the
-- server's admin role (PGUSER/PGPASSWORD/PGDATABASE) with `psql -v ON_ERROR_STOP=1`:
-- idempotent, and a changed HOUSING_DB_PASSWORD replaces the old one. Names and password
-- come from the environment (\getenv, psql 15+), quoted by format(%I, %L), never spliced
-- into the SQL text by a shell.
\getenv housing_user HOUSING_DB_USER
\getenv housing_password HOUSING_DB_PASSWORD
\getenv housing_db HOUSING_DB_NAME

-- Refuse an empty password, and a role or database that is the admin's or MLflow's (the
-- ALTER ROLE below would strip the admin of its rights). Each check fails with its reason.
SELECT length(:'housing_password') = 0 AS empty_password,
       :'housing_user' = current_user AS user_is_admin,
       :'housing_db' = current_database() AS db_is_admin \gset
\if :empty_password
DO $$ BEGIN RAISE EXCEPTION 'HOUSING_DB_PASSWORD is empty: set it in deploy/.env'; END $$;
\endif
\if :user_is_admin
DO $$ BEGIN RAISE EXCEPTION 'HOUSING_DB_USER must differ from POSTGRES_USER'; END $$;
\endif
\if :db_is_admin
DO $$ BEGIN RAISE EXCEPTION 'HOUSING_DB_NAME must differ from POSTGRES_DB'; END $$;
\endif

SELECT format('CREATE ROLE %I LOGIN', :'housing_user')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'housing_user') \gexec
SELECT format('ALTER ROLE %I WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %L',
              :'housing_user', :'housing_password') \gexec

SELECT format('CREATE DATABASE %I OWNER %I', :'housing_db', :'housing_user')
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'housing_db') \gexec

-- Only its owner (and the admin) may connect to the request log, and only the admin to
-- MLflow's database: a leaked request-log password does not open the model registry.
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', :'housing_db') \gexec
SELECT format('GRANT CONNECT, TEMPORARY ON DATABASE %I TO %I', :'housing_db', :'housing_user') \gexec
SELECT format('REVOKE CONNECT ON DATABASE %I FROM PUBLIC', current_database())
WHERE current_database() <> :'housing_db' \gexec
