-- Membership, read-state and realtime-switch changes reach the gateway without telling anyone else.
--
-- Supabase Realtime sends DELETE events to every subscriber of a published table without applying
-- RLS (only the primary key is sent). With `thread_participants` (primary key thread_id, user_id)
-- and `chat_realtime_settings` (primary key user_id) in `supabase_realtime`, any signed-in user
-- who subscribed with supabase-js learned who was removed from which thread, school-wide.
--
-- From here on those two tables are no longer published. Triggers copy each of their changes into
-- `chat_membership_events`, which is published instead:
--   * its primary key is a meaningless number (a DELETE event names no person and no thread);
--   * RLS is on with no policy and anon/authenticated have no privilege at all, so Realtime sends
--     an app user's subscription nothing but `Error 401: Unauthorized` for its INSERTs (it checks
--     SELECT on the primary key first) and an empty `old_record` for its DELETEs; only the service
--     role (the gateway) reads it;
--   * rows are kept only for a few minutes: the gateway calls `chat_prune_membership_events()`
--     every minute. Realtime checks an INSERT against the row when it reads the change, so a row
--     must outlive Realtime's lag; a gateway that missed events while disconnected reloads
--     membership from `thread_participants` anyway.
--
-- Kinds (the gateway turns each into the event it already handled before):
--   join   (thread_id, user_id)                 a participant row appeared
--   leave  (thread_id, user_id)                 a participant row went away (also by cascade)
--   read   (thread_id, user_id, last_read_at)   a participant row was updated
--   switch (user_id, realtime_enabled)          a realtime switch was set; a removed row is `true`

create table public.chat_membership_events (
  id bigint generated always as identity primary key,
  kind text not null check (kind in ('join', 'leave', 'read', 'switch')),
  thread_id uuid,
  user_id uuid not null,
  last_read_at timestamptz,
  realtime_enabled boolean,
  created_at timestamptz not null default now(),
  check ((kind = 'switch') = (thread_id is null)),
  check (kind <> 'read' or last_read_at is not null),
  check (kind <> 'switch' or realtime_enabled is not null)
);

create index chat_membership_events_created_at_idx on public.chat_membership_events (created_at);

alter table public.chat_membership_events enable row level security;
-- No policy on purpose: no app user may read a row, whatever default privileges grant.
revoke all on public.chat_membership_events from public, anon, authenticated;
revoke all on sequence public.chat_membership_events_id_seq from public, anon, authenticated;
grant select, delete on public.chat_membership_events to service_role;

-- Security definer: a user marking a thread read (an UPDATE of their own participant row) must be
-- able to record the event without any right on the events table.
create function public.chat_membership_events_from_participants() returns trigger
language plpgsql security definer
set search_path = ''
as $$
begin
  if tg_op = 'INSERT' then
    insert into public.chat_membership_events (kind, thread_id, user_id)
    values ('join', new.thread_id, new.user_id);
  elsif tg_op = 'DELETE' then
    insert into public.chat_membership_events (kind, thread_id, user_id)
    values ('leave', old.thread_id, old.user_id);
  else
    if (new.thread_id, new.user_id) is distinct from (old.thread_id, old.user_id) then
      insert into public.chat_membership_events (kind, thread_id, user_id)
      values ('leave', old.thread_id, old.user_id), ('join', new.thread_id, new.user_id);
    end if;
    insert into public.chat_membership_events (kind, thread_id, user_id, last_read_at)
    values ('read', new.thread_id, new.user_id, new.last_read_at);
  end if;
  return null;
end
$$;

create trigger chat_membership_events
  after insert or update or delete on public.thread_participants
  for each row execute function public.chat_membership_events_from_participants();

create function public.chat_membership_events_from_switch() returns trigger
language plpgsql security definer
set search_path = ''
as $$
begin
  if tg_op in ('UPDATE', 'DELETE') and (tg_op = 'DELETE' or old.user_id is distinct from new.user_id) then
    insert into public.chat_membership_events (kind, user_id, realtime_enabled)
    values ('switch', old.user_id, true);
  end if;
  if tg_op in ('INSERT', 'UPDATE') then
    insert into public.chat_membership_events (kind, user_id, realtime_enabled)
    values ('switch', new.user_id, new.realtime_enabled);
  end if;
  return null;
end
$$;

create trigger chat_membership_events
  after insert or update or delete on public.chat_realtime_settings
  for each row execute function public.chat_membership_events_from_switch();

-- Deletes events older than p_keep_seconds (at least 60), at most 10,000 per call; returns how
-- many. Called every minute by each gateway instance with the service role.
create function public.chat_prune_membership_events(p_keep_seconds integer default 600) returns integer
language plpgsql security definer
set search_path = ''
as $$
declare
  v_deleted integer;
begin
  delete from public.chat_membership_events
   where id in (select e.id from public.chat_membership_events e
                 where e.created_at < now() - make_interval(secs => greatest(coalesce(p_keep_seconds, 600), 60))
                 order by e.id
                 limit 10000);
  get diagnostics v_deleted = row_count;
  return v_deleted;
end
$$;

revoke all on function public.chat_membership_events_from_participants() from public, anon, authenticated;
revoke all on function public.chat_membership_events_from_switch() from public, anon, authenticated;
revoke all on function public.chat_prune_membership_events(integer) from public, anon, authenticated;
grant execute on function public.chat_prune_membership_events(integer) to service_role;

-- The publication: messages (keyed by the message id) and the events table (keyed by a number).
do $$
begin
  if not exists (select 1 from pg_publication where pubname = 'supabase_realtime') then
    create publication supabase_realtime;
  end if;
  if exists (select 1 from pg_publication_tables
              where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = 'thread_participants') then
    alter publication supabase_realtime drop table public.thread_participants;
  end if;
  if exists (select 1 from pg_publication_tables
              where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = 'chat_realtime_settings') then
    alter publication supabase_realtime drop table public.chat_realtime_settings;
  end if;
  if not exists (select 1 from pg_publication_tables
                  where pubname = 'supabase_realtime' and schemaname = 'public'
                    and tablename = 'chat_membership_events') then
    alter publication supabase_realtime add table public.chat_membership_events;
  end if;
end
$$;
