-- What the gateway's router reads with the service role: the sync point behind the resume cursor
-- stamped on live frames, and keyset pages of messages for filling a gap after an upstream loss.

-- The sync horizon (see chat_sync_horizon) read together with the database's clock, in one
-- statement. Once the gateway has processed a change committed after db_now, every message with
-- created_at before horizon has reached it.
create function public.chat_sync_point() returns jsonb
language sql stable security invoker
set search_path = ''
as $$
  select jsonb_build_object('horizon', public.chat_sync_horizon(), 'db_now', now())
$$;

-- Messages with created_at >= p_since, after the keyset position (p_after_created_at, p_after_id)
-- when given, oldest first, at most p_limit (1..5000). Keyset pagination: a page boundary inside
-- a run of equal created_at (one transaction's inserts) neither repeats nor skips a row.
create function public.chat_messages_page(
  p_since timestamptz,
  p_after_created_at timestamptz default null,
  p_after_id uuid default null,
  p_limit integer default 1000
)
returns setof public.messages
language sql stable security invoker
set search_path = ''
as $$
  select m.*
  from public.messages m
  where m.created_at >= p_since
    and (p_after_created_at is null
         or (m.created_at, m.id) > (p_after_created_at, coalesce(p_after_id, '00000000-0000-0000-0000-000000000000'::uuid)))
  order by m.created_at, m.id
  limit least(greatest(coalesce(p_limit, 1000), 1), 5000)
$$;

revoke all on function public.chat_sync_point() from public, anon;
revoke all on function public.chat_messages_page(timestamptz, timestamptz, uuid, integer) from public, anon, authenticated;
grant execute on function public.chat_sync_point() to authenticated, service_role;
grant execute on function public.chat_messages_page(timestamptz, timestamptz, uuid, integer) to service_role;
