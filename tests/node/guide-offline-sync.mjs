// Runs the guide's own app-startup flow (realtime-messaging-guide.md, "Offline Message Sync"):
// guide-initialize-chat.js is that code block, copied unchanged. This harness supplies what the
// guide's code takes from its surroundings: a `fetch` that resolves the guide's relative URLs
// against the gateway, `token`, `localStorage` (starting with the given lastMessageCheck, if any),
// `updateBadge`, `displayMessage` and `chatClient.connect`.
// Usage: node guide-offline-sync.mjs <gatewayBaseUrl> <token> [lastMessageCheck]
// Prints one JSON line: {badge, displayed: [message...], lastMessageCheck, connects}. Exits non-zero
// if the guide's code throws (for instance on a response shape it cannot destructure).
import { readFileSync } from "node:fs";

const [base, token, stored] = process.argv.slice(2);
if (!base || !token) {
  console.error("usage: node guide-offline-sync.mjs <gatewayBaseUrl> <token> [lastMessageCheck]");
  process.exit(2);
}

const storage = new Map(stored ? [["lastMessageCheck", stored]] : []);
const localStorage = {
  getItem: (key) => (storage.has(key) ? storage.get(key) : null),
  setItem: (key, value) => storage.set(key, String(value)),
};
let badge = null;
const displayed = [];
let connects = 0;
const updateBadge = (n) => { badge = n; };
const displayMessage = (m) => { displayed.push(m); };
const chatClient = { connect: () => { connects += 1; } };
const fetchFromGateway = (path, init) => fetch(new URL(path, base), init);

const source = readFileSync(new URL("./guide-initialize-chat.js", import.meta.url), "utf8");
const initializeChat = new Function(
  "fetch", "token", "localStorage", "updateBadge", "displayMessage", "chatClient",
  `${source}\nreturn initializeChat;`,
)(fetchFromGateway, token, localStorage, updateBadge, displayMessage, chatClient);

await initializeChat();
process.stdout.write(JSON.stringify({
  badge,
  displayed,
  lastMessageCheck: localStorage.getItem("lastMessageCheck"),
  connects,
}) + "\n");
