-- What a plain PostgreSQL (15+) needs before the project's migrations, for the gateway's
-- PostgreSQL backend (DATABASE_URL without SUPABASE_URL). Apply it as a superuser (or the
-- database owner with CREATEROLE), BEFORE supabase/migrations/*.sql:
--
--   psql "$ADMIN_URL" -v ON_ERROR_STOP=1 -f supabase/standalone/00_base.sql
--   for f in supabase/migrations/*.sql; do psql "$ADMIN_URL" -v ON_ERROR_STOP=1 -f "$f"; done
--
-- It provides what Supabase provides: the API roles `anon`, `authenticated`, `service_role`
-- (BYPASSRLS), the `auth` schema with `auth.users` and `auth.uid()` / `auth.role()` / `auth.jwt()`
-- reading `request.jwt.claims` exactly as Supabase's do (the gateway sets those claims per
-- transaction, as PostgREST does), Supabase's default grants in `public`, and the
-- `supabase_realtime` publication. And the gateway's own login role, `chat_gateway`: LOGIN and
-- REPLICATION (to create and read its logical replication slot), NOINHERIT and a member of the
-- API roles (like PostgREST's `authenticator`: it has no rights of its own and takes those of
-- `authenticated` for a user's call, of `service_role` for routing lookups). It is never a
-- superuser. Give it a password afterwards: `\password chat_gateway` in psql.
--
-- The local Supabase stand-in (crates/standin) applies this same file to its throwaway clusters
-- as what a Supabase project already has: keep it faithful to Supabase. Never apply it to a
-- Supabase project, and never copy it into supabase/migrations/: there all of it (but the
-- `chat_gateway` role) exists and belongs to Supabase.
--
-- Every statement is guarded: re-running it is harmless, and so is running it on a database
-- restored from a Supabase dump (roles are per cluster and not in a dump; apply this file before
-- restoring so the dump's grants find them, then again after; the dump's own `auth` functions
-- are replaced by identical ones). The server needs `wal_level = logical` (restart after
-- `alter system set wal_level = logical`), and should cap what a stopped gateway's slot may keep
-- with `max_slot_wal_keep_size` (see docs/postgres.md).

do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'anon') then
    create role anon nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin noinherit;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'service_role') then
    create role service_role nologin noinherit bypassrls;
  end if;
  if not exists (select 1 from pg_roles where rolname = 'authenticator') then
    create role authenticator login noinherit;
  end if;
end
$$;

grant anon, authenticated, service_role to authenticator;

create schema if not exists auth;

create table if not exists auth.users (
  id uuid primary key,
  email text unique,
  raw_app_meta_data jsonb not null default '{}'::jsonb,
  raw_user_meta_data jsonb not null default '{}'::jsonb,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);

-- Same definitions as Supabase's: the newer `request.jwt.claims` GUC, falling back to the older
-- per-claim GUCs.
create or replace function auth.uid() returns uuid
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$;

create or replace function auth.role() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
  )::text
$$;

create or replace function auth.jwt() returns jsonb
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;

grant usage on schema auth to anon, authenticated, service_role;
grant execute on function auth.uid(), auth.role(), auth.jwt() to anon, authenticated, service_role;
grant all on all tables in schema auth to service_role;

grant usage on schema public to anon, authenticated, service_role;
-- As on a Supabase project: whatever the project creates in `public` is granted IN FULL to the API
-- roles by default (Supabase runs `alter default privileges for role postgres in schema public grant
-- all on tables|sequences|functions to anon, authenticated, service_role`). RLS and the project's own
-- revokes are what restrict them, so a migration that relies on column grants alone is caught here.
alter default privileges in schema public grant all on tables to anon, authenticated, service_role;
alter default privileges in schema public grant all on sequences to anon, authenticated, service_role;
alter default privileges in schema public grant all on functions to anon, authenticated, service_role;

do $$
begin
  if not exists (select 1 from pg_publication where pubname = 'supabase_realtime') then
    create publication supabase_realtime;
  end if;
end
$$;

do $$
begin
  if not exists (select 1 from pg_roles where rolname = 'chat_gateway') then
    create role chat_gateway login replication noinherit;
  end if;
end
$$;

grant anon, authenticated, service_role to chat_gateway;
