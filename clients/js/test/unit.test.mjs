// Unit tests of the pure parts and of the client's reactions, with a fake WebSocket.
// Run: npm test (builds, then node --test test/).
import { test } from "node:test";
import assert from "node:assert/strict";
import {
  backoffCeiling,
  backoffDelay,
  BoundedIdSet,
  ChatClient,
  compareCursors,
  jwtExpiryMs,
  jwtSubject,
  memoryStorage,
  newerCursor,
} from "../dist/index.js";

test("backoff: full jitter stays within [0, min(cap, base*2^n)) and never exceeds the cap", () => {
  const opts = { baseMs: 500, capMs: 30_000 };
  assert.equal(backoffCeiling(0, opts), 500);
  assert.equal(backoffCeiling(3, opts), 4_000);
  assert.equal(backoffCeiling(6, opts), 30_000);
  assert.equal(backoffCeiling(10_000, opts), 30_000);
  for (let attempt = 0; attempt < 200; attempt++) {
    for (const r of [0, 0.25, 0.999999, Math.random()]) {
      const d = backoffDelay(attempt, opts, () => r);
      assert.ok(d >= 0 && d < Math.max(1, backoffCeiling(attempt, opts)), `attempt ${attempt} r ${r}: ${d}`);
      assert.ok(d <= 30_000);
    }
  }
  assert.equal(backoffDelay(5, opts, () => 0), 0);
  assert.equal(backoffDelay(50, opts, () => 1), 30_000);
  assert.ok(backoffDelay(1e9, opts) <= 30_000);
});

test("cursor comparison: as times, microseconds and offsets included", () => {
  assert.ok(compareCursors("2024-01-01T12:00:00.000001Z", "2024-01-01T12:00:00Z") > 0);
  assert.ok(compareCursors("2024-01-01T12:00:00.123456Z", "2024-01-01T12:00:00.123457Z") < 0);
  assert.equal(compareCursors("2024-01-01T12:00:00Z", "2024-01-01T14:00:00+02:00"), 0);
  assert.ok(compareCursors("2024-01-01T13:00:00+00:00", "2024-01-01T12:59:59.999999Z") > 0);
  assert.ok(compareCursors("2024-01-02T00:00:00Z", "2024-01-01T23:59:59.9Z") > 0);
  assert.equal(newerCursor(null, "2024-01-01T00:00:00Z"), "2024-01-01T00:00:00Z");
  assert.equal(newerCursor("2024-01-02T00:00:00Z", "2024-01-01T00:00:00Z"), "2024-01-02T00:00:00Z");
  assert.equal(newerCursor("2024-01-01T00:00:00Z", "2024-01-01T00:00:00.5Z"), "2024-01-01T00:00:00.5Z");
  assert.equal(newerCursor("2024-01-01T00:00:00Z", "garbage"), "2024-01-01T00:00:00Z");
  assert.equal(newerCursor("garbage", undefined), null);
});

test("dedup: bounded, forgets the oldest", () => {
  const set = new BoundedIdSet(3);
  assert.equal(set.add("a"), true);
  assert.equal(set.add("a"), false);
  set.add("b");
  set.add("c");
  set.add("d");
  assert.equal(set.size, 3);
  assert.equal(set.has("a"), false);
  assert.equal(set.has("d"), true);
  for (let i = 0; i < 100_000; i++) set.add(String(i));
  assert.equal(set.size, 3);
  assert.throws(() => new BoundedIdSet(0));
});

function jwt(payload) {
  const enc = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  return `${enc({ alg: "HS256", typ: "JWT" })}.${enc(payload)}.sig`;
}

test("jwt: exp in ms, sub, garbage is null", () => {
  assert.equal(jwtExpiryMs(jwt({ exp: 1_700_000_000, sub: "u" })), 1_700_000_000_000);
  assert.equal(jwtSubject(jwt({ sub: "a0000000-0000-4000-8000-000000000003", name: "Zoë ✓" })), "a0000000-0000-4000-8000-000000000003");
  assert.equal(jwtExpiryMs(jwt({ sub: "x" })), null);
  assert.equal(jwtExpiryMs("not.a.jwt"), null);
  assert.equal(jwtExpiryMs("abc"), null);
  assert.equal(jwtExpiryMs(undefined), null);
});

// ---- the client against a fake WebSocket and fetch

class FakeSocket {
  static all = [];
  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.onopen = this.onmessage = this.onclose = this.onerror = null;
    FakeSocket.all.push(this);
  }
  send(data) {
    this.sent.push(JSON.parse(data));
  }
  close() {
    this.readyState = 3;
  }
  serverOpen(userId = "u1") {
    this.readyState = 1;
    this.onopen?.({});
    this.frame({ type: "connection_established", user_id: userId, timestamp: new Date().toISOString() });
  }
  frame(f) {
    this.onmessage?.({ data: JSON.stringify(f) });
  }
  serverClose(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
}

