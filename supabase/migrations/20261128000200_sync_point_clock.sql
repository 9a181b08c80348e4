-- chat_sync_point(): db_now read after the open transactions, not at the transaction's start.
--
-- The gateway trusts a horizon H once it has processed a change committed after db_now. That holds
-- only if every transaction that started before H had committed before db_now. The first version
-- returned now(), the start of the calling transaction; PostgREST opens that transaction (BEGIN,
-- role, claims) before the statement that reads pg_stat_activity, so a transaction committing in
-- between was neither counted as open nor committed before db_now, and the live cursor could pass
-- one of its messages before the message reached the gateway (found by tests/chaos.rs).
-- clock_timestamp() after reading the horizon is later than the snapshot of open transactions, and
-- a transaction missing from that snapshot has written its commit record (with its commit time)
-- before it. Same name, arguments and result: the gateway needs no change.
create or replace function public.chat_sync_point() returns jsonb
language plpgsql volatile security invoker
set search_path = ''
as $$
declare
  v_horizon timestamptz := public.chat_sync_horizon();
begin
  return jsonb_build_object('horizon', v_horizon, 'db_now', clock_timestamp());
end
$$;
