// The example web app: threads with their unread badges, each thread's history (latest page first,
// older pages on scroll up) with an "unread" divider, live messages, and why the page is offline.
// A thread is marked read only once its messages are on screen. Under the user's own messages,
// "seen by N of M" (names on hover or click, where the user may see them); below the thread, who
// is typing (for 5 s); the message box says the user types and posts through PostgREST, as an app
// does with supabase-js. Built on the client library;
// served by serve.mjs, which also provides /config.json ({gateway, anonKey}), the library under
// /lib/ and a same-origin proxy for the gateway's REST (/api/) and PostgREST (/rest/v1/).
import { ChatClient, localStorageAdapter, mergeReceipt, readersOf, receiptsOf, TypingTracker } from "./lib/index.js";

const $ = (id) => document.getElementById(id);
const config = await (await fetch("./config.json")).json();
const PAGE = 30;
/** id -> { title, messages: Map(id -> message), unread, dividerBefore, next, loaded, loading, receipts } */
const threads = new Map();
let selected = null;
let client = null;
/** Who is typing, per thread (each for 5 s after their last `typing`, or until their message). */
const typing = new TypingTracker(() => renderTyping());

function thread(id) {
  let t = threads.get(id);
  if (!t) {
    t = { title: null, messages: new Map(), unread: 0, dividerBefore: null, next: null, loaded: false, loading: false, receipts: null };
    threads.set(id, t);
  }
  return t;
}

const byTime = (a, b) => (a.created_at < b.created_at ? -1 : a.created_at > b.created_at ? 1 : a.id < b.id ? -1 : 1);

function renderThreads() {
  $("threads").replaceChildren(
    ...[...threads.entries()].map(([id, t]) => {
      const li = document.createElement("li");
      li.dataset.threadId = id;
      li.className = id === selected ? "selected" : "";
      li.append(t.title ?? id.slice(0, 8));
      if (t.unread > 0) {
        const badge = document.createElement("span");
        badge.className = "unread";
        badge.textContent = String(t.unread);
        li.append(badge);
      }
      li.onclick = () => void openThread(id);
      return li;
    }),
  );
}

/** "seen by N of M" under one of the user's own messages; the readers' names where they may be seen. */
function seenElement(m, receipts) {
  const counts = receipts?.messages.find((s) => s.message_id === m.id);
  if (!counts || m.sender_id !== client.userId) return null;
  const seen = document.createElement("details");
  seen.className = "seen";
  const summary = document.createElement("summary");
  summary.textContent = `seen by ${counts.seen_by} of ${counts.of}`;
  const names = readersOf(receipts.participants, m).map((p) => p.full_name ?? "someone");
  if (names.length) summary.title = names.join(", ");
  seen.append(summary, names.join(", "));
  return seen;
}

function renderTyping() {
  const names = selected ? typing.users(selected).map((u) => u.full_name ?? "Someone") : [];
  $("typing").textContent =
    names.length === 0 ? "" : names.length === 1 ? `${names[0]} is typing…` : names.length === 2 ? `${names[0]} and ${names[1]} are typing…` : `${names.length} people are typing…`;
}

/** The open thread's read state again, at most once a second (counts of older messages, new messages). */
function refreshReadState(id) {
  const t = thread(id);
  if (t.readStateTimer) return;
  t.readStateTimer = setTimeout(async () => {
    t.readStateTimer = null;
    try {
      t.receipts = receiptsOf(await client.readState(id, { messages: PAGE }));
      if (selected === id) renderConversation("bottom");
    } catch (e) {
      console.warn("cannot read who has seen the thread", e);
    }
  }, 1000);
}

function messageElement(m, receipts) {
  const div = document.createElement("div");
  div.className = "message";
  div.dataset.messageId = m.id;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = m.sender?.full_name ?? m.sender_id;
  const role = document.createElement("span");
  role.className = "role";
  role.textContent = m.sender?.role ? ` (${m.sender.role})` : "";
  const time = document.createElement("time");
  time.dateTime = m.created_at;
  time.textContent = new Date(m.created_at).toLocaleString();
  const text = document.createElement("div");
  text.className = "content";
  text.textContent = m.content;
  div.append(who, role, time, text);
  const seen = seenElement(m, receipts);
  if (seen) div.append(seen);
  return div;
}

