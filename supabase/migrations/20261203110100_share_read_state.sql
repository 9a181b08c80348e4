-- Sharing one's read state, set through the gateway (`POST /api/chat/threads/:thread_id/read-state`),
-- so that apps on the plain PostgreSQL backend (no PostgREST) can set it too. On Supabase the same
-- column stays writable on the user's own row through PostgREST (20261203110000_read_state.sql).

-- Sets the caller's share_read_state for the thread and returns it. Raises 42501 (PostgREST: 403)
-- when the caller is not a participant. Not a read: the membership-event trigger records no `read`
-- event (last_read_at does not move), so no receipt or read-state push follows.
create function public.chat_share_read_state(p_thread_id uuid, p_share boolean) returns boolean
language plpgsql volatile security invoker
set search_path = ''
as $$
declare
  v_share boolean;
  v_found boolean;
begin
  if p_share is null then
    raise exception 'p_share must not be null' using errcode = '22004';
  end if;
  update public.thread_participants
     set share_read_state = p_share
   where thread_id = p_thread_id and user_id = auth.uid()
  returning share_read_state, true into v_share, v_found;
  if v_found is null then
    raise exception 'not a participant of thread %', p_thread_id
      using errcode = '42501',
            hint = 'Only participants of a thread can share their read state of it.';
  end if;
  return v_share;
end
$$;

revoke all on function public.chat_share_read_state(uuid, boolean) from public, anon;
grant execute on function public.chat_share_read_state(uuid, boolean) to authenticated, service_role;
