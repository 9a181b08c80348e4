// Browser test driver for "seen by" and typing across two gateway instances, driven by
// tests/web_seen.rs. Serves the example web app twice with examples/web/serve.mjs (page A on
// `portA` talks to gateway A, page B on `portB` to gateway B), opens both in headless Chromium
// through playwright-core, and prints one JSON object per line on stdout.
// Usage: node tests/node/browser-seen.mjs '<json>' with
//   { supabase, anonKey, gatewayA, gatewayB, portA, portB, teacherToken, parentToken, thread, text }
// 1. The teacher signs in on A and opens `thread`; once "seen by N of M" shows under her message
//    `text`: {"event":"teacher","seen":"seen by N of M"}.
// 2. The parent signs in on B and opens the thread (the page marks it read once it is on screen);
//    once the teacher's count rose: {"event":"seen","seen":...,"names":<hover text>}.
// 3. The parent types in the message box on B; once the teacher's page shows a typing line:
//    {"event":"typing","text":...,"parentLine":<the parent's own typing line>}; once that line
//    went (5 s after the last keystroke): {"event":"typing-over","text":""}.
import { chromium } from "playwright-core";
import { serve } from "../../examples/web/serve.mjs";

const args = JSON.parse(process.argv[2]);
const out = (event) => process.stdout.write(`${JSON.stringify(event)}\n`);
const WAIT = 30_000;

const servers = [
  await serve({ gateway: args.gatewayA, supabase: args.supabase, anonKey: args.anonKey, port: args.portA }),
  await serve({ gateway: args.gatewayB, supabase: args.supabase, anonKey: args.anonKey, port: args.portB }),
];

/** A signed-in page at `port` with `thread` open. */
async function open(browser, port, token) {
  const page = await (await browser.newContext()).newPage();
  page.on("console", (m) => process.stderr.write(`[page ${port} ${m.type()}] ${m.text()}\n`));
  page.on("pageerror", (e) => process.stderr.write(`[page ${port} error] ${e.message}\n`));
  await page.goto(`http://127.0.0.1:${port}/`);
  await page.fill("#token", token);
  await page.click("#signin");
  await page.waitForSelector('#status[data-status="live"]', { timeout: WAIT });
  await page.click(`#threads li[data-thread-id="${args.thread}"]`);
  return page;
}

/** The "seen by" line under the message whose text is `text`, once there is one. */
const seenOf = (text) => {
  const message = [...document.querySelectorAll("#conversation .message")].find(
    (m) => m.querySelector(".content")?.textContent === text,
  );
  const summary = message?.querySelector(".seen summary");
  return summary ? { seen: summary.textContent, names: summary.title } : null;
};
const count = (seen) => Number(/seen by (\d+)/.exec(seen)?.[1]);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let phase = "teacher on A";
try {
  const teacher = await open(browser, args.portA, args.teacherToken);
  const before = await (await teacher.waitForFunction(seenOf, args.text, { timeout: WAIT })).jsonValue();
  out({ event: "teacher", ...before });

  phase = "parent reads on B";
  const parent = await open(browser, args.portB, args.parentToken);
  const after = await teacher.waitForFunction(
    ({ text, n }) => {
      const seen = [...document.querySelectorAll("#conversation .message")]
        .find((m) => m.querySelector(".content")?.textContent === text)
        ?.querySelector(".seen summary");
      const now = Number(/seen by (\d+)/.exec(seen?.textContent ?? "")?.[1]);
      return now > n ? { seen: seen.textContent, names: seen.title } : null;
    },
    { text: args.text, n: count(before.seen) },
    { timeout: WAIT },
  );
  out({ event: "seen", ...(await after.jsonValue()) });

  phase = "parent types on B";
  await parent.waitForSelector("#compose:not([hidden])", { timeout: WAIT });
  await parent.type("#message-input", "Yes, it is signed", { delay: 60 });
  const line = await teacher.waitForFunction(() => document.getElementById("typing").textContent || null, null, { timeout: WAIT });
  out({ event: "typing", text: await line.jsonValue(), parentLine: await parent.textContent("#typing") });

  phase = "typing expires";
  await teacher.waitForFunction(() => document.getElementById("typing").textContent === "", null, { timeout: WAIT });
  out({ event: "typing-over", text: await teacher.textContent("#typing") });
} catch (error) {
  out({ event: "error", phase, error: String(error?.message ?? error) });
} finally {
  await browser.close();
  for (const server of servers) server.close();
}
