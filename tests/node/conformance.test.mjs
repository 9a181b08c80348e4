// Conformance of the local Supabase stand-ins with Supabase's own JavaScript client.
//
// Run by tests/supabase_js.rs, which starts the stand-in stack and passes its
// coordinates in the environment. Uses @supabase/supabase-js exactly as an app would (Node 20
// needs the `ws` package as the realtime transport) and `pg` for "a row inserted with SQL".
import { test, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import pg from "pg";
import { createClient } from "@supabase/supabase-js";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`missing environment variable ${name}`);
  return v;
};
const URL_ = env("SUPABASE_URL");
const ANON = env("SUPABASE_ANON_KEY");
const SERVICE = env("SUPABASE_SERVICE_ROLE_KEY");
const DB = env("DATABASE_URL");
const CARLA = { id: env("CARLA_ID"), token: env("CARLA_TOKEN"), tokenEs: env("CARLA_TOKEN_ES256") };
const FARID = { id: env("FARID_ID"), token: env("FARID_TOKEN") };
const ALICE_ID = env("ALICE_ID");
const CLASS_3B = env("CLASS_3B_PARENTS");
const CLASS_4A = env("CLASS_4A_PARENTS");

const db = new pg.Client({ connectionString: DB });
await db.connect();
const clients = [];
after(async () => {
  for (const c of clients) {
    await c.removeAllChannels();
    c.realtime.disconnect();
  }
  await db.end();
});

function client({ key = ANON, token, vsn } = {}) {
  const options = {
    auth: { persistSession: false, autoRefreshToken: false },
    realtime: { transport: WebSocket, ...(vsn ? { vsn } : {}) },
  };
  if (token) options.accessToken = async () => token;
  const c = createClient(URL_, key, options);
  clients.push(c);
  return c;
}

async function insertMessage(threadId, content) {
  const r = await db.query(
    "insert into public.messages (thread_id, sender_id, content) values ($1, $2, $3) returning id",
    [threadId, ALICE_ID, content],
  );
  return r.rows[0].id;
}

function subscribed(channel) {
  return new Promise((resolve, reject) => {
    channel.subscribe((status, err) => {
      if (status === "SUBSCRIBED") resolve();
      else if (status === "CHANNEL_ERROR" || status === "TIMED_OUT" || status === "CLOSED")
        reject(new Error(`channel ${status}: ${err?.message ?? ""}`));
    });
  });
}

function within(ms, promise, what) {
  return Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), ms)),
  ]);
}

for (const vsn of ["1.0.0", "2.0.0"]) {
  test(`realtime vsn ${vsn}: postgres_changes INSERT on messages arrives for a row inserted with SQL`, async () => {
    const supabase = client({ key: SERVICE, vsn });
    const received = [];
    let wake;
    const channel = supabase
      .channel(`conformance-${vsn}`)
      .on("postgres_changes", { event: "INSERT", schema: "public", table: "messages" }, (payload) => {
        received.push(payload);
        wake?.();
      });
    await within(15000, subscribed(channel), "SUBSCRIBED");
    // The system "Subscribed to PostgreSQL" message may follow the join reply: give it a moment.
    await new Promise((r) => setTimeout(r, 300));
    const id = await insertMessage(CLASS_3B, `hello over vsn ${vsn}`);
    await within(15000, new Promise((resolve) => {
      wake = () => received.some((p) => p.new?.id === id) && resolve();
      wake();
    }), "the INSERT event");
    const event = received.find((p) => p.new?.id === id);
    assert.equal(event.eventType, "INSERT");
    assert.equal(event.schema, "public");
    assert.equal(event.table, "messages");
    assert.equal(event.new.thread_id, CLASS_3B);
    assert.equal(event.new.content, `hello over vsn ${vsn}`);
    assert.ok(!Number.isNaN(Date.parse(event.commit_timestamp)), `commit_timestamp ${event.commit_timestamp}`);
    assert.deepEqual(event.errors, null);
    await supabase.removeChannel(channel);
  });
}

test("realtime: a filter thread_id=eq.<uuid> only passes that thread's rows", async () => {
  const supabase = client({ key: SERVICE });
  const received = [];
  let wake;
  const channel = supabase
    .channel("conformance-filter")
    .on("postgres_changes", { event: "INSERT", schema: "public", table: "messages", filter: `thread_id=eq.${CLASS_3B}` }, (p) => {
      received.push(p);
      wake?.();
    });
  await within(15000, subscribed(channel), "SUBSCRIBED");
  await new Promise((r) => setTimeout(r, 300));
  const other = await insertMessage(CLASS_4A, "not for this filter");
  const mine = await insertMessage(CLASS_3B, "for this filter");
  await within(15000, new Promise((resolve) => {
    wake = () => received.some((p) => p.new?.id === mine) && resolve();
    wake();
  }), "the filtered INSERT");
  assert.ok(!received.some((p) => p.new?.id === other), "a row of another thread passed the filter");
  await supabase.removeChannel(channel);
});

