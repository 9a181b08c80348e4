// Ledger driver: runs the library (built in dist/) under Node against a real gateway, driven by
// the Rust test tests/js_client.rs over stdin/stdout, one JSON object per line.
// Usage: node e2e/ledger.mjs <gateway http url> <first token> [thread to subscribe]
// stdout (events): {"event":"message"|"status"|"disconnect"|"error"|"sync"|"need_token", ...}
// stdin (commands): {"cmd":"token","token":...} answers the oldest need_token;
//                   {"cmd":"pause"|"resume"|"kill"|"stop"}.
import readline from "node:readline";
import WebSocket from "ws";
import { ChatClient } from "../dist/index.js";

const [url, firstToken, thread] = process.argv.slice(2);
const out = (event) => process.stdout.write(`${JSON.stringify(event)}\n`);

// Every socket the library opens, so that "kill" can cut the newest one without a close frame
// (what a lost network does); no test hook in the library itself.
const sockets = [];
class TrackedWebSocket extends WebSocket {
  constructor(address) {
    super(address);
    sockets.push(this);
  }
}

const tokenWaiters = [];
const client = new ChatClient({
  url,
  token: firstToken,
  WebSocket: TrackedWebSocket,
  getToken: (reason) =>
    new Promise((resolve) => {
      tokenWaiters.push(resolve);
      out({ event: "need_token", reason });
    }),
  backoff: { baseMs: 200, capMs: 2_000 },
  catchUpHorizonMs: 0, // the ledger counts only what the test posts
  refreshMarginMs: 6_000,
  syncTimeoutMs: 2_000,
  pingIntervalMs: 5_000,
});
client.on("message", ({ message, source }) =>
  out({ event: "message", id: message.id, thread_id: message.thread_id, content: message.content, source }),
);
client.on("status", (status) => out({ event: "status", status }));
client.on("disconnect", (d) => out({ event: "disconnect", ...d }));
client.on("error", (e) => out({ event: "error", ...e }));
client.on("sync", (s) => out({ event: "sync", ...s }));
client.on("unreadCount", (n) => out({ event: "unread", count: n }));
if (thread) client.subscribeThread(thread);

readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const cmd = JSON.parse(line);
  switch (cmd.cmd) {
    case "token":
      tokenWaiters.shift()?.(cmd.token);
      break;
    case "pause":
      client.pause();
      break;
    case "resume":
      client.resume();
      break;
    case "kill":
      sockets.at(-1)?.terminate();
      break;
    case "stop":
      client.stop();
      out({ event: "stopped", cursor: client.cursor });
      process.exit(0);
  }
});
process.stdin.on("end", () => process.exit(0));
client.start();
