-- Push notifications to offline recipients: the device registry, muting, presence across gateway
-- instances, and the durable queue every instance works from.
--
-- The path of a message:
--   1. Its INSERT enqueues one job (`chat_push_jobs`, same transaction: a committed message always
--      has its job, a rolled-back one never).
--   2. Once the job is `p_delay_ms` old, one instance claims it (`chat_push_decide`, FOR UPDATE SKIP
--      LOCKED) and decides, in one transaction, who gets a push: every participant of the thread at
--      that moment except the sender, not muted, and with no live session receiving messages on any
--      instance (a presence row that has not expired, and realtime not switched off). It writes one
--      delivery per (message, user, channel) and deletes the job. The decision is therefore made
--      exactly once per (message, user), whichever instance makes it, and an instance dying before
--      its commit leaves the job to another.
--   3. Deliveries are sent by any instance (`chat_push_claim` leases them; `chat_push_finish` ends or
--      reschedules them). A delivery's id is the idempotency key every retry carries (the webhook's
--      `webhook-id`, APNs' `apns-id`, FCM's collapse key): a resend after a crash is recognisable.
--
-- Nothing here is readable by app users except their own devices; the queue tables have RLS with no
-- policy and are not in the Realtime publication.

-- ---------------------------------------------------------------------------------------------
-- Devices
-- ---------------------------------------------------------------------------------------------

create table public.push_devices (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null references public.profiles on delete cascade,
  platform text not null check (platform in ('webpush', 'fcm', 'apns', 'expo')),
  -- FCM registration token, APNs device token (hex) or Expo push token.
  token text check (token is null or char_length(token) between 1 and 4096),
  -- A Web Push subscription.
  endpoint text check (endpoint is null or (char_length(endpoint) <= 2048 and endpoint like 'https://%')),
  p256dh text check (p256dh is null or char_length(p256dh) between 80 and 100),
  auth text check (auth is null or char_length(auth) between 16 and 32),
  locale text check (locale is null or char_length(locale) <= 35),
  created_at timestamptz not null default now(),
  last_used_at timestamptz,
  -- What identifies the device at its provider: one row per device, whoever registers it.
  device_key text generated always as (coalesce(token, endpoint)) stored,
  check (case when platform = 'webpush'
              then endpoint is not null and p256dh is not null and auth is not null and token is null
              else token is not null and endpoint is null and p256dh is null and auth is null end),
  unique (platform, device_key)
);

create index push_devices_user_id_idx on public.push_devices (user_id);

alter table public.push_devices enable row level security;

create policy "push devices: own rows read"
  on public.push_devices for select to authenticated
  using (user_id = (select auth.uid()));

create policy "push devices: own rows removed"
  on public.push_devices for delete to authenticated
  using (user_id = (select auth.uid()));

revoke all on public.push_devices from public, anon, authenticated;
grant select (id, platform, token, endpoint, locale, created_at, last_used_at) on public.push_devices to authenticated;
grant delete on public.push_devices to authenticated;
grant all on public.push_devices to service_role;

-- Registers a device of the caller and returns its id. The same device registered again is the
-- same row (its locale refreshed). A device registered by another user before (a shared phone, a
-- new sign-in) moves to the caller: a device token belongs to whoever is signed in on it now.
-- Security definer for that move only; everything is about auth.uid().
create function public.chat_register_push_device(
  p_platform text,
  p_token text default null,
  p_endpoint text default null,
  p_p256dh text default null,
  p_auth text default null,
  p_locale text default null
) returns uuid
language plpgsql volatile security definer
set search_path = ''
as $$
declare
  v_id uuid;
begin
  if auth.uid() is null then
    raise exception 'a device belongs to a signed-in user' using errcode = '42501';
  end if;
  insert into public.push_devices as d (user_id, platform, token, endpoint, p256dh, auth, locale)
  values (auth.uid(), p_platform, p_token, p_endpoint, p_p256dh, p_auth, p_locale)
  on conflict (platform, device_key) do update
    set user_id = excluded.user_id,
        p256dh = excluded.p256dh,
        auth = excluded.auth,
        locale = coalesce(excluded.locale, d.locale)
  returning d.id into v_id;
  return v_id;
end
$$;

revoke all on function public.chat_register_push_device(text, text, text, text, text, text) from public, anon;
grant execute on function public.chat_register_push_device(text, text, text, text, text, text) to authenticated, service_role;