test("rpc as a user: chat_unread_count, chat_offline_messages, chat_mark_thread_read", async () => {
  for (const token of [CARLA.token, CARLA.tokenEs]) {
    const supabase = client({ token });
    const unread = await supabase.rpc("chat_unread_count");
    assert.equal(unread.error, null, JSON.stringify(unread.error));
    assert.equal(typeof unread.data, "number");

    const offline = await supabase.rpc("chat_offline_messages", { p_since: "2020-01-01T00:00:00Z" });
    assert.equal(offline.error, null, JSON.stringify(offline.error));
    assert.ok(Array.isArray(offline.data) && offline.data.length > 0);
    for (const m of offline.data) {
      assert.ok([CLASS_3B, "b0000000-0000-4000-8000-000000000003"].includes(m.thread_id), `Carla sees ${m.thread_id}`);
      assert.equal(typeof m.sender.full_name, "string");
      assert.ok(["teacher", "parent", "student", "admin"].includes(m.sender.role));
    }

    const marked = await supabase.rpc("chat_mark_thread_read", { p_thread_id: CLASS_3B });
    assert.equal(marked.error, null, JSON.stringify(marked.error));
    const after = await supabase.rpc("chat_unread_count");
    assert.ok(after.data <= unread.data);

    const refused = await supabase.rpc("chat_mark_thread_read", { p_thread_id: CLASS_4A });
    assert.equal(refused.data, null);
    assert.equal(refused.error?.code, "42501", JSON.stringify(refused.error));
    assert.equal(refused.status, 403);

    const malformed = await supabase.rpc("chat_mark_thread_read", { p_thread_id: "not-a-uuid" });
    assert.equal(malformed.error?.code, "22P02", JSON.stringify(malformed.error));
    assert.equal(malformed.status, 400);
  }
});

test("select messages with an embedded sender, under RLS", async () => {
  const carla = client({ token: CARLA.token });
  const mine = await carla
    .from("messages")
    .select("id, thread_id, content, created_at, sender:profiles(full_name, role)")
    .eq("thread_id", CLASS_3B)
    .order("created_at", { ascending: true })
    .limit(50);
  assert.equal(mine.error, null, JSON.stringify(mine.error));
  assert.ok(mine.data.length > 0);
  for (const m of mine.data) {
    assert.equal(m.thread_id, CLASS_3B);
    assert.equal(typeof m.sender.full_name, "string");
  }
  const farid = client({ token: FARID.token });
  const leak = await farid.from("messages").select("id").eq("thread_id", CLASS_3B);
  assert.equal(leak.error, null, JSON.stringify(leak.error));
  assert.deepEqual(leak.data, [], "a 4A parent must not read 3B messages");
  const threads = await farid.from("threads").select("id, title");
  assert.ok(!threads.data.some((t) => t.id === CLASS_3B));
});

test("realtime: a signed-in user subscribed to every published table learns nothing of another user's removal", async () => {
  const published = (
    await db.query(
      "select tablename::text as t from pg_publication_tables where pubname = 'supabase_realtime' and schemaname = 'public' order by 1",
    )
  ).rows.map((r) => r.t);
  assert.ok(published.includes("messages"), `published: ${published}`);
  const farid = client({ token: FARID.token });
  // The channel must join as Farid (not with the anon key before the token callback resolved).
  await farid.realtime.setAuth(FARID.token);
  const received = [];
  let wake;
  const keep = (p) => {
    received.push(p);
    wake?.();
  };
  let channel = farid.channel("conformance-no-leak");
  for (const table of published) {
    channel = channel.on("postgres_changes", { event: "*", schema: "public", table }, keep);
  }
  channel = channel.on("postgres_changes", { event: "*", schema: "public" }, keep);
  await within(15000, subscribed(channel), "SUBSCRIBED");
  await new Promise((r) => setTimeout(r, 300));

  // Carla (a 3B parent) switches realtime off, her switch row is deleted, she is removed from
  // 3B and added back: Farid (a 4A parent) must learn none of it.
  await db.query(
    "insert into public.chat_realtime_settings (user_id, realtime_enabled) values ($1, false) " +
      "on conflict (user_id) do update set realtime_enabled = false",
    [CARLA.id],
  );
  await db.query("delete from public.chat_realtime_settings where user_id = $1", [CARLA.id]);
  await db.query("delete from public.thread_participants where thread_id = $1 and user_id = $2", [CLASS_3B, CARLA.id]);
  await db.query("insert into public.thread_participants (thread_id, user_id) values ($1, $2)", [CLASS_3B, CARLA.id]);
  // A message Farid may read, committed last: once it is here, everything before it was sent.
  const marker = await insertMessage(CLASS_4A, "after someone else's removal");
  try {
    await within(15000, new Promise((resolve) => {
      wake = () => received.some((p) => p.new?.id === marker) && resolve();
      wake();
    }), "the marker message");
  } catch (e) {
    throw new Error(`${e.message}; received: ${JSON.stringify(received)}`);
  }
  const seen = JSON.stringify(received);
  assert.ok(!seen.includes(CARLA.id), `a payload names Carla: ${seen}`);
  assert.ok(!seen.includes(CLASS_3B), `a payload names class 3B: ${seen}`);
  await farid.removeChannel(channel);
});