/** Redraws the open thread; `keep`: "bottom" (follow the newest), "divider", or "position" (older page added). */
function renderConversation(keep = "bottom") {
  const pane = $("conversation");
  const t = selected && threads.get(selected);
  const before = { height: pane.scrollHeight, top: pane.scrollTop };
  const atBottom = pane.scrollHeight - pane.scrollTop - pane.clientHeight < 40;
  const children = [];
  if (t?.loaded && t.next === null) {
    const start = document.createElement("div");
    start.className = "start";
    start.textContent = "Start of the conversation";
    children.push(start);
  }
  for (const m of t ? [...t.messages.values()].sort(byTime) : []) {
    if (m.id === t.dividerBefore) {
      const divider = document.createElement("div");
      divider.id = "unread-divider";
      divider.textContent = "unread";
      children.push(divider);
    }
    children.push(messageElement(m, t.receipts));
  }
  pane.replaceChildren(...children);
  if (keep === "position") pane.scrollTop = before.top + (pane.scrollHeight - before.height);
  else if (keep === "divider" && $("unread-divider")) $("unread-divider").scrollIntoView({ block: "start" });
  else if (keep === "divider" || atBottom) pane.scrollTop = pane.scrollHeight;
}

/** Resolves once the browser has painted what was rendered. */
const painted = () => new Promise((resolve) => requestAnimationFrame(() => requestAnimationFrame(resolve)));

/** Marks the open thread read, once its unread messages are on screen. */
async function markReadWhenShown(id) {
  await painted();
  const t = threads.get(id);
  const shown = [...t.messages.keys()].every((mid) => document.querySelector(`[data-message-id="${mid}"]`));
  if (selected !== id || !shown) return;
  try {
    await client.markRead(id);
    t.unread = 0;
    renderThreads();
  } catch (e) {
    console.warn("mark-read failed", e);
  }
}

/** Adds a page of history (newest first from the gateway) to a thread. */
function addPage(t, page) {
  for (const m of page.messages) t.messages.set(m.id, m);
  t.next = page.next;
  t.loaded = true;
}

/** The oldest of the `unread` newest messages from others: the divider goes before it. */
function firstUnread(t, unread) {
  if (unread <= 0) return null;
  const fromOthers = [...t.messages.values()].filter((m) => m.sender_id !== client.userId).sort(byTime);
  return fromOthers[Math.max(0, fromOthers.length - unread)]?.id ?? null;
}

async function openThread(id) {
  selected = id;
  const t = thread(id);
  renderThreads();
  renderConversation("bottom");
  renderTyping();
  $("compose").hidden = false;
  const readState = client.readState(id, { messages: PAGE }).catch((e) => console.warn("cannot read who has seen the thread", e));
  if (!t.loaded) {
    try {
      addPage(t, await client.history(id, { limit: PAGE }));
    } catch (e) {
      $("conversation").textContent = `cannot load this thread: ${e.message ?? e}`;
      return;
    }
  }
  const state = await readState;
  if (state) t.receipts = receiptsOf(state);
  if (selected !== id) return;
  t.dividerBefore = firstUnread(t, t.unread);
  renderConversation("divider");
  await markReadWhenShown(id);
  // A page that does not fill the pane cannot be scrolled: fetch older ones now.
  const pane = $("conversation");
  while (selected === id && t.next !== null && pane.scrollHeight <= pane.clientHeight && !t.loading) await loadOlder();
}

async function loadOlder() {
  const t = selected && threads.get(selected);
  if (!t || !t.loaded || t.next === null || t.loading) return;
  t.loading = true;
  const id = selected;
  try {
    addPage(t, await client.history(id, { before: t.next, limit: PAGE }));
    if (selected === id) renderConversation("position");
  } catch (e) {
    console.warn("cannot load older messages", e);
  } finally {
    t.loading = false;
  }
}

async function refreshBadges() {
  try {
    for (const row of await client.unreadByThread()) {
      const t = thread(row.thread_id);
      if (row.thread_id !== selected) t.unread = row.unread_count;
    }
    renderThreads();
  } catch (e) {
    console.warn("cannot read the unread counts", e);
  }
}

