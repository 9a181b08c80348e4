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

// Broadcast: what the gateway's instances use to tell each other who is typing. realtime-js
// sends a broadcast as JSON text on vsn 1.0.0 and as a binary user broadcast on 2.0.0; a
// receiver of either version gets it, the sender only with `self: true`, and `ack: true`
// answers the send.
function listener(supabase, name, config, event) {
  const got = [];
  const waiters = [];
  const channel = supabase.channel(name, { config }).on("broadcast", { event }, (msg) => {
    got.push(msg);
    for (const w of waiters.splice(0)) w();
  });
  const until = (predicate, what) =>
    within(15000, new Promise((resolve) => {
      const check = () => (predicate(got) ? resolve() : waiters.push(check));
      check();
    }), what);
  return { channel, got, until };
}

for (const [from, to] of [["1.0.0", "2.0.0"], ["2.0.0", "1.0.0"], ["2.0.0", "2.0.0"]]) {
  test(`realtime broadcast: channel().send() over vsn ${from} reaches on('broadcast') over vsn ${to}, not the sender unless self`, async () => {
    const name = `conformance-broadcast-${from}-${to}`;
    const sender = listener(client({ key: SERVICE, vsn: from }), name, { broadcast: { self: false, ack: true } }, "typing");
    const receiver = listener(client({ key: SERVICE, vsn: to }), name, { broadcast: { self: false, ack: false } }, "typing");
    const echo = listener(client({ key: SERVICE, vsn: from }), name, { broadcast: { self: true, ack: false } }, "typing");
    for (const l of [sender, receiver, echo]) await within(15000, subscribed(l.channel), "SUBSCRIBED");
    const sent = await sender.channel.send({ type: "broadcast", event: "typing", payload: { thread_id: CLASS_3B, n: 1 } });
    assert.equal(sent, "ok", "ack: true is answered");
    await receiver.until((g) => g.some((m) => m.payload?.n === 1), "the broadcast on the receiver");
    const m = receiver.got.find((x) => x.payload?.n === 1);
    assert.equal(m.type, "broadcast");
    assert.equal(m.event, "typing");
    assert.deepEqual(m.payload, { thread_id: CLASS_3B, n: 1 });
    // self: true gets its own broadcast back.
    assert.equal(await echo.channel.send({ type: "broadcast", event: "typing", payload: { n: 2 } }), "ok");
    await echo.until((g) => g.some((x) => x.payload?.n === 2), "the echo of the self channel");
    // Another event name is not delivered to an on('broadcast', { event: 'typing' }).
    await receiver.channel.send({ type: "broadcast", event: "cursor", payload: { n: 3 } });
    await receiver.channel.send({ type: "broadcast", event: "typing", payload: { n: 4 } });
    // What the receiver sent after the sender's first broadcast reaches the sender; its own
    // first broadcast (self: false) never came back before it.
    await sender.until((g) => g.some((x) => x.payload?.n === 4), "the receiver's broadcast on the sender");
    assert.deepEqual(sender.got.map((x) => x.payload.n), [2, 4], "no own broadcast, no other event");
    for (const l of [sender, receiver, echo]) await l.channel.unsubscribe();
  });
}

test("realtime broadcast: private channels are for the service role only, and apart from the public topic", async () => {
  const name = "conformance-private";
  const carla = client({ token: CARLA.token });
  await carla.realtime.setAuth(CARLA.token);
  const refused = carla.channel(name, { config: { private: true } });
  await assert.rejects(within(15000, subscribed(refused), "the refusal"), /CHANNEL_ERROR.*Unauthorized/);
  const a = listener(client({ key: SERVICE }), name, { private: true, broadcast: { ack: true } }, "typing");
  const b = listener(client({ key: SERVICE, vsn: "1.0.0" }), name, { private: true }, "typing");
  const outsider = listener(client({ key: SERVICE }), name, { private: false }, "typing");
  for (const l of [a, b, outsider]) await within(15000, subscribed(l.channel), "SUBSCRIBED");
  assert.equal(await a.channel.send({ type: "broadcast", event: "typing", payload: { n: 1 } }), "ok");
  await b.until((g) => g.some((m) => m.payload?.n === 1), "the private broadcast");
  await outsider.channel.send({ type: "broadcast", event: "typing", payload: { n: 2 } });
  await b.channel.send({ type: "broadcast", event: "typing", payload: { n: 3 } });
  await a.until((g) => g.some((m) => m.payload?.n === 3), "the second private broadcast");
  assert.deepEqual(a.got.map((m) => m.payload.n), [3], "the public channel of the same name is another topic");
  assert.deepEqual(outsider.got, []);
  for (const l of [a, b, outsider]) await l.channel.unsubscribe();
});
