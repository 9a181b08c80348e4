-- Thread history and per-thread unread counts, read as the user (row-level security decides).

-- One page of a thread's messages, newest first, strictly before the keyset position
-- (p_before_created_at, p_before_id) when given. Keyset on (created_at, id): a page boundary
-- inside a run of equal created_at (one transaction's messages) neither repeats nor skips a row.
-- Raises 42501 (PostgREST: 403) when the caller cannot read the thread (not, or no longer, a
-- participant), so that an empty page always means "nothing older".
create function public.chat_thread_messages(
  p_thread_id uuid,
  p_before_created_at timestamptz default null,
  p_before_id uuid default null,
  p_limit integer default 50
)
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
  if not exists (select 1 from public.threads t where t.id = p_thread_id) then
    raise exception 'cannot read thread %', p_thread_id
      using errcode = '42501', hint = 'Only participants of a thread read its history.';
  end if;
  if (p_before_created_at is null) <> (p_before_id is null) then
    raise exception 'p_before_created_at and p_before_id go together' using errcode = '22023';
  end if;
  return query
    select m.id, m.thread_id, m.sender_id, m.content, m.message_type, m.created_at,
           jsonb_build_object('full_name', p.full_name, 'role', p.role)
      from public.messages m
      left join public.profiles p on p.id = m.sender_id
     where m.thread_id = p_thread_id
       and (p_before_created_at is null or (m.created_at, m.id) < (p_before_created_at, p_before_id))
     order by m.created_at desc, m.id desc
     limit least(greatest(coalesce(p_limit, 50), 1), 101);
end
$$;

-- The caller's threads with their unread counts (messages of others after the caller's read
-- position, as chat_unread_count() counts them) and the time of their newest message.
create function public.chat_unread_by_thread() returns jsonb
language sql stable security invoker
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object(
           'thread_id', tp.thread_id,
           'unread_count', (select count(*) from public.messages m
                             where m.thread_id = tp.thread_id and m.sender_id <> tp.user_id
                               and m.created_at > tp.last_read_at),
           'last_message_at', (select max(m.created_at) from public.messages m where m.thread_id = tp.thread_id))
         order by tp.thread_id), '[]'::jsonb)
    from public.thread_participants tp
   where tp.user_id = (select auth.uid())
$$;

revoke all on function public.chat_thread_messages(uuid, timestamptz, uuid, integer) from public, anon;
grant execute on function public.chat_thread_messages(uuid, timestamptz, uuid, integer) to authenticated, service_role;
revoke all on function public.chat_unread_by_thread() from public, anon;
grant execute on function public.chat_unread_by_thread() to authenticated, service_role;