async function loadThreads(token) {
  const response = await fetch("./rest/v1/threads?select=id,title&order=title", {
    headers: { apikey: config.anonKey, Authorization: `Bearer ${token}` },
  });
  if (!response.ok) throw new Error(`cannot list threads (HTTP ${response.status})`);
  for (const row of await response.json()) thread(row.id).title = row.title;
}

function showStatus(status, reason) {
  const pill = $("status");
  pill.dataset.status = status;
  if (reason) pill.dataset.reason = reason.reason;
  else delete pill.dataset.reason;
  pill.textContent = reason && status !== "live" ? `${status}: ${reason.message}` : status;
}

function onMessage({ message, source }) {
  const t = thread(message.thread_id);
  typing.stop(message.thread_id, message.sender_id);
  // Only threads whose history is on screen keep messages; the others load it when opened.
  if (t.loaded) t.messages.set(message.id, message);
  if (message.thread_id === selected) {
    if (t.receipts) refreshReadState(selected); // a new newest message
    renderConversation("bottom");
    void markReadWhenShown(selected);
  } else if (message.sender_id !== client.userId && source === "socket" && client.status === "live") {
    // Live message in another thread; catch-ups are counted by the gateway (refreshBadges on sync).
    t.unread += 1;
    renderThreads();
  }
}

async function signIn(token) {
  $("login-error").textContent = "";
  try {
    await loadThreads(token);
  } catch (e) {
    $("login-error").textContent = String(e.message ?? e);
    return;
  }
  sessionStorage.setItem("chat-token", token);
  $("login").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = false;
  client = new ChatClient({
    url: config.gateway, // the WebSocket goes straight to the gateway (this origin in its CORS_ALLOWED_ORIGINS)
    restUrl: location.origin, // REST through the same-origin proxy (no CORS needed)
    token,
    // A real app asks supabase-js here; the example can only ask the user for a new token.
    getToken: () => sessionStorage.getItem("chat-token") ?? token,
    storage: localStorageAdapter(),
  });
  client.on("status", (status) => {
    showStatus(status, client.refusal);
    if (status === "live") void refreshBadges();
  });
  client.on("refused", (reason) => showStatus(client.status, reason));
  client.on("unreadCount", (n) => {
    $("badge").textContent = String(n);
    $("badge").dataset.count = String(n);
  });
  client.on("message", onMessage);
  client.on("readReceipt", (receipt) => {
    const t = thread(receipt.threadId);
    if (!t.receipts || receipt.threadId !== selected) return; // read again when opened
    t.receipts = mergeReceipt(t.receipts, receipt); // the newest message's count, at once
    renderConversation("bottom");
    refreshReadState(selected); // older messages' counts
  });
  client.on("typing", ({ threadId, user }) => typing.typing(threadId, user));
  client.on("sync", () => void refreshBadges());
  client.on("error", (e) => console.warn("chat:", e.kind, e.message));
  $("conversation").addEventListener("scroll", () => {
    if ($("conversation").scrollTop < 80) void loadOlder();
  });
  renderThreads();
  await refreshBadges();
  await client.start();
}

/** Posts in the open thread as the user (PostgREST insert; RLS checks sender and membership). */
async function send(text) {
  const token = sessionStorage.getItem("chat-token");
  const response = await fetch("./rest/v1/messages", {
    method: "POST",
    headers: { apikey: config.anonKey, Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
    body: JSON.stringify({ thread_id: selected, sender_id: client.userId, content: text }),
  });
  if (!response.ok) throw new Error(`cannot send (HTTP ${response.status})`);
}

$("message-input").addEventListener("input", () => {
  if (selected && $("message-input").value) client.typing(selected); // the client throttles it to the gateway's limit
});
$("compose").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("message-input").value.trim();
  if (!text || !selected) return;
  try {
    await send(text);
    $("message-input").value = "";
  } catch (e) {
    console.warn(e.message ?? e);
  }
});
$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  void signIn($("token").value.trim());
});
$("signout").onclick = () => {
  client?.stop();
  sessionStorage.removeItem("chat-token");
  location.reload();
};
document.addEventListener("visibilitychange", () => {
  if (!client) return;
  if (document.hidden) client.pause();
  else client.resume();
});
const saved = sessionStorage.getItem("chat-token");
if (saved) void signIn(saved);
