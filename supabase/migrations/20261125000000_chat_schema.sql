-- School chat: profiles, threads, participants, messages; row-level security; the functions the
-- realtime gateway calls through PostgREST; Realtime publication membership.
--
-- Apply to a Supabase project with `supabase db push` (or psql as the `postgres` role).

-- ---------------------------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------------------------

create table public.profiles (
  id uuid primary key references auth.users (id) on delete cascade,
  full_name text not null,
  role text not null check (role in ('teacher', 'parent', 'student', 'admin'))
);

create table public.threads (
  id uuid primary key default gen_random_uuid(),
  title text,
  created_at timestamptz not null default now()
);

create table public.thread_participants (
  thread_id uuid references public.threads on delete cascade,
  user_id uuid references public.profiles on delete cascade,
  last_read_at timestamptz not null default now(),
  joined_at timestamptz not null default now(),
  primary key (thread_id, user_id)
);

-- "Which threads is this user in?" (RLS checks, offline sync, unread count).
create index thread_participants_user_id_idx on public.thread_participants (user_id, thread_id);

create table public.messages (
  id uuid primary key default gen_random_uuid(),
  thread_id uuid not null references public.threads on delete cascade,
  sender_id uuid not null references public.profiles,
  content text not null check (char_length(content) between 1 and 4000),
  message_type text not null default 'text'
    check (message_type in ('text', 'image', 'file', 'system')),
  created_at timestamptz not null default now()
);

-- Per-thread history and unread counting; global "since" scans for offline sync and catch-up.
create index messages_thread_id_created_at_idx on public.messages (thread_id, created_at);
create index messages_created_at_idx on public.messages (created_at);
create index messages_sender_id_idx on public.messages (sender_id);

-- A message written by an app user is stamped with the transaction's start time, never a time the
-- client chose. The offline-sync cursor (see chat_sync_horizon) relies on it: a row's created_at is
-- never earlier than the start of the transaction that inserted it. Service-role and superuser
-- writes (imports, seeds) may set created_at explicitly.
create function public.messages_stamp_created_at() returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if current_user in ('anon', 'authenticated') then
    new.created_at := now();
  end if;
  return new;
end
$$;

create trigger messages_stamp_created_at
  before insert on public.messages
  for each row execute function public.messages_stamp_created_at();

-- ---------------------------------------------------------------------------------------------
-- Row-level security
-- ---------------------------------------------------------------------------------------------

-- Helpers run as their owner so that policies on thread_participants can consult
-- thread_participants without recursing into their own policy. They only ever answer questions
-- about the calling user (auth.uid()), so exposing them leaks nothing about others.
create schema if not exists chat_private;
grant usage on schema chat_private to authenticated, service_role;

create function chat_private.is_thread_participant(p_thread_id uuid) returns boolean
language sql stable security definer
set search_path = ''
as $$
  select exists (
    select 1 from public.thread_participants tp
    where tp.thread_id = p_thread_id and tp.user_id = auth.uid()
  )
$$;

create function chat_private.shares_thread_with(p_user_id uuid) returns boolean
language sql stable security definer
set search_path = ''
as $$
  select exists (
    select 1
    from public.thread_participants mine
    join public.thread_participants theirs on theirs.thread_id = mine.thread_id
    where mine.user_id = auth.uid() and theirs.user_id = p_user_id
  )
$$;

revoke all on function chat_private.is_thread_participant(uuid) from public;
revoke all on function chat_private.shares_thread_with(uuid) from public;
grant execute on function chat_private.is_thread_participant(uuid) to authenticated, service_role;
grant execute on function chat_private.shares_thread_with(uuid) to authenticated, service_role;

alter table public.profiles enable row level security;
alter table public.threads enable row level security;
alter table public.thread_participants enable row level security;
alter table public.messages enable row level security;

create policy "profiles: own and people sharing a thread"
  on public.profiles for select to authenticated
  using (id = (select auth.uid()) or chat_private.shares_thread_with(id));

create policy "threads: participants read"
  on public.threads for select to authenticated
  using (chat_private.is_thread_participant(id));

create policy "participants: members of the thread read"
  on public.thread_participants for select to authenticated
  using (chat_private.is_thread_participant(thread_id));

create policy "participants: own read state is updated by its owner"
  on public.thread_participants for update to authenticated
  using (user_id = (select auth.uid()))
  with check (user_id = (select auth.uid()));

create policy "messages: participants read"
  on public.messages for select to authenticated
  using (chat_private.is_thread_participant(thread_id));

create policy "messages: participants post as themselves"
  on public.messages for insert to authenticated
  with check (sender_id = (select auth.uid()) and chat_private.is_thread_participant(thread_id));

