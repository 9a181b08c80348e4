-- Indexes for chat_push_claim under a backlog. Each candidate delivery is checked for a push sent
-- to the same user, thread and channel within the gap, and each leased one counts the deliveries
-- collapsed into it; without these both were scans of the whole table per row, and with a few
-- thousand pending deliveries (1,000 offline users in busy threads, `scripts/bench push`) one claim
-- ran past BACKEND_TIMEOUT_SECS and the sender stalled.

create index chat_push_deliveries_recent_sent_idx
  on public.chat_push_deliveries (user_id, thread_id, channel, finished_at) where state = 'sent';

create index chat_push_deliveries_collapsed_into_idx
  on public.chat_push_deliveries (collapsed_into) where collapsed_into is not null;