const tick = (ms = 5) => new Promise((r) => setTimeout(r, ms));
const fakeFetch = async () => ({ status: 200, ok: true, json: async () => ({ status: "success", data: { unread_count: 0, messages: [], has_more: false, last_check_time: "2030-01-01T00:00:00Z" } }) });

function makeClient(extra = {}) {
  FakeSocket.all = [];
  const tokens = [];
  const client = new ChatClient({
    url: "http://gw.test",
    WebSocket: FakeSocket,
    fetch: fakeFetch,
    backoff: { baseMs: 1, capMs: 5 },
    catchUpHorizonMs: 0, // the first-start catch-up has its own tests
    getToken: (reason) => {
      tokens.push(reason);
      return jwt({ sub: "u1", exp: Math.floor(Date.now() / 1000) + 3600, n: tokens.length });
    },
    ...extra,
  });
  return { client, tokens };
}

test("client: subscribe_thread waits for the socket and is re-sent after a reconnect; duplicates dropped", async () => {
  const { client } = makeClient();
  const got = [];
  client.on("message", ({ message }) => got.push(message.id));
  client.subscribeThread("t1");
  await client.start();
  const first = FakeSocket.all[0];
  assert.deepEqual(first.sent, []);
  first.serverOpen();
  assert.deepEqual(first.sent, [{ type: "subscribe_thread", thread_id: "t1" }]);
  first.frame({ type: "new_message", data: { id: "m1", thread_id: "t1", sender_id: "x" }, cursor: "2030-01-01T00:00:01Z" });
  first.serverClose(1001, "going away");
  await tick(30);
  const second = FakeSocket.all[1];
  assert.match(second.url, /since=2030-01-01T00%3A00%3A01Z/);
  second.serverOpen();
  assert.equal(client.status, "syncing");
  second.frame({ type: "new_message", data: { id: "m1", thread_id: "t1", sender_id: "x" }, cursor: "2030-01-01T00:00:01Z" });
  second.frame({ type: "new_message", data: { id: "m2", thread_id: "t1", sender_id: "x" }, cursor: "2030-01-01T00:00:02Z" });
  second.frame({ type: "sync_complete", last_check_time: "2030-01-01T00:00:03Z", count: 2 });
  assert.equal(client.status, "live");
  assert.deepEqual(second.sent[0], { type: "subscribe_thread", thread_id: "t1" });
  assert.deepEqual(got, ["m1", "m2"]);
  assert.equal(client.cursor, "2030-01-01T00:00:03Z");
  client.stop();
});

test("client: 4001 asks getToken for a fresh token; 1008 reports and does not reconnect", async () => {
  const { client, tokens } = makeClient();
  const errors = [];
  client.on("error", (e) => errors.push(e));
  await client.start();
  FakeSocket.all[0].serverOpen();
  FakeSocket.all[0].frame({ type: "error", message: "Access token expired" });
  FakeSocket.all[0].serverClose(4001, "access token expired");
  await tick(30);
  assert.deepEqual(tokens, ["initial", "rejected"]);
  assert.equal(FakeSocket.all.length, 2);
  FakeSocket.all[1].serverOpen();
  FakeSocket.all[1].serverClose(1008, "rate limit exceeded");
  await tick(30);
  assert.equal(FakeSocket.all.length, 2, "no reconnect after 1008");
  assert.equal(client.status, "offline");
  assert.ok(errors.some((e) => e.kind === "fatal" && e.code === 1008));
  client.stop();
});

test("client: pause closes, resume reconnects with since; cursor persisted", async () => {
  const storage = memoryStorage();
  const { client } = makeClient({ storage });
  await client.start();
  FakeSocket.all[0].serverOpen();
  FakeSocket.all[0].frame({ type: "new_message", data: { id: "m9", thread_id: "t", sender_id: "x" }, cursor: "2031-05-05T05:05:05.123456Z" });
  client.pause();
  assert.equal(client.status, "offline");
  await tick(20);
  assert.equal(FakeSocket.all.length, 1);
  assert.equal(await storage.getItem("school-chat:cursor:u1"), "2031-05-05T05:05:05.123456Z");
  client.resume();
  await tick(20);
  assert.equal(FakeSocket.all.length, 2);
  assert.match(FakeSocket.all[1].url, /since=2031-05-05T05%3A05%3A05.123456Z/);
  client.stop();
});

