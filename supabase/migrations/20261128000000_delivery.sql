-- Delivery: offline sync that never fails, loops or skips; no forged notices; the realtime switch
-- in the database; a service-only unread count for read-state pushes.
--
-- Applies on top of 20261125000000_chat_schema.sql (never edit that file: it is applied to real
-- projects). Every existing function keeps its name, arguments and result type, so it is replaced
-- in place (`create or replace` keeps its grants).

-- ---------------------------------------------------------------------------------------------
-- Senders of readable messages
-- ---------------------------------------------------------------------------------------------

-- Name and role of the sender of one message, answered only when the caller participates in the
-- message's thread (exactly when RLS lets the caller read the message); null otherwise. Security
-- definer because the profiles policy hides people who no longer share a thread with the caller
-- (a parent who left the class), yet their earlier messages stay readable and need a name. Keyed
-- by message id, never by user id, so it cannot be used to look up an arbitrary profile.
create function chat_private.message_sender(p_message_id uuid) returns jsonb
language sql stable security definer
set search_path = ''
as $$
  select jsonb_build_object('full_name', p.full_name, 'role', p.role)
  from public.messages m
  join public.thread_participants tp
    on tp.thread_id = m.thread_id and tp.user_id = auth.uid()
  join public.profiles p on p.id = m.sender_id
  where m.id = p_message_id
$$;

revoke all on function chat_private.message_sender(uuid) from public, anon;
grant execute on function chat_private.message_sender(uuid) to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- Offline sync
-- ---------------------------------------------------------------------------------------------

-- Messages of the caller's threads with created_at >= p_since (inclusive: the cursor is the sync
-- horizon, which can equal the created_at of a message that was still in flight when it was
-- taken; clients deduplicate by id), oldest first, each with its sender's name and role.
--
-- A page holds the first p_limit rows (clamped to 1..1000) PLUS every further row sharing the
-- created_at of the last of them: one transaction's messages share one created_at, and the
-- cursor is a time, so a page never ends inside such a run. The next cursor after a full page is
-- therefore just after the last row's created_at, and nothing is skipped or returned again.
create or replace function public.chat_offline_messages(p_since timestamptz, p_limit integer default 500)
returns table (
  id uuid,
  thread_id uuid,
  sender_id uuid,
  content text,
  message_type text,
  created_at timestamptz,
  sender jsonb
)
language plpgsql stable security invoker
set search_path = ''
as $$
declare
  v_limit integer := least(greatest(coalesce(p_limit, 500), 1), 1000);
  v_until timestamptz;
begin
  if p_since is null then
    raise exception 'p_since must not be null' using errcode = '22004';
  end if;
  -- The created_at of row number v_limit, or null when fewer rows remain (the whole rest fits).
  -- A stable function reads one snapshot: both queries see the same rows.
  select m.created_at into v_until
    from public.messages m
    join public.thread_participants tp
      on tp.thread_id = m.thread_id and tp.user_id = auth.uid()
   where m.created_at >= p_since
   order by m.created_at, m.id
  offset v_limit - 1
   limit 1;
  return query
    select m.id, m.thread_id, m.sender_id, m.content, m.message_type, m.created_at,
           chat_private.message_sender(m.id)
    from public.messages m
    join public.thread_participants tp
      on tp.thread_id = m.thread_id and tp.user_id = auth.uid()
    where m.created_at >= p_since
      and (v_until is null or m.created_at <= v_until)
    order by m.created_at, m.id;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- Notices are written by the school's systems, never by app users
-- ---------------------------------------------------------------------------------------------

-- Restrictive: applies on top of "messages: participants post as themselves". The service role
-- bypasses RLS and still writes system messages.
create policy "messages: app users do not post system notices"
  on public.messages as restrictive for insert to authenticated
  with check (message_type <> 'system');

-- ---------------------------------------------------------------------------------------------
-- The realtime switch (POST /api/chat/subscribe | unsubscribe), shared by every gateway instance
-- ---------------------------------------------------------------------------------------------

