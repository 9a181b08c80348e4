// A tiny static server for the example web app: serves this directory, the built client library
// (clients/js/dist) under /lib/, /config.json, and proxies /api/ to the gateway and /rest/v1/ to
// Supabase (same origin for the browser, so REST needs no CORS). The WebSocket goes straight to the
// gateway, which must list this page's origin in CORS_ALLOWED_ORIGINS. No dependencies.
// Usage: node examples/web/serve.mjs --gateway http://127.0.0.1:3000 --supabase http://127.0.0.1:54321 \
//          --anon-key <key> [--port 8080]
import http from "node:http";
import { readFile } from "node:fs/promises";
import { extname, join, normalize, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const roots = { "/lib/": join(here, "../../clients/js/dist/"), "/": here + "/" };
const types = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".map": "application/json", ".json": "application/json", ".css": "text/css" };

export function serve({ gateway, supabase, anonKey, port = 0, host = "127.0.0.1" }) {
  const server = http.createServer(async (req, res) => {
    const url = new URL(req.url, "http://x");
    const upstream = url.pathname.startsWith("/api/") ? gateway : url.pathname.startsWith("/rest/v1/") ? supabase : null;
    if (upstream) return proxy(req, res, new URL(url.pathname + url.search, upstream));
    if (url.pathname === "/config.json") {
      res.writeHead(200, { "content-type": "application/json" });
      return res.end(JSON.stringify({ gateway, anonKey }));
    }
    const [prefix, root] = Object.entries(roots).find(([p]) => url.pathname.startsWith(p));
    const rel = normalize(decodeURIComponent(url.pathname.slice(prefix.length)) || "index.html");
    if (rel.startsWith("..")) return void res.writeHead(403).end();
    try {
      const body = await readFile(join(root, rel === "." ? "index.html" : rel));
      res.writeHead(200, { "content-type": types[extname(rel)] ?? "application/octet-stream", "cache-control": "no-store" });
      res.end(body);
    } catch {
      res.writeHead(404).end("not found");
    }
  });
  return new Promise((resolve) => server.listen(port, host, () => resolve(server)));
}

function proxy(req, res, target) {
  const headers = { ...req.headers, host: target.host };
  const forward = http.request(target, { method: req.method, headers }, (answer) => {
    res.writeHead(answer.statusCode ?? 502, answer.headers);
    answer.pipe(res);
  });
  forward.on("error", (e) => {
    res.writeHead(502, { "content-type": "application/json" });
    res.end(JSON.stringify({ status: "error", message: `proxy: ${e.message}` }));
  });
  req.pipe(forward);
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const arg = (name, fallback) => {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? process.argv[i + 1] : fallback;
  };
  const options = { gateway: arg("gateway", "http://127.0.0.1:3000"), supabase: arg("supabase"), anonKey: arg("anon-key"), port: Number(arg("port", 8080)) };
  if (!options.supabase || !options.anonKey) {
    console.error("usage: node examples/web/serve.mjs --gateway URL --supabase URL --anon-key KEY [--port 8080]");
    process.exit(2);
  }
  const server = await serve(options);
  console.log(`example web app on http://127.0.0.1:${server.address().port}/ (gateway ${options.gateway})`);
}