test("client: without sync_complete in time, catches up through REST, then delivers held frames", async () => {
  FakeSocket.all = [];
  const calls = [];
  const fetch = async (url) => {
    calls.push(url);
    if (url.includes("offline-messages")) {
      const first = !url.includes("2030-01-01T00%3A00%3A05Z");
      return {
        status: 200,
        ok: true,
        json: async () => ({
          status: "success",
          data: first
            ? { messages: [{ id: "r1", thread_id: "t", created_at: "2030-01-01T00:00:04Z" }], count: 1, has_more: true, last_check_time: "2030-01-01T00:00:05Z" }
            : { messages: [{ id: "r2", thread_id: "t", created_at: "2030-01-01T00:00:06Z" }, { id: "live1", thread_id: "t", created_at: "2030-01-01T00:00:07Z" }], count: 2, has_more: false, last_check_time: "2030-01-01T00:00:08Z" },
        }),
      };
    }
    return fakeFetch();
  };
  const { client } = makeClient({ fetch, syncTimeoutMs: 20, initialCursor: undefined });
  const got = [];
  const syncs = [];
  client.on("message", ({ message, source }) => got.push(`${message.id}:${source}`));
  client.on("sync", (s) => syncs.push(s));
  client.cursor = "2030-01-01T00:00:00Z";
  await client.start();
  FakeSocket.all[0].serverOpen();
  FakeSocket.all[0].frame({ type: "new_message", data: { id: "live1", thread_id: "t", sender_id: "x" } });
  FakeSocket.all[0].frame({ type: "new_message", data: { id: "live2", thread_id: "t", sender_id: "x" } });
  await tick(80);
  assert.deepEqual(got, ["r1:rest", "r2:rest", "live1:rest", "live2:socket"]);
  assert.equal(client.status, "live");
  assert.equal(syncs[0].via, "rest");
  assert.equal(client.cursor, "2030-01-01T00:00:08Z");
  client.stop();
});

test("client: a long resume replay (frames with cursors) postpones the REST fallback; thread_read sets the count", async () => {
  let restCalls = 0;
  const fetch = async (url) => {
    if (url.includes("offline-messages")) restCalls++;
    return fakeFetch();
  };
  const { client } = makeClient({ fetch, syncTimeoutMs: 40 });
  const reads = [];
  client.on("threadRead", (r) => reads.push(r));
  client.cursor = "2030-01-01T00:00:00Z";
  await client.start();
  const ws = FakeSocket.all[0];
  ws.serverOpen();
  for (let i = 0; i < 6; i++) {
    await tick(20);
    ws.frame({ type: "new_message", data: { id: `m${i}`, thread_id: "t", sender_id: "x" }, cursor: `2030-01-01T00:00:0${i + 1}Z` });
  }
  ws.frame({ type: "sync_complete", last_check_time: "2030-01-01T00:00:09Z", count: 6 });
  assert.equal(restCalls, 0, "no REST fallback while the replay progresses");
  assert.equal(client.status, "live");
  assert.equal(client.cursor, "2030-01-01T00:00:09Z");
  await tick(10);
  ws.frame({ type: "thread_read", thread_id: "t", last_read_at: "2030-01-01T00:00:10Z", unread_count: 4 });
  assert.equal(client.unreadCount, 4);
  assert.deepEqual(reads, [{ threadId: "t", lastReadAt: "2030-01-01T00:00:10Z", unreadCount: 4 }]);
  client.stop();
});

// ---- first-start catch-up, history, per-thread unread, refusal reasons

function answer(data, status = 200) {
  return { status, ok: status < 300, json: async () => (status < 300 ? { status: "success", data } : { status: "error", message: `HTTP ${status}` }) };
}

test("client: a first start without a cursor catches up on the horizon through REST, holding live frames", async () => {
  const calls = [];
  const fetch = async (url) => {
    calls.push(url);
    if (url.includes("offline-messages")) {
      return answer({ messages: [{ id: "old2", thread_id: "t", created_at: "2030-01-01T00:00:02Z" }, { id: "old1", thread_id: "t", created_at: "2030-01-01T00:00:01Z" }], has_more: false, last_check_time: "2030-01-01T00:00:03Z" });
    }
    return fakeFetch();
  };
  const { client } = makeClient({ fetch, catchUpHorizonMs: 3 * 24 * 3600_000 });
  const got = [];
  const syncs = [];
  client.on("message", ({ message, source }) => got.push(`${message.id}:${source}`));
  client.on("sync", (s) => syncs.push(s));
  await client.start();
  const ws = FakeSocket.all[0];
  ws.readyState = 1;
  ws.onopen?.({});
  ws.frame({ type: "connection_established", user_id: "u1", timestamp: "2030-01-04T00:00:00Z" });
  assert.equal(client.status, "syncing");
  ws.frame({ type: "new_message", data: { id: "live", thread_id: "t", sender_id: "x" }, cursor: "2030-01-04T00:00:01Z" });
  ws.frame({ type: "new_message", data: { id: "old1", thread_id: "t", sender_id: "x" } });
  await tick(20);
  const since = new URL(calls.find((u) => u.includes("offline-messages"))).searchParams.get("last_check_time");
  assert.equal(since, "2030-01-01T00:00:00.000Z", "the horizon counts back from the server's time");
  assert.deepEqual(got, ["old1:rest", "old2:rest", "live:socket"], "oldest first, held frames after, each once");
  assert.equal(client.status, "live");
  assert.equal(syncs[0].via, "rest");
  assert.equal(client.cursor, "2030-01-04T00:00:01Z");
  client.stop();

  // A stored cursor (or catchUpHorizonMs: 0) means no horizon catch-up.
  const { client: plain } = makeClient({ fetch: async (url) => (calls.push(url), fakeFetch()) });
  calls.length = 0;
  await plain.start();
  FakeSocket.all[0].serverOpen();
  await tick(10);
  assert.equal(plain.status, "live");
  assert.ok(!calls.some((u) => u.includes("offline-messages")), calls.join(" "));
  plain.stop();
});