-- No row means realtime delivery is on.
create table public.chat_realtime_settings (
  user_id uuid primary key references public.profiles on delete cascade,
  realtime_enabled boolean not null default true,
  updated_at timestamptz not null default now()
);

create function public.chat_realtime_settings_touch() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.updated_at := now();
  return new;
end
$$;

create trigger chat_realtime_settings_touch
  before insert or update on public.chat_realtime_settings
  for each row execute function public.chat_realtime_settings_touch();

alter table public.chat_realtime_settings enable row level security;

create policy "realtime settings: own row read"
  on public.chat_realtime_settings for select to authenticated
  using (user_id = (select auth.uid()));

create policy "realtime settings: own row created"
  on public.chat_realtime_settings for insert to authenticated
  with check (user_id = (select auth.uid()));

create policy "realtime settings: own row changed"
  on public.chat_realtime_settings for update to authenticated
  using (user_id = (select auth.uid()))
  with check (user_id = (select auth.uid()));

revoke all on public.chat_realtime_settings from anon, authenticated;
grant select on public.chat_realtime_settings to authenticated;
grant insert (user_id, realtime_enabled) on public.chat_realtime_settings to authenticated;
grant update (realtime_enabled) on public.chat_realtime_settings to authenticated;
grant all on public.chat_realtime_settings to service_role;

-- Sets the caller's switch and returns it. Raises 42501 when there is no calling user.
create function public.chat_set_realtime(p_enabled boolean) returns boolean
language plpgsql volatile security invoker
set search_path = ''
as $$
declare
  v_enabled boolean;
begin
  if p_enabled is null then
    raise exception 'p_enabled must not be null' using errcode = '22004';
  end if;
  if auth.uid() is null then
    raise exception 'the realtime switch belongs to a signed-in user' using errcode = '42501';
  end if;
  insert into public.chat_realtime_settings as s (user_id, realtime_enabled)
  values (auth.uid(), p_enabled)
  on conflict (user_id) do update set realtime_enabled = excluded.realtime_enabled
  returning s.realtime_enabled into v_enabled;
  return v_enabled;
end
$$;

-- The caller's switch: true unless they switched realtime delivery off.
create function public.chat_realtime_enabled() returns boolean
language sql stable security invoker
set search_path = ''
as $$
  select coalesce(
    (select s.realtime_enabled from public.chat_realtime_settings s where s.user_id = auth.uid()),
    true
  )
$$;

revoke all on function public.chat_realtime_settings_touch() from public, anon, authenticated;
revoke all on function public.chat_set_realtime(boolean) from public, anon;
revoke all on function public.chat_realtime_enabled() from public, anon;
grant execute on function public.chat_set_realtime(boolean) to authenticated, service_role;
grant execute on function public.chat_realtime_enabled() to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- Unread count of any user, for the gateway's cross-device read-state push (service role only)
-- ---------------------------------------------------------------------------------------------

-- Exactly chat_unread_count() with p_user_id in place of auth.uid().
create function public.chat_unread_count_of(p_user_id uuid) returns integer
language sql stable security invoker
set search_path = ''
as $$
  select count(*)::integer
  from public.messages m
  join public.thread_participants tp
    on tp.thread_id = m.thread_id and tp.user_id = p_user_id
  where m.sender_id <> p_user_id
    and m.created_at > tp.last_read_at
$$;

revoke all on function public.chat_unread_count_of(uuid) from public, anon, authenticated;
grant execute on function public.chat_unread_count_of(uuid) to service_role;

-- ---------------------------------------------------------------------------------------------
-- Realtime: switch changes reach every gateway instance's postgres_changes subscription
-- ---------------------------------------------------------------------------------------------

do $$
begin
  if not exists (select 1 from pg_publication where pubname = 'supabase_realtime') then
    create publication supabase_realtime;
  end if;
  if not exists (select 1 from pg_publication_tables
                  where pubname = 'supabase_realtime' and schemaname = 'public'
                    and tablename = 'chat_realtime_settings') then
    alter publication supabase_realtime add table public.chat_realtime_settings;
  end if;
end
$$;
