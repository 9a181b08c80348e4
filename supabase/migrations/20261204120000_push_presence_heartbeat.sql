-- Presence for push without rewriting every online user's row every second.
--
-- Until now each instance's report (about once a second) extended `expires_at` on every row it
-- owned: with 8,680 users online that was 8,680 row updates a second, about 3.5 MB of WAL a
-- second, which every logical replication slot on the database (Supabase Realtime's own, the
-- gateway's on the PostgreSQL backend) has to decode, whatever its publication. Measured in the
-- project's benchmark: the Realtime slot's reader took two thirds of a core during fan-out steps
-- that write nothing else.
--
-- Now an instance's liveness is one row, `chat_push_instances` (its heartbeat, moved forward by
-- each report), and `chat_push_online` holds which users are on which instance, written only when
-- a user comes or goes. A user's presence lives as long as the instance's heartbeat; an instance
-- gone for a minute takes its users' rows with it. `chat_push_presence` becomes a view with the
-- same columns, so the readers (`chat_push_decide`, `chat_push_stats`) read what they read before.

create table public.chat_push_instances (
  instance_id uuid primary key,
  expires_at timestamptz not null
);

create table public.chat_push_online (
  instance_id uuid not null references public.chat_push_instances on delete cascade,
  user_id uuid not null,
  primary key (instance_id, user_id)
);

create index chat_push_online_user_id_idx on public.chat_push_online (user_id);

insert into public.chat_push_instances (instance_id, expires_at)
select instance_id, max(expires_at) from public.chat_push_presence group by instance_id;
insert into public.chat_push_online (instance_id, user_id)
select instance_id, user_id from public.chat_push_presence;

drop table public.chat_push_presence;

create view public.chat_push_presence with (security_invoker = true) as
select o.instance_id, o.user_id, i.expires_at
  from public.chat_push_online o
  join public.chat_push_instances i on i.instance_id = o.instance_id;

alter table public.chat_push_instances enable row level security;
alter table public.chat_push_online enable row level security;
revoke all on public.chat_push_instances, public.chat_push_online, public.chat_push_presence
  from public, anon, authenticated;
grant all on public.chat_push_instances, public.chat_push_online to service_role;
grant select on public.chat_push_presence to service_role;

-- The users who came (`p_online`) and went (`p_offline`) on this instance since its last report,
-- and its heartbeat: one row updated however many users are online. Answers how many users this
-- instance has online now; a gateway whose own count differs (its rows were removed after it was
-- silent for a minute) reports all its users again.
create or replace function public.chat_push_presence_report(
  p_instance uuid,
  p_online uuid[],
  p_offline uuid[],
  p_ttl_seconds integer default 30
) returns integer
language plpgsql volatile security invoker
set search_path = ''
as $$
declare
  v_expires timestamptz := now() + make_interval(secs => least(greatest(coalesce(p_ttl_seconds, 30), 2), 600));
  v_rows integer;
begin
  insert into public.chat_push_instances (instance_id, expires_at) values (p_instance, v_expires)
  on conflict (instance_id) do update set expires_at = excluded.expires_at;
  delete from public.chat_push_online
   where instance_id = p_instance and user_id = any (coalesce(p_offline, '{}'));
  insert into public.chat_push_online (instance_id, user_id)
  select p_instance, u from unnest(coalesce(p_online, '{}')) as u
  on conflict do nothing;
  delete from public.chat_push_instances where expires_at < now() - interval '1 minute';
  select count(*)::integer into v_rows from public.chat_push_online where instance_id = p_instance;
  return v_rows;
end
$$;

-- An instance stopping cleanly takes its users offline at once; answers how many.
create or replace function public.chat_push_presence_clear(p_instance uuid) returns integer
language sql volatile security invoker
set search_path = ''
as $$
  -- A data-modifying WITH runs to completion whether read or not; the count sees the rows before it.
  with gone as (delete from public.chat_push_instances where instance_id = p_instance)
  select count(*)::integer from public.chat_push_online where instance_id = p_instance
$$;

revoke all on function public.chat_push_presence_report(uuid, uuid[], uuid[], integer) from public, anon, authenticated;
revoke all on function public.chat_push_presence_clear(uuid) from public, anon, authenticated;
grant execute on function public.chat_push_presence_report(uuid, uuid[], uuid[], integer) to service_role;
grant execute on function public.chat_push_presence_clear(uuid) to service_role;
