// Browser test driver: serves examples/web (with the built library), opens it in headless Chromium
// through playwright-core, signs in with a token, and reports what the page shows. Driven by
// tests/js_client.rs. Usage:
//   node tests/node/browser.mjs <gateway url> <supabase url> <anon key> <token> <thread A> <thread B> <text A> <text B>
// Prints {"event":"ready","badge":N} once the page is live with thread A open; the Rust side then
// inserts <text A> in thread A and <text B> in thread B; prints {"event":"result",...} and exits.
import { chromium } from "playwright-core";
import { serve } from "../../examples/web/serve.mjs";

const [gateway, supabase, anonKey, token, threadA, threadB, textA, textB, port] = process.argv.slice(2);
const out = (event) => process.stdout.write(`${JSON.stringify(event)}\n`);
const WAIT = 20_000;

const server = await serve({ gateway, supabase, anonKey, port: Number(port ?? 0) });
const origin = `http://127.0.0.1:${server.address().port}`;
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const result = { event: "result" };
try {
  const page = await browser.newPage();
  page.on("console", (m) => process.stderr.write(`[page ${m.type()}] ${m.text()}\n`));
  page.on("pageerror", (e) => process.stderr.write(`[page error] ${e.message}\n`));
  await page.goto(origin);
  await page.fill("#token", token);
  await page.click("#signin");
  await page.waitForSelector('#status[data-status="live"]', { timeout: WAIT });
  // Opening thread A marks it read (POST mark-read, then GET unread-count): wait for both.
  // Both waiters exist before the click: the count may come back before the mark-read is seen.
  const marked = page.waitForResponse((r) => r.url().includes(`/api/chat/mark-read/${threadA}`), { timeout: WAIT });
  const counted = page.waitForResponse((r) => r.url().includes("/api/chat/unread-count"), { timeout: WAIT });
  await page.click(`#threads li[data-thread-id="${threadA}"]`, { timeout: WAIT });
  await marked;
  await counted;
  await page.waitForTimeout(300);
  const badge = Number(await page.textContent("#badge"));
  out({ event: "ready", badge });

  await page.waitForSelector(`#conversation .content:text-is("${textA}")`, { timeout: WAIT });
  result.sawA = true;
  result.senderA = await page.textContent(`#conversation .message:last-child .who`);
  await page.waitForSelector(`#threads li[data-thread-id="${threadB}"] .unread`, { timeout: WAIT });
  await page.waitForFunction((n) => Number(document.getElementById("badge").textContent) === n, badge + 1, { timeout: WAIT });
  result.badgeAfter = Number(await page.textContent("#badge"));
  result.threadBUnread = await page.textContent(`#threads li[data-thread-id="${threadB}"] .unread`);
  await page.click(`#threads li[data-thread-id="${threadB}"]`);
  await page.waitForSelector(`#conversation .content:text-is("${textB}")`, { timeout: WAIT });
  result.sawB = true;
  // Reading thread B clears it (its message and any older unread one): the badge comes down.
  await page.waitForFunction((n) => Number(document.getElementById("badge").textContent) <= n, badge, { timeout: WAIT });
  await page.waitForTimeout(300);
  result.badgeAfterReading = Number(await page.textContent("#badge"));
  result.status = await page.textContent("#status");
} catch (error) {
  result.error = String(error?.message ?? error);
  result.badgeAtError = await browser.contexts()[0]?.pages()[0]?.textContent("#badge").catch(() => null);
} finally {
  out(result);
  await browser.close();
  server.close();
}
