-- Read state: who may see whose reading, decided here so that both store backends (PostgREST and
-- plain PostgreSQL) answer the same, and row-level security stays the final word.
--
-- The rules, for a viewer in a thread (the viewer is never told about themselves):
--   * staff (role 'teacher' or 'admin') see every other participant's last_read_at;
--   * in a 1:1 thread (exactly two participants) each sees the other's;
--   * anyone else (a parent or a student in a group thread) sees nobody's, only counts
--     ("seen by 24 of 30");
--   * a participant with share_read_state = false is counted but never named, to anyone.
-- Counts: for a message, `of` is the thread's participants other than its sender and `seen_by`
-- those of them whose last_read_at >= the message's created_at.
--
-- Privacy: until now every member of a thread could select the other members' participant rows
-- (and so their last_read_at, muted_until) straight through PostgREST, which would defeat the
-- rules above. From here on an app user selects only their own participant row; who else is in a
-- thread stays answerable through the functions below (and profiles, as before). The gateway reads
-- memberships with the service role, and every user-token function reads only the caller's row.

alter table public.thread_participants add column share_read_state boolean not null default true;
grant update (share_read_state) on public.thread_participants to authenticated;

drop policy "participants: members of the thread read" on public.thread_participants;

create policy "participants: own row read"
  on public.thread_participants for select to authenticated
  using (user_id = (select auth.uid()));

-- Whether a viewer of role p_viewer_role, in a thread of p_participants participants, may see a
-- reader named who shares their read state (p_reader_shares). The one place the rules live.
create function chat_private.sees_reader(p_viewer_role text, p_participants integer, p_reader_shares boolean)
returns boolean
language sql immutable
set search_path = ''
as $$
  select coalesce(p_reader_shares, false)
     and (p_viewer_role in ('teacher', 'admin') or p_participants = 2)
$$;

revoke all on function chat_private.sees_reader(text, integer, boolean) from public, anon;
grant execute on function chat_private.sees_reader(text, integer, boolean) to authenticated, service_role;

-- The read state of a thread for the caller (auth.uid()):
--   {"participants": [{"user_id", "full_name", "role", "last_read_at"}, ...],   other participants
--                                                       the caller may see, by full_name
--    "messages": [{"message_id", "seen_by", "of"}, ...]}  the newest p_messages (clamped to 1..100),
--                                                       newest first
-- Raises 42501 (PostgREST: 403) when the caller is not a participant of the thread. Security
-- definer: others' participant rows are no longer readable by app users; this function reads
-- them and answers only what the rules let the caller see.
create function public.chat_read_state(p_thread_id uuid, p_messages integer default 20) returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
declare
  v_me uuid := auth.uid();
  v_role text;
  v_count integer;
  v_participants jsonb;
  v_messages jsonb;
begin
  select p.role into v_role
    from public.thread_participants tp
    join public.profiles p on p.id = tp.user_id
   where tp.thread_id = p_thread_id and tp.user_id = v_me;
  if not found then
    raise exception 'not a participant of thread %', p_thread_id
      using errcode = '42501', hint = 'Only participants of a thread read its read state.';
  end if;
  select count(*)::integer into v_count from public.thread_participants tp where tp.thread_id = p_thread_id;
  select coalesce(jsonb_agg(jsonb_build_object(
           'user_id', tp.user_id, 'full_name', p.full_name, 'role', p.role, 'last_read_at', tp.last_read_at)
           order by p.full_name, tp.user_id), '[]'::jsonb)
    into v_participants
    from public.thread_participants tp
    join public.profiles p on p.id = tp.user_id
   where tp.thread_id = p_thread_id and tp.user_id <> v_me
     and chat_private.sees_reader(v_role, v_count, tp.share_read_state);
  select coalesce(jsonb_agg(jsonb_build_object('message_id', m.id, 'seen_by', s.seen_by, 'of', s.total)
           order by m.created_at desc, m.id desc), '[]'::jsonb)
    into v_messages
    from (select m.id, m.sender_id, m.created_at
            from public.messages m
           where m.thread_id = p_thread_id
           order by m.created_at desc, m.id desc
           limit least(greatest(coalesce(p_messages, 20), 1), 100)) m
    cross join lateral (
      select (count(*) filter (where tp.last_read_at >= m.created_at))::integer as seen_by,
             count(*)::integer as total
        from public.thread_participants tp
       where tp.thread_id = p_thread_id and tp.user_id <> m.sender_id) s;
  return jsonb_build_object('participants', v_participants, 'messages', v_messages);
end
$$;

revoke all on function public.chat_read_state(uuid, integer) from public, anon;
grant execute on function public.chat_read_state(uuid, integer) to authenticated, service_role;

-- A live read receipt (service role only: the gateway, when p_reader's last_read_at moved):
--   {"reader": {"user_id", "full_name", "role"}, "last_read_at": the reader's current one,
--    "message_id": the thread's newest message (null when it has none),
--    "seen_by", "of": that message's counts, as chat_read_state counts them,
--    "viewers": [{"user_id", "named"}, ...]}   every other participant, and whether the rules let
--                                              them see the reader named
-- Null when p_reader is not (or no longer) a participant of the thread.
create function public.chat_read_receipt(p_thread_id uuid, p_reader uuid) returns jsonb
language plpgsql stable security definer
set search_path = ''
as $$
declare
  v_reader record;
  v_count integer;
  v_newest_id uuid;
  v_newest_sender uuid;
  v_newest_at timestamptz;
  v_seen integer := 0;
  v_of integer := 0;
  v_viewers jsonb;
begin
  select tp.user_id, tp.last_read_at, tp.share_read_state, p.full_name, p.role into v_reader
    from public.thread_participants tp
    join public.profiles p on p.id = tp.user_id
   where tp.thread_id = p_thread_id and tp.user_id = p_reader;
  if not found then
    return null;
  end if;
  select count(*)::integer into v_count from public.thread_participants tp where tp.thread_id = p_thread_id;
  select m.id, m.sender_id, m.created_at into v_newest_id, v_newest_sender, v_newest_at
    from public.messages m
   where m.thread_id = p_thread_id
   order by m.created_at desc, m.id desc
   limit 1;
  if found then
    select (count(*) filter (where tp.last_read_at >= v_newest_at))::integer, count(*)::integer
      into v_seen, v_of
      from public.thread_participants tp
     where tp.thread_id = p_thread_id and tp.user_id <> v_newest_sender;
  end if;
  select coalesce(jsonb_agg(jsonb_build_object(
           'user_id', tp.user_id,
           'named', chat_private.sees_reader(p.role, v_count, v_reader.share_read_state))
           order by tp.user_id), '[]'::jsonb)
    into v_viewers
    from public.thread_participants tp
    join public.profiles p on p.id = tp.user_id
   where tp.thread_id = p_thread_id and tp.user_id <> p_reader;
  return jsonb_build_object(
    'reader', jsonb_build_object('user_id', v_reader.user_id, 'full_name', v_reader.full_name, 'role', v_reader.role),
    'last_read_at', v_reader.last_read_at,
    'message_id', v_newest_id,
    'seen_by', v_seen,
    'of', v_of,
    'viewers', v_viewers);
end
$$;

revoke all on function public.chat_read_receipt(uuid, uuid) from public, anon, authenticated;
grant execute on function public.chat_read_receipt(uuid, uuid) to service_role;
