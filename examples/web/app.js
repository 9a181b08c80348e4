// The example web app: threads, live messages and the unread badge, on the client library.
// Served by serve.mjs, which also provides /config.json ({gateway, anonKey}), the library under
// /lib/ and a same-origin proxy for the gateway's REST (/api/) and PostgREST (/rest/v1/).
import { ChatClient, localStorageAdapter } from "./lib/index.js";

const $ = (id) => document.getElementById(id);
const config = await (await fetch("./config.json")).json();
const threads = new Map(); // id -> { title, messages: [], unread }
let selected = null;
let client = null;

function render() {
  const list = $("threads");
  list.replaceChildren(
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
      li.onclick = () => openThread(id);
      return li;
    }),
  );
  const pane = $("conversation");
  const thread = selected && threads.get(selected);
  pane.replaceChildren(
    ...(thread ? thread.messages : []).map((m) => {
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
      time.textContent = new Date(m.created_at).toLocaleTimeString();
      const text = document.createElement("div");
      text.className = "content";
      text.textContent = m.content;
      div.append(who, role, time, text);
      return div;
    }),
  );
  pane.scrollTop = pane.scrollHeight;
}

async function openThread(id) {
  selected = id;
  const thread = threads.get(id);
  thread.unread = 0;
  render();
  try {
    await client.markRead(id);
  } catch (e) {
    console.warn("mark-read failed", e);
  }
}

async function loadThreads(token) {
  const response = await fetch("./rest/v1/threads?select=id,title&order=title", {
    headers: { apikey: config.anonKey, Authorization: `Bearer ${token}` },
  });
  if (!response.ok) throw new Error(`cannot list threads (HTTP ${response.status})`);
  for (const row of await response.json()) {
    if (!threads.has(row.id)) threads.set(row.id, { title: row.title, messages: [], unread: 0 });
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
    $("status").textContent = status;
    $("status").dataset.status = status;
  });
  client.on("unreadCount", (n) => {
    $("badge").textContent = String(n);
    $("badge").dataset.count = String(n);
  });
  client.on("message", ({ message }) => {
    let thread = threads.get(message.thread_id);
    if (!thread) threads.set(message.thread_id, (thread = { title: null, messages: [], unread: 0 }));
    thread.messages.push(message);
    if (message.thread_id === selected) {
      client.markRead(selected).catch(() => undefined);
    } else if (message.sender_id !== client.userId) {
      thread.unread += 1;
    }
    render();
  });
  client.on("error", (e) => console.warn("chat:", e.kind, e.message));
  render();
  await client.start();
  await client.refreshUnreadCount().catch(() => undefined);
}

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