-- Table privileges: explicit, so the schema behaves the same whatever default privileges a
-- project has. On Supabase, new tables in `public` start with ALL granted to anon and
-- authenticated; without revoking that from authenticated too, the column grants below would
-- restrict nothing (a user could, for instance, move their own thread_participants row into any
-- thread). App users never use the anon role for chat.
revoke all on public.profiles, public.threads, public.thread_participants, public.messages from anon, authenticated;
grant select on public.profiles, public.threads, public.thread_participants, public.messages to authenticated;
grant insert (thread_id, sender_id, content, message_type) on public.messages to authenticated;
grant update (last_read_at) on public.thread_participants to authenticated;
grant all on public.profiles, public.threads, public.thread_participants, public.messages to service_role;

-- ---------------------------------------------------------------------------------------------
-- Functions called by the gateway through PostgREST (security invoker: RLS applies)
-- ---------------------------------------------------------------------------------------------

-- Messages of the caller's threads committed with created_at > p_since, oldest first, each with
-- its sender's name and role. p_limit is clamped to 1..1000.
create function public.chat_offline_messages(p_since timestamptz, p_limit integer default 500)
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
begin
  if p_since is null then
    raise exception 'p_since must not be null' using errcode = '22004';
  end if;
  return query
    select m.id, m.thread_id, m.sender_id, m.content, m.message_type, m.created_at,
           jsonb_build_object('full_name', p.full_name, 'role', p.role)
    from public.messages m
    join public.thread_participants tp
      on tp.thread_id = m.thread_id and tp.user_id = auth.uid()
    left join public.profiles p on p.id = m.sender_id
    where m.created_at > p_since
    order by m.created_at, m.id
    limit least(greatest(coalesce(p_limit, 500), 1), 1000);
end
$$;

-- Messages in the caller's threads, not sent by the caller, newer than the caller's last_read_at
-- for that thread.
create function public.chat_unread_count() returns integer
language sql stable security invoker
set search_path = ''
as $$
  select count(*)::integer
  from public.messages m
  join public.thread_participants tp
    on tp.thread_id = m.thread_id and tp.user_id = auth.uid()
  where m.sender_id <> auth.uid()
    and m.created_at > tp.last_read_at
$$;

-- Sets the caller's last_read_at for the thread to now and returns it. Raises 42501
-- (PostgREST: 403) when the caller is not a participant: never a silent no-op.
create function public.chat_mark_thread_read(p_thread_id uuid) returns timestamptz
language plpgsql volatile security invoker
set search_path = ''
as $$
declare
  v_read_at timestamptz;
begin
  update public.thread_participants
     set last_read_at = greatest(last_read_at, now())
   where thread_id = p_thread_id and user_id = auth.uid()
  returning last_read_at into v_read_at;
  if not found then
    raise exception 'not a participant of thread %', p_thread_id
      using errcode = '42501',
            hint = 'Only participants of a thread can mark it read.';
  end if;
  return v_read_at;
end
$$;

-- The offline-sync cursor. Returns the latest time T such that every message with created_at < T
-- that will ever exist is already committed: the start time of the oldest transaction still open
-- in this database (a message's created_at is its transaction's start time, see the trigger
-- above), or now() when none is. A client that resumes from T never misses a message that
-- committed late; it may see a message twice, and deduplicates by id. Transactions open for more
-- than five minutes are ignored so that one forgotten session cannot hold every cursor back.
-- Security definer: reading other sessions' xact_start needs pg_read_all_stats, which the
-- function's owner (postgres) has and app users do not.
create function public.chat_sync_horizon() returns timestamptz
language sql stable security definer
set search_path = ''
as $$
  select least(
    now(),
    coalesce(
      (select min(a.xact_start)
         from pg_catalog.pg_stat_activity a
        where a.datname = current_database()
          and a.backend_type = 'client backend'
          and a.pid <> pg_catalog.pg_backend_pid()
          and a.xact_start is not null
          and a.xact_start > now() - interval '5 minutes'),
      now()
    )
  )
$$;

revoke all on function public.chat_offline_messages(timestamptz, integer) from public, anon;
revoke all on function public.chat_unread_count() from public, anon;
revoke all on function public.chat_mark_thread_read(uuid) from public, anon;
revoke all on function public.chat_sync_horizon() from public, anon;
grant execute on function public.chat_offline_messages(timestamptz, integer) to authenticated, service_role;
grant execute on function public.chat_unread_count() to authenticated, service_role;
grant execute on function public.chat_mark_thread_read(uuid) to authenticated, service_role;
grant execute on function public.chat_sync_horizon() to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- Realtime: new messages and membership changes reach the gateway's postgres_changes subscription
-- ---------------------------------------------------------------------------------------------

do $$
begin
  if not exists (select 1 from pg_publication where pubname = 'supabase_realtime') then
    create publication supabase_realtime;
  end if;
  if not exists (select 1 from pg_publication_tables
                  where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = 'messages') then
    alter publication supabase_realtime add table public.messages;
  end if;
  if not exists (select 1 from pg_publication_tables
                  where pubname = 'supabase_realtime' and schemaname = 'public' and tablename = 'thread_participants') then
    alter publication supabase_realtime add table public.thread_participants;
  end if;
end
$$;
