// Unit tests of read receipts and typing: the client's typing throttle, its readReceipt/typing
// events, the read-state call, the receipt merge and the 5 s typing expiry (fake timers).
// Run: npm test (builds, then node --test test/).
import { test, mock } from "node:test";
import assert from "node:assert/strict";
import { ChatClient, mergeReceipt, readersOf, receiptsOf, TypingThrottle, TypingTracker } from "../dist/index.js";

class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.sent = [];
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    FakeSocket.all.push(this);
  }
  send(data) {
    this.sent.push(JSON.parse(data));
  }
  close() {}
  serverOpen(userId = "u1") {
    this.onopen?.({});
    this.frame({ type: "connection_established", user_id: userId, timestamp: new Date().toISOString() });
  }
  frame(f) {
    this.onmessage?.({ data: JSON.stringify(f) });
  }
}

const answer = (data) => ({ status: 200, ok: true, json: async () => ({ status: "success", data }) });

function jwt(payload) {
  const enc = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${enc({ alg: "HS256", typ: "JWT" })}.${enc(payload)}.sig`;
}

async function openClient(fetch = async () => answer({ unread_count: 0 })) {
  FakeSocket.all = [];
  const client = new ChatClient({
    url: "http://gw.test",
    WebSocket: FakeSocket,
    fetch,
    token: jwt({ sub: "u1", exp: Math.floor(Date.now() / 1000) + 3600 }),
    catchUpHorizonMs: 0,
    initialCursor: "2030-01-01T00:00:00Z",
  });
  await client.start();
  FakeSocket.all[0].serverOpen();
  return { client, ws: FakeSocket.all[0] };
}

const CARLA = { user_id: "carla", full_name: "Carla Diaz", role: "parent" };
const DAVID = { user_id: "david", full_name: "David Chen", role: "parent" };

test("typing throttle: one frame per thread per 2 s, threads apart", () => {
  let now = 1_000_000;
  const throttle = new TypingThrottle(2_000, () => now);
  assert.equal(throttle.allow("t1"), true);
  assert.equal(throttle.allow("t1"), false);
  assert.equal(throttle.allow("t2"), true, "another thread has its own budget");
  now += 1_999;
  assert.equal(throttle.allow("t1"), false);
  now += 1;
  assert.equal(throttle.allow("t1"), true);
});

test("client.typing on every keystroke sends one frame per thread per 2.5 s (the gateway allows one per 2 s), nothing while offline", async (t) => {
  t.mock.timers.enable({ apis: ["Date"], now: 5_000_000 });
  FakeSocket.all = [];
  const offline = new ChatClient({ url: "http://gw.test", WebSocket: FakeSocket, fetch: async () => answer({}), token: jwt({ sub: "u1" }) });
  assert.equal(offline.typing("t1"), false, "not connected: nothing queued");
  const { client, ws } = await openClient();
  // Keystrokes every 100 ms for 6 s, in two threads for the first second.
  const sentAt = [];
  for (let ms = 0; ms < 6_000; ms += 100) {
    if (client.typing("t1")) sentAt.push(ms);
    if (ms < 1_000) client.typing("t2");
    t.mock.timers.tick(100);
  }
  assert.deepEqual(sentAt, [0, 2_500, 5_000]);
  assert.deepEqual(
    ws.sent.filter((f) => f.type === "typing"),
    [
      { type: "typing", thread_id: "t1" },
      { type: "typing", thread_id: "t2" },
      { type: "typing", thread_id: "t1" },
      { type: "typing", thread_id: "t1" },
    ],
  );
  client.stop();
});

test("client: read_receipt and typing frames become events; malformed, own and unknown frames are ignored", async () => {
  const { client, ws } = await openClient();
  const receipts = [];
  const typing = [];
  const errors = [];
  client.on("readReceipt", (r) => receipts.push(r));
  client.on("typing", (e) => typing.push(e));
  client.on("error", (e) => errors.push(e));
  ws.frame({ type: "read_receipt", thread_id: "t", reader: CARLA, last_read_at: "2030-01-01T00:00:05Z", message_id: "m9", seen_by: 2, of: 3 });
  ws.frame({ type: "read_receipt", thread_id: "t", reader: null, last_read_at: "2030-01-01T00:00:06Z", seen_by: 3, of: 3 });
  ws.frame({ type: "read_receipt", thread_id: "t", reader: null, seen_by: "many" });
  ws.frame({ type: "typing", thread_id: "t", user: DAVID });
  ws.frame({ type: "typing", thread_id: "t", user: { user_id: "u1", full_name: "Me", role: "teacher" } });
  ws.frame({ type: "typing", thread_id: "t" });
  ws.frame({ type: "presence_diff", thread_id: "t", joins: {} });
  assert.deepEqual(receipts, [
    { threadId: "t", reader: CARLA, lastReadAt: "2030-01-01T00:00:05Z", messageId: "m9", seenBy: 2, of: 3 },
    { threadId: "t", reader: null, lastReadAt: "2030-01-01T00:00:06Z", messageId: null, seenBy: 3, of: 3 },
  ]);
  assert.deepEqual(typing, [{ threadId: "t", user: DAVID }]);
  assert.deepEqual(errors, []);
  assert.equal(client.status, "live");
  client.stop();
});

test("client.readState: GET read-state with ?messages, parsed; rows without ids left out", async () => {
  const calls = [];
  const fetch = async (url) => {
    calls.push(url);
    return url.includes("/read-state")
      ? answer({
          participants: [{ ...CARLA, last_read_at: "2030-01-01T00:00:05Z" }, { full_name: "no id" }],
          messages: [{ message_id: "m2", seen_by: 1, of: 3 }, { message_id: "m1" }],
        })
      : answer({ unread_count: 0 });
  };
  const { client } = await openClient(fetch);
  const state = await client.readState("t 1", { messages: 5 });
  assert.equal(calls.find((u) => u.includes("read-state")), "http://gw.test/api/chat/threads/t%201/read-state?messages=5");
  assert.deepEqual(state, {
    participants: [{ ...CARLA, last_read_at: "2030-01-01T00:00:05Z" }],
    messages: [{ message_id: "m2", seen_by: 1, of: 3 }],
  });
  await client.readState("t");
  assert.equal(calls.filter((u) => u.includes("read-state")).at(-1), "http://gw.test/api/chat/threads/t/read-state");
  client.stop();
});

test("client.shareReadState: POST read-state {share}; the stored setting back", async () => {
  const calls = [];
  const fetch = async (url, init) => {
    calls.push({ url, method: init?.method, body: init?.body });
    return answer({ thread_id: "t", share_read_state: JSON.parse(init.body).share });
  };
  FakeSocket.all = [];
  const client = new ChatClient({ url: "http://gw.test", WebSocket: FakeSocket, fetch, token: jwt({ sub: "u1" }) });
  assert.equal(await client.shareReadState("t", false), false);
  assert.deepEqual(calls, [{ url: "http://gw.test/api/chat/threads/t/read-state", method: "POST", body: '{"share":false}' }]);
  assert.equal(await client.shareReadState("t", true), true);
});

test("receipts: merged into the read state; the counts on their message (a newer one added), readers only forward, counts-only receipts", () => {
  const fetched = receiptsOf({
    participants: [{ ...CARLA, last_read_at: "2030-01-01T00:00:01Z" }, { ...DAVID, last_read_at: null }],
    messages: [{ message_id: "m3", seen_by: 0, of: 3 }, { message_id: "m2", seen_by: 1, of: 3 }],
  });
  assert.equal(fetched.seenBy, 0);
  assert.equal(fetched.of, 3);
  const carla = { threadId: "t", reader: CARLA, lastReadAt: "2030-01-01T00:00:09.000001Z", messageId: "m3", seenBy: 1, of: 3 };
  const one = mergeReceipt(fetched, carla);
  assert.equal(one.seenBy, 1);
  assert.deepEqual(one.messages, [{ message_id: "m3", seen_by: 1, of: 3 }, { message_id: "m2", seen_by: 1, of: 3 }]);
  assert.equal(one.participants[0].last_read_at, "2030-01-01T00:00:09.000001Z");
  assert.equal(one.latest, carla);
  assert.equal(fetched.participants[0].last_read_at, "2030-01-01T00:00:01Z", "never mutates");
  // A late, older receipt of the same reader does not move her back; a hidden reader only counts.
  const two = mergeReceipt(one, { threadId: "t", reader: null, lastReadAt: "2030-01-01T00:00:10Z", messageId: "m3", seenBy: 2, of: 3 });
  const three = mergeReceipt(two, { ...carla, lastReadAt: "2030-01-01T00:00:02Z", seenBy: 2 });
  assert.equal(three.participants[0].last_read_at, "2030-01-01T00:00:09.000001Z");
  assert.equal(three.participants.length, 2);
  assert.equal(three.seenBy, 2);
  // A message newer than the read state: its counts go first, the older ones stay.
  const newer = mergeReceipt(three, { threadId: "t", reader: null, lastReadAt: "2030-01-01T00:00:12Z", messageId: "m4", seenBy: 1, of: 2 });
  assert.deepEqual(newer.messages.map((m) => [m.message_id, m.seen_by, m.of]), [["m4", 1, 2], ["m3", 2, 3], ["m2", 1, 3]]);
  assert.deepEqual([newer.seenBy, newer.of], [1, 2]);
  // A receipt before any read state: the reader is known from it.
  const fresh = mergeReceipt(undefined, { threadId: "t", reader: DAVID, lastReadAt: "2030-01-01T00:00:03Z", messageId: "m1", seenBy: 1, of: 1 });
  assert.deepEqual(fresh.participants, [{ ...DAVID, last_read_at: "2030-01-01T00:00:03Z" }]);
  assert.deepEqual([fresh.seenBy, fresh.of, fresh.messages], [1, 1, [{ message_id: "m1", seen_by: 1, of: 1 }]]);
  // Who read a message: not its sender, last_read_at at or after it.
  const message = { sender_id: "carla", created_at: "2030-01-01T00:00:09Z" };
  const people = [...three.participants, { user_id: "eva", full_name: "Eva", role: "parent", last_read_at: "2030-01-01T00:00:09Z" }];
  assert.deepEqual(readersOf(people, message).map((p) => p.user_id), ["eva"]);
});

test("typing: each entry expires 5 s after the last typing, and goes with the user's message", (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  let changes = 0;
  const tracker = new TypingTracker(() => changes++);
  tracker.typing("t", CARLA);
  tracker.typing("t", DAVID);
  tracker.typing("u", DAVID);
  assert.deepEqual(tracker.users("t"), [CARLA, DAVID]);
  assert.equal(changes, 3);
  t.mock.timers.tick(3_000);
  tracker.typing("t", CARLA); // still typing: her 5 s start again
  assert.equal(changes, 3, "a repeated typing changes nothing");
  t.mock.timers.tick(1_999);
  assert.deepEqual(tracker.users("t"), [CARLA, DAVID]);
  t.mock.timers.tick(1);
  assert.deepEqual(tracker.snapshot(), { t: [CARLA] }, "David's two entries expired at 5 s");
  tracker.stop("t", "carla"); // her message arrived
  assert.deepEqual(tracker.snapshot(), {});
  assert.equal(changes, 6);
  tracker.typing("t", CARLA);
  tracker.clear();
  t.mock.timers.tick(10_000);
  assert.deepEqual(tracker.snapshot(), {});
  assert.equal(changes, 7, "clear does not report");
});