-- ---------------------------------------------------------------------------------------------
-- Muting: no push for a thread until muted_until (null: not muted)
-- ---------------------------------------------------------------------------------------------

alter table public.thread_participants add column muted_until timestamptz;
grant update (muted_until) on public.thread_participants to authenticated;

-- Sets the caller's muted_until for the thread (null unmutes) and returns it. Raises 42501
-- (PostgREST: 403) when the caller is not a participant.
create function public.chat_mute_thread(p_thread_id uuid, p_until timestamptz) returns timestamptz
language plpgsql volatile security invoker
set search_path = ''
as $$
declare
  v_until timestamptz;
  v_found boolean;
begin
  update public.thread_participants
     set muted_until = p_until
   where thread_id = p_thread_id and user_id = auth.uid()
  returning muted_until, true into v_until, v_found;
  if v_found is null then
    raise exception 'not a participant of thread %', p_thread_id
      using errcode = '42501',
            hint = 'Only participants of a thread can mute it.';
  end if;
  return v_until;
end
$$;

revoke all on function public.chat_mute_thread(uuid, timestamptz) from public, anon;
grant execute on function public.chat_mute_thread(uuid, timestamptz) to authenticated, service_role;

-- A mute is not a read: the membership-event trigger records a `read` event only when
-- last_read_at moved (or the row's identity changed), so muting sends no read-state push.
create or replace function public.chat_membership_events_from_participants() returns trigger
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
    elsif new.last_read_at is not distinct from old.last_read_at then
      return null;
    end if;
    insert into public.chat_membership_events (kind, thread_id, user_id, last_read_at)
    values ('read', new.thread_id, new.user_id, new.last_read_at);
  end if;
  return null;
end
$$;

-- ---------------------------------------------------------------------------------------------
-- Presence: which users have a live session receiving messages, per gateway instance
-- ---------------------------------------------------------------------------------------------

create table public.chat_push_presence (
  instance_id uuid not null,
  user_id uuid not null,
  expires_at timestamptz not null,
  primary key (instance_id, user_id)
);

create index chat_push_presence_user_id_idx on public.chat_push_presence (user_id, expires_at);

alter table public.chat_push_presence enable row level security;
revoke all on public.chat_push_presence from public, anon, authenticated;
grant all on public.chat_push_presence to service_role;

-- One instance's presence report: users that came online (or are still online: `p_online`), users
-- that went away (`p_offline`), and the instance's other rows kept alive. Rows expire after
-- p_ttl_seconds without a report, so a dead instance's users count as offline soon after. Each
-- instance calls it about once a second with what changed, not once per connection.
create function public.chat_push_presence_report(
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
  delete from public.chat_push_presence
   where instance_id = p_instance and user_id = any (coalesce(p_offline, '{}'));
  insert into public.chat_push_presence (instance_id, user_id, expires_at)
  select p_instance, u, v_expires from unnest(coalesce(p_online, '{}')) as u
  on conflict (instance_id, user_id) do update set expires_at = excluded.expires_at;
  update public.chat_push_presence set expires_at = v_expires
   where instance_id = p_instance and expires_at < v_expires;
  delete from public.chat_push_presence where expires_at < now() - interval '1 minute';
  select count(*)::integer into v_rows from public.chat_push_presence where instance_id = p_instance;
  return v_rows;
end
$$;

-- An instance stopping cleanly takes its users offline at once.
create function public.chat_push_presence_clear(p_instance uuid) returns integer
language sql volatile security invoker
set search_path = ''
as $$
  with gone as (delete from public.chat_push_presence where instance_id = p_instance returning 1)
  select count(*)::integer from gone
$$;

-- ---------------------------------------------------------------------------------------------
-- The queue: one job per message, decided once into deliveries
-- ---------------------------------------------------------------------------------------------

create table public.chat_push_jobs (
  message_id uuid primary key references public.messages on delete cascade,
  created_at timestamptz not null default now()
);

create index chat_push_jobs_created_at_idx on public.chat_push_jobs (created_at);

alter table public.chat_push_jobs enable row level security;
revoke all on public.chat_push_jobs from public, anon, authenticated;
grant all on public.chat_push_jobs to service_role;

create function public.chat_push_enqueue() returns trigger
language plpgsql security definer
set search_path = ''
as $$
begin
  insert into public.chat_push_jobs (message_id) values (new.id);
  return null;
end
$$;

create trigger chat_push_enqueue
  after insert on public.messages
  for each row execute function public.chat_push_enqueue();

revoke all on function public.chat_push_enqueue() from public, anon, authenticated;

-- One row per (message, user, channel); channel is a device, or null for the webhook (one call
-- per message and user, whatever devices they have). The id is the idempotency key.
create table public.chat_push_deliveries (
  id uuid primary key default gen_random_uuid(),
  message_id uuid not null references public.messages on delete cascade,
  thread_id uuid not null,
  user_id uuid not null references public.profiles on delete cascade,
  device_id uuid references public.push_devices on delete cascade,
  channel text not null check (channel in ('webhook', 'webpush', 'fcm', 'apns', 'expo')),
  decided_at timestamptz not null default now(),
  state text not null default 'pending' check (state in ('pending', 'sent', 'dropped', 'collapsed')),
  attempts integer not null default 0,
  next_attempt_at timestamptz not null default now(),
  leased_until timestamptz,
  finished_at timestamptz,
  last_error text,
  -- A 'collapsed' delivery: the newer delivery that went out in its place.
  collapsed_into uuid,
  check ((channel = 'webhook') = (device_id is null))
);

create unique index chat_push_deliveries_once_idx
  on public.chat_push_deliveries (message_id, user_id, coalesce(device_id, '00000000-0000-0000-0000-000000000000'::uuid));
create index chat_push_deliveries_due_idx
  on public.chat_push_deliveries (next_attempt_at) where state = 'pending';
create index chat_push_deliveries_finished_idx
  on public.chat_push_deliveries (finished_at) where state <> 'pending';

alter table public.chat_push_deliveries enable row level security;
revoke all on public.chat_push_deliveries from public, anon, authenticated;
grant all on public.chat_push_deliveries to service_role;

-- Decides up to p_limit jobs at least p_delay_ms old: for each, the recipients of that moment (see
-- the top of this file) get one delivery per enabled channel (`p_channels`: 'webhook' and/or the
-- device platforms configured on the calling instance; empty: the jobs are only drained). A message
-- older than p_max_age_seconds (an import, a backlog after a long outage) pushes nobody. Returns
-- {"jobs": decided, "deliveries": written}. Jobs another instance is deciding are skipped, never waited for.
create function public.chat_push_decide(p_delay_ms integer, p_limit integer, p_channels text[],
                                        p_max_age_seconds integer default 3600)
returns jsonb
language plpgsql volatile security invoker
set search_path = ''
as $$
declare
  v_jobs integer;
  v_written integer;
begin
  with claimed as (
    select j.message_id
      from public.chat_push_jobs j
     where j.created_at <= now() - make_interval(secs => greatest(coalesce(p_delay_ms, 0), 0) / 1000.0)
     order by j.created_at
     limit least(greatest(coalesce(p_limit, 100), 1), 1000)
       for update skip locked
  ),
  done as (
    delete from public.chat_push_jobs j using claimed c where j.message_id = c.message_id
    returning j.message_id
  ),
  recipients as (
    select m.id as message_id, m.thread_id, tp.user_id
      from done
      join public.messages m on m.id = done.message_id
      join public.thread_participants tp on tp.thread_id = m.thread_id
     where tp.user_id <> m.sender_id
       and m.created_at > now() - make_interval(secs => greatest(coalesce(p_max_age_seconds, 3600), 1))
       and (tp.muted_until is null or tp.muted_until <= now())
       and not exists (
         select 1 from public.chat_push_presence p
          where p.user_id = tp.user_id and p.expires_at > now()
            and coalesce((select s.realtime_enabled from public.chat_realtime_settings s
                           where s.user_id = tp.user_id), true))
  ),
  channels as (
    select r.message_id, r.thread_id, r.user_id, null::uuid as device_id, 'webhook' as channel
      from recipients r
     where 'webhook' = any (p_channels)
    union all
    select r.message_id, r.thread_id, r.user_id, d.id, d.platform
      from recipients r
      join public.push_devices d on d.user_id = r.user_id
     where d.platform = any (p_channels)
  ),
  written as (
    insert into public.chat_push_deliveries (message_id, thread_id, user_id, device_id, channel)
    select message_id, thread_id, user_id, device_id, channel from channels
    on conflict do nothing
    returning 1
  )
  select (select count(*) from done)::integer, (select count(*) from written)::integer
    into v_jobs, v_written;
  return jsonb_build_object('jobs', v_jobs, 'deliveries', v_written);
end
$$;

-- Leases up to p_limit due deliveries on the caller's channels (`p_channels`) for p_lease_seconds and returns what sending them needs.
-- Bursts collapse, per user, thread and channel (device):
--   * of the pending deliveries not in flight, only the newest message's is sent; the older ones end
--     as 'collapsed' into it, and it carries how many it stands for;
--   * after a push went out on a channel, the next one for that user and thread waits p_gap_seconds
--     (and collapses whatever arrives meanwhile): a busy thread is one notification now and one
--     summary later, not one per message.
-- A lease that runs out (the instance died mid-send) makes the delivery due again, with the same id.
create function public.chat_push_claim(p_channels text[], p_limit integer, p_lease_seconds integer default 60,
                                       p_gap_seconds integer default 10)
returns table (
  id uuid,
  attempts integer,
  channel text,
  user_id uuid,
  thread_id uuid,
  message_id uuid,
  created_at timestamptz,
  content text,
  sender jsonb,
  collapsed integer,
  unread_count integer,
  device jsonb
)
language plpgsql volatile security invoker
set search_path = ''
as $$
declare
  v_lease interval := make_interval(secs => least(greatest(coalesce(p_lease_seconds, 60), 5), 3600));
  v_gap interval := make_interval(secs => least(greatest(coalesce(p_gap_seconds, 10), 0), 3600));
begin
  with keyed as (
    select d.id,
           first_value(d.id) over (partition by d.user_id, d.thread_id, d.channel, d.device_id
                                   order by m.created_at desc, m.id desc) as newest
      from public.chat_push_deliveries d
      join public.messages m on m.id = d.message_id
     where d.state = 'pending' and (d.leased_until is null or d.leased_until < now())
  )
  update public.chat_push_deliveries d
     set state = 'collapsed', finished_at = now(), collapsed_into = k.newest
    from keyed k
   where d.id = k.id and k.newest <> k.id
     and d.state = 'pending' and (d.leased_until is null or d.leased_until < now());

  return query
  with due as (
    select d.id
      from public.chat_push_deliveries d
     where d.state = 'pending' and d.next_attempt_at <= now()
       and (d.leased_until is null or d.leased_until < now())
       and d.channel = any (p_channels)
       and not exists (
         select 1 from public.chat_push_deliveries s
          where s.state = 'sent' and s.user_id = d.user_id and s.thread_id = d.thread_id
            and s.channel = d.channel and s.device_id is not distinct from d.device_id
            and s.finished_at > now() - v_gap)
     order by d.next_attempt_at
     limit least(greatest(coalesce(p_limit, 50), 1), 500)
       for update of d skip locked
  ),
  leased as (
    update public.chat_push_deliveries d
       set leased_until = now() + v_lease, attempts = d.attempts + 1
      from due where d.id = due.id
    returning d.*
  )
  select l.id, l.attempts, l.channel, l.user_id, l.thread_id, l.message_id, m.created_at, m.content,
         jsonb_build_object('full_name', coalesce(p.full_name, 'Unknown'), 'role', coalesce(p.role, 'unknown')),
         (select count(*)::integer from public.chat_push_deliveries c where c.collapsed_into = l.id),
         public.chat_unread_count_of(l.user_id),
         case when dev.id is null then null
              else jsonb_build_object('id', dev.id, 'platform', dev.platform, 'token', dev.token,
                                      'endpoint', dev.endpoint, 'p256dh', dev.p256dh, 'auth', dev.auth,
                                      'locale', dev.locale) end
    from leased l
    join public.messages m on m.id = l.message_id
    left join public.profiles p on p.id = m.sender_id
    left join public.push_devices dev on dev.id = l.device_id;
end
$$;

-- Ends or reschedules a leased delivery:
--   'sent'     delivered (the device's last_used_at is set);
--   'retry'    due again at p_retry_at (a 5xx, 429 or timeout);
--   'dropped'  given up (a 4xx, or out of attempts), p_error kept;
--   'gone'     the provider says the device no longer exists: the device is deleted (and with it
--              its pending deliveries).
-- Returns false when the delivery no longer exists (its device or message was deleted meanwhile).
create function public.chat_push_finish(p_id uuid, p_outcome text, p_error text default null,
                                        p_retry_at timestamptz default null)
returns boolean
language plpgsql volatile security invoker
set search_path = ''
as $$
declare
  v_device uuid;
begin
  if p_outcome not in ('sent', 'retry', 'dropped', 'gone') then
    raise exception 'unknown outcome %', p_outcome using errcode = '22023';
  end if;
  select d.device_id into v_device from public.chat_push_deliveries d where d.id = p_id;
  if not found then
    return false;
  end if;
  if p_outcome = 'gone' then
    update public.chat_push_deliveries
       set state = 'dropped', finished_at = now(), leased_until = null, last_error = p_error
     where id = p_id;
    delete from public.push_devices where id = v_device;
  elsif p_outcome = 'retry' then
    update public.chat_push_deliveries
       set next_attempt_at = coalesce(p_retry_at, now()), leased_until = null, last_error = p_error
     where id = p_id;
  else
    update public.chat_push_deliveries
       set state = p_outcome, finished_at = now(), leased_until = null, last_error = p_error
     where id = p_id;
    if p_outcome = 'sent' and v_device is not null then
      update public.push_devices set last_used_at = now() where id = v_device;
    end if;
  end if;
  return true;
end
$$;

-- The queue at a glance, for metrics and /admin: jobs waiting for a decision, deliveries pending,
-- leased now, and finished in the last hour by state.
create function public.chat_push_stats() returns jsonb
language sql stable security invoker
set search_path = ''
as $$
  select jsonb_build_object(
    'jobs', (select count(*) from public.chat_push_jobs),
    'oldest_job_at', (select min(created_at) from public.chat_push_jobs),
    'pending', (select count(*) from public.chat_push_deliveries where state = 'pending'),
    'leased', (select count(*) from public.chat_push_deliveries
                where state = 'pending' and leased_until > now()),
    'finished_last_hour', coalesce((select jsonb_object_agg(state, n) from (
        select state, count(*) as n from public.chat_push_deliveries
         where state <> 'pending' and finished_at > now() - interval '1 hour'
         group by state) s), '{}'::jsonb),
    'presence', (select count(distinct user_id) from public.chat_push_presence where expires_at > now())
  )
$$;

-- Finished deliveries are kept a day (for /admin and receivers' questions), then deleted, at most
-- 10,000 per call.
create function public.chat_push_prune(p_keep_hours integer default 24) returns integer
language plpgsql volatile security invoker
set search_path = ''
as $$
declare
  v_deleted integer;
begin
  delete from public.chat_push_deliveries
   where id in (select d.id from public.chat_push_deliveries d
                 where d.state <> 'pending'
                   and d.finished_at < now() - make_interval(hours => greatest(coalesce(p_keep_hours, 24), 1))
                 limit 10000);
  get diagnostics v_deleted = row_count;
  return v_deleted;
end
$$;

revoke all on function public.chat_push_presence_report(uuid, uuid[], uuid[], integer) from public, anon, authenticated;
revoke all on function public.chat_push_presence_clear(uuid) from public, anon, authenticated;
revoke all on function public.chat_push_decide(integer, integer, text[], integer) from public, anon, authenticated;
revoke all on function public.chat_push_claim(text[], integer, integer, integer) from public, anon, authenticated;
revoke all on function public.chat_push_finish(uuid, text, text, timestamptz) from public, anon, authenticated;
revoke all on function public.chat_push_stats() from public, anon, authenticated;
revoke all on function public.chat_push_prune(integer) from public, anon, authenticated;
grant execute on function public.chat_push_presence_report(uuid, uuid[], uuid[], integer) to service_role;
grant execute on function public.chat_push_presence_clear(uuid) to service_role;
grant execute on function public.chat_push_decide(integer, integer, text[], integer) to service_role;
grant execute on function public.chat_push_claim(text[], integer, integer, integer) to service_role;
grant execute on function public.chat_push_finish(uuid, text, text, timestamptz) to service_role;
grant execute on function public.chat_push_stats() to service_role;
grant execute on function public.chat_push_prune(integer) to service_role;
