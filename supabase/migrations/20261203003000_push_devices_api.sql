-- Devices through the gateway's REST API (`/api/chat/devices`): listing and removal as the user
-- (row-level security decides), and a bound on devices per user.
--
-- A user registering devices without end (a script, a buggy app registering a new token on every
-- start) must not make every message to them a thousand pushes: a user keeps at most
-- chat_push_device_cap() devices, and registering one more removes the one registered or used
-- longest ago. Nobody is locked out: the newest registration always succeeds.

alter table public.push_devices add column registered_at timestamptz not null default now();

create function public.chat_push_device_cap() returns integer
language sql immutable
set search_path = ''
as $$ select 20 $$;

-- Registers a device of the caller and returns its id. The same device registered again is the
-- same row (its keys and locale refreshed, its registration time now). A device registered by
-- another user before (a shared phone, a new sign-in) moves to the caller: a device token belongs
-- to whoever is signed in on it now. Past the cap, the caller's stalest devices are removed.
-- Security definer for that move only; everything is about auth.uid().
create or replace function public.chat_register_push_device(
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
        locale = coalesce(excluded.locale, d.locale),
        registered_at = now()
  returning d.id into v_id;
  delete from public.push_devices
   where id in (select id from public.push_devices
                 where user_id = auth.uid() and id <> v_id
                 order by greatest(registered_at, coalesce(last_used_at, registered_at)) desc, id
                offset public.chat_push_device_cap() - 1);
  return v_id;
end
$$;

-- The caller's devices, newest registration first (never the Web Push keys).
create function public.chat_push_devices() returns jsonb
language sql stable security invoker
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object(
           'id', d.id, 'platform', d.platform, 'token', d.token, 'endpoint', d.endpoint,
           'locale', d.locale, 'created_at', d.created_at, 'last_used_at', d.last_used_at)
         order by d.created_at desc, d.id), '[]'::jsonb)
    from public.push_devices d
   where d.user_id = (select auth.uid())
$$;

-- Removes one of the caller's devices; false when the caller has no such device (row-level
-- security hides other users' devices, so they read as absent).
create function public.chat_unregister_push_device(p_id uuid) returns boolean
language plpgsql volatile security invoker
set search_path = ''
as $$
declare
  v_found boolean;
begin
  delete from public.push_devices where id = p_id and user_id = (select auth.uid())
  returning true into v_found;
  return coalesce(v_found, false);
end
$$;

-- Own rows only (row-level security); the Web Push keys stay unreadable.
grant select (user_id, registered_at) on public.push_devices to authenticated;
revoke all on function public.chat_push_device_cap() from public, anon;
grant execute on function public.chat_push_device_cap() to authenticated, service_role;
revoke all on function public.chat_push_devices() from public, anon;
grant execute on function public.chat_push_devices() to authenticated, service_role;
revoke all on function public.chat_unregister_push_device(uuid) from public, anon;
grant execute on function public.chat_unregister_push_device(uuid) to authenticated, service_role;
