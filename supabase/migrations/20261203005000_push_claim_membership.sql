-- Push deliveries are checked against the thread's membership when they are leased for sending,
-- not only when they are decided: removal from a thread between the decision and a (re)try means
-- no push. Everything else about the claim is as before (see 20261203002000_push.sql).

create or replace function public.chat_push_claim(p_channels text[], p_limit integer, p_lease_seconds integer default 60,
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
  -- Membership is checked again at send time: a user removed from the thread after the decision
  -- (or during retries) gets no push, and its preview never leaves.
  update public.chat_push_deliveries d
     set state = 'dropped', finished_at = now(), leased_until = null,
         last_error = 'no longer a participant of the thread'
   where d.state = 'pending' and (d.leased_until is null or d.leased_until < now())
     and not exists (select 1 from public.thread_participants tp
                      where tp.thread_id = d.thread_id and tp.user_id = d.user_id);

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