test("client: history pages a thread (before, limit, next); unreadByThread lists each thread", async () => {
  const calls = [];
  const fetch = async (url) => {
    calls.push(url);
    if (url.includes("/messages")) {
      const before = new URL(url).searchParams.get("before");
      return before
        ? answer({ messages: [{ id: "m1" }], next: null })
        : answer({ messages: [{ id: "m3" }, { id: "m2" }], next: "opaque cursor/2" });
    }
    if (url.includes("by_thread=true")) {
      return answer({ unread_count: 3, threads: [{ thread_id: "t", unread_count: 3, last_message_at: "2030-01-01T00:00:00Z" }] });
    }
    return fakeFetch();
  };
  const { client } = makeClient({ fetch });
  const first = await client.history("t 1", { limit: 2 });
  assert.deepEqual(first, { messages: [{ id: "m3" }, { id: "m2" }], next: "opaque cursor/2" });
  assert.equal(calls[0], "http://gw.test/api/chat/threads/t%201/messages?limit=2");
  const second = await client.history("t 1", { before: first.next, limit: 2 });
  assert.deepEqual(second, { messages: [{ id: "m1" }], next: null });
  assert.equal(new URL(calls[1]).searchParams.get("before"), "opaque cursor/2");
  const threads = await client.unreadByThread();
  assert.deepEqual(threads, [{ thread_id: "t", unread_count: 3, last_message_at: "2030-01-01T00:00:00Z" }]);
  assert.equal(client.unreadCount, 3);
  await assert.rejects(makeClient({ fetch: async () => answer(null, 403) }).client.history("t"), (e) => e.status === 403);
});

test("client: a refused upgrade is explained: status from ws, or asked of the gateway from a page", async () => {
  // Node's ws reports the status.
  {
    const { client } = makeClient();
    const refusals = [];
    client.on("refused", (r) => refusals.push(r));
    await client.start();
    FakeSocket.all[0].onerror?.({ message: "Unexpected server response: 403" });
    FakeSocket.all[0].serverClose(1006);
    await tick(5);
    assert.equal(refusals[0]?.reason, "origin");
    assert.match(refusals[0].message, /CORS_ALLOWED_ORIGINS/);
    assert.equal(client.refusal?.status, 403);
    client.stop();
  }
  // A browser reports nothing: the client asks the gateway.
  globalThis.location = { origin: "http://page.test" };
  try {
    const cases = [
      { name: "origin", cors: false, noCors: true, rest: 200 },
      { name: "unreachable", cors: false, noCors: false, rest: 200 },
      { name: "token", cors: true, noCors: true, rest: 401 },
      { name: "limit", cors: true, noCors: true, rest: 200 },
    ];
    for (const c of cases) {
      const fetch = async (url, init) => {
        if (url.endsWith("/healthz")) {
          const ok = init?.mode === "no-cors" ? c.noCors : c.cors;
          if (!ok) throw new TypeError("Failed to fetch");
          return answer({});
        }
        return url.includes("unread-count") ? answer({ unread_count: 0 }, c.rest) : fakeFetch();
      };
      const { client } = makeClient({ fetch, token: jwt({ sub: "u1" }), getToken: undefined });
      const refusals = [];
      client.on("refused", (r) => refusals.push(r));
      await client.start();
      FakeSocket.all[0].serverClose(1006);
      await tick(10);
      assert.equal(refusals[0]?.reason, c.name, JSON.stringify(refusals));
      // Once connected, the refusal is over.
      const last = FakeSocket.all.at(-1);
      if (last !== FakeSocket.all[0]) {
        last.serverOpen();
        assert.equal(client.refusal, null);
      }
      client.stop();
    }
  } finally {
    delete globalThis.location;
  }
});
