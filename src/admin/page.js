// The operator page's script (a file, not inline: the page's Content-Security-Policy allows no
// inline script).
"use strict";
// The token lives in sessionStorage only (gone when the tab closes) and travels as a bearer
// header, never in a URL.
const KEY = "gateway-admin-token";
const $ = (id) => document.getElementById(id);
let previous = null; // { total, at } of the last overview, for deliveries per second
let timer = null;

function cell(text) {
  const td = document.createElement("td");
  td.textContent = String(text);
  return td;
}

async function api(method, path) {
  const token = sessionStorage.getItem(KEY);
  const response = await fetch(path, { method, headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
  if (response.status === 401) {
    logout("The token was refused.");
    throw new Error("unauthorized");
  }
  if (!response.ok) throw new Error(`HTTP ${response.status}`);
  return response.json();
}

function render(o) {
  $("sessions").textContent = o.sessions;
  $("users").textContent = o.users;
  const now = performance.now();
  if (previous) {
    const seconds = (now - previous.at) / 1000;
    $("rate").textContent = seconds > 0 ? Math.max(0, (o.deliveries_total - previous.total) / seconds).toFixed(1) : "–";
  }
  previous = { total: o.deliveries_total, at: now };
  $("upstream").textContent = o.upstream;
  $("upstream").className = "value " + (o.upstream === "live" ? "ok" : "bad");
  $("ready").textContent = o.draining ? "draining" : o.ready ? "ready" : "not ready";
  $("ready").className = "value " + (o.ready ? "ok" : "bad");
  const online = $("online");
  online.replaceChildren(...o.online.map((u) => {
    const tr = document.createElement("tr");
    tr.dataset.userId = u.user_id;
    const button = document.createElement("button");
    button.textContent = "Disconnect";
    button.className = "disconnect";
    button.addEventListener("click", () => disconnect(u.user_id, button));
    const action = document.createElement("td");
    action.append(button);
    tr.append(cell(u.user_id), cell(u.sessions), action);
    return tr;
  }));
  $("disconnects").replaceChildren(...o.recent_disconnects.map((d) => {
    const tr = document.createElement("tr");
    tr.append(cell(d.at), cell(d.user_id), cell(d.code), cell(d.reason));
    return tr;
  }));
  renderPush(o.push_queue);
  $("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

// The push queue as the gateway last read it (every few seconds); null before the first reading.
function renderPush(q) {
  const ids = ["push-jobs", "push-oldest", "push-pending", "push-leased", "push-sent", "push-dropped", "push-presence"];
  if (!q) {
    for (const id of ids) $(id).textContent = "–";
    $("push-read").textContent = "(not read yet)";
    return;
  }
  const age = q.oldest_job_at ? Math.max(0, (Date.parse(q.read_at) - Date.parse(q.oldest_job_at)) / 1000) : 0;
  const finished = q.finished_last_hour ?? {};
  $("push-jobs").textContent = q.jobs;
  $("push-oldest").textContent = q.oldest_job_at ? `${age.toFixed(1)} s` : "none";
  $("push-oldest").className = "value " + (age > 60 ? "bad" : "ok");
  $("push-pending").textContent = q.pending;
  $("push-leased").textContent = q.leased;
  $("push-sent").textContent = finished.sent ?? 0;
  $("push-dropped").textContent = finished.dropped ?? 0;
  $("push-dropped").className = "value " + ((finished.dropped ?? 0) > 0 ? "bad" : "ok");
  $("push-presence").textContent = q.presence;
  $("push-read").textContent = `read ${new Date(q.read_at).toLocaleTimeString()}`;
}

async function refresh() {
  try {
    render(await api("GET", "/admin/api/overview"));
  } catch (e) {
    if (e.message !== "unauthorized") $("updated").textContent = `update failed: ${e.message}`;
  }
}

async function disconnect(userId, button) {
  if (!confirm(`Disconnect every session of ${userId}?`)) return;
  button.disabled = true;
  try {
    const r = await api("POST", `/admin/api/users/${encodeURIComponent(userId)}/disconnect`);
    button.textContent = `closed ${r.closed}`;
  } catch (e) {
    button.disabled = false;
    button.textContent = "Disconnect";
  }
  setTimeout(refresh, 300);
}

function start() {
  $("login").hidden = true;
  $("dashboard").hidden = false;
  $("logout").hidden = false;
  previous = null;
  refresh();
  timer = setInterval(refresh, 2000);
}

function logout(message) {
  sessionStorage.removeItem(KEY);
  clearInterval(timer);
  $("dashboard").hidden = true;
  $("logout").hidden = true;
  $("login").hidden = false;
  $("error").textContent = message ?? "";
}

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $("token").value);
  $("token").value = "";
  $("error").textContent = "";
  start();
});
$("logout").addEventListener("click", () => logout());
if (sessionStorage.getItem(KEY)) start();
