-- Whether chat_sync_horizon() can see other sessions' transactions.
--
-- chat_sync_horizon() is security definer and reads pg_stat_activity.xact_start of every client
-- session. PostgreSQL shows another role's xact_start only to superusers and members of
-- pg_read_all_stats; for anyone else it is NULL, and the horizon silently becomes now(): an
-- offline cursor could then pass a message that is still committing. The gateway calls this at
-- start-up (service role) and refuses to start when `sees_all_sessions` is false, saying what to
-- grant. `owner` is the function owner's name quoted as an identifier, ready for
-- `GRANT pg_read_all_stats TO <owner>;`.
create function public.chat_sync_horizon_check() returns jsonb
language sql stable security definer
set search_path = ''
as $$
  select jsonb_build_object(
    'owner', pg_catalog.quote_ident(r.rolname::text),
    'sees_all_sessions', r.rolsuper or pg_catalog.pg_has_role(r.oid, 'pg_read_all_stats', 'USAGE')
  )
    from pg_catalog.pg_proc p
    join pg_catalog.pg_roles r on r.oid = p.proowner
   where p.oid = 'public.chat_sync_horizon()'::pg_catalog.regprocedure
$$;

revoke all on function public.chat_sync_horizon_check() from public, anon, authenticated;
grant execute on function public.chat_sync_horizon_check() to service_role;
