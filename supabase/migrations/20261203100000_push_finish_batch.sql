-- Ends or reschedules a whole leased batch in one call: the sender used to call chat_push_finish
-- once per delivery, one round trip (and one PostgREST request) each. The rules are
-- chat_push_finish's, applied to every element of p_outcomes in order:
--   [{"id": uuid, "outcome": "sent" | "retry" | "dropped" | "gone", "error": text | null,
--     "retry_at": timestamptz | null}, ...]
-- Returns how many of the ids were found. One transaction: an unknown outcome fails the whole
-- batch, whose leases then run out and whose deliveries are sent again with the same ids.

create function public.chat_push_finish_batch(p_outcomes jsonb)
returns integer
language plpgsql volatile security invoker
set search_path = ''
as $$
declare
  v_row record;
  v_found integer := 0;
begin
  for v_row in
    select x.id, x.outcome, x.error, x.retry_at
      from jsonb_to_recordset(coalesce(p_outcomes, '[]'::jsonb))
           as x(id uuid, outcome text, error text, retry_at timestamptz)
  loop
    if public.chat_push_finish(v_row.id, v_row.outcome, v_row.error, v_row.retry_at) then
      v_found := v_found + 1;
    end if;
  end loop;
  return v_found;
end
$$;

revoke all on function public.chat_push_finish_batch(jsonb) from public, anon, authenticated;
grant execute on function public.chat_push_finish_batch(jsonb) to service_role;
