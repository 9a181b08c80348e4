// Browser test driver: the example web app as `scripts/demo --web` serves it, in headless Chromium
// through playwright-core, driven by tests/web_example.rs. One JSON object per line on stdout.
// Usage: node tests/node/browser.mjs '<json>' with
//   { url, token, threadA, threadB, unreadA: [texts], oldest, total, textA, refusedUrl }
// 1. Signs in at `url`, opens thread A and records (in the page, as they happen) when each of the
//    `unreadA` texts is on screen, when the page asks the gateway to mark A read and when A's
//    badge goes; scrolls up until the start of the conversation; prints {"event":"ready",...}.
// 2. The Rust side then inserts `textA` in A and a message in B; prints {"event":"live",...} once
//    `textA` is on screen and B's badge went up.
// 3. Signs in at `refusedUrl` (an origin the gateway does not admit) and prints
//    {"event":"refused",...} with what the status pill says; then exits.
import { chromium } from "playwright-core";

const args = JSON.parse(process.argv[2]);
const out = (event) => process.stdout.write(`${JSON.stringify(event)}\n`);
const WAIT = 30_000;

/** In the page, before its scripts: timestamps of what the test must see in order. */
function instrument({ unread, threadA }) {
  window.__events = [];
  const log = (what, extra = {}) => window.__events.push({ what, at: performance.now(), ...extra });
  const fetch = window.fetch.bind(window);
  window.fetch = (input, init) => {
    const url = String(input?.url ?? input);
    if (url.includes(`/api/chat/mark-read/${threadA}`)) log("mark-read");
    return fetch(input, init);
  };
  const shown = new Set();
  let hadBadge = false;
  const check = () => {
    const contents = [...document.querySelectorAll("#conversation .content")].map((e) => e.textContent);
    for (const text of unread) {
      if (!shown.has(text) && contents.includes(text)) {
        shown.add(text);
        log("shown", { text });
      }
    }
    const badge = document.querySelector(`#threads li[data-thread-id="${threadA}"] .unread`);
    if (badge) hadBadge = true;
    else if (hadBadge) {
      hadBadge = false;
      log("badge-dropped");
    }
  };
  new MutationObserver(check).observe(document, { subtree: true, childList: true, characterData: true });
}

async function signIn(page, url) {
  page.on("console", (m) => process.stderr.write(`[page ${m.type()}] ${m.text()}\n`));
  page.on("pageerror", (e) => process.stderr.write(`[page error] ${e.message}\n`));
  await page.goto(url);
  await page.fill("#token", args.token);
  await page.click("#signin");
}

const badgeOf = (page, thread) =>
  page.textContent(`#threads li[data-thread-id="${thread}"] .unread`, { timeout: 1000 }).then(Number, () => 0);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let phase = "sign-in";
try {
  const context = await browser.newContext();
  await context.addInitScript(instrument, { unread: args.unreadA, threadA: args.threadA });
  const page = await context.newPage();
  await signIn(page, args.url);
  await page.waitForSelector('#status[data-status="live"]', { timeout: WAIT });
  await page.waitForSelector(`#threads li[data-thread-id="${args.threadA}"] .unread`, { timeout: WAIT });
  const ready = { event: "ready", badgeA: await badgeOf(page, args.threadA), badgeB: await badgeOf(page, args.threadB) };

  phase = "open thread A";
  await page.click(`#threads li[data-thread-id="${args.threadA}"]`);
  await page.waitForFunction(() => window.__events.some((e) => e.what === "badge-dropped"), null, { timeout: WAIT });
  ready.events = await page.evaluate(() => window.__events);
  ready.afterDivider = await page.textContent("#unread-divider + .message .content");
  ready.firstPage = await page.locator("#conversation .message").count();

  phase = "scroll up";
  ready.pages = [ready.firstPage];
  while ((await page.locator("#conversation .start").count()) === 0) {
    const before = await page.locator("#conversation .message").count();
    await page.evaluate(() => {
      document.getElementById("conversation").scrollTop = 0;
    });
    await page.waitForFunction((n) => document.querySelectorAll("#conversation .message").length > n, before, { timeout: WAIT });
    ready.pages.push(await page.locator("#conversation .message").count());
  }
  const ids = await page.$$eval("#conversation .message", (els) => els.map((e) => e.dataset.messageId));
  ready.total = ids.length;
  ready.distinct = new Set(ids).size;
  ready.first = await page.$eval("#conversation .message .content", (e) => e.textContent);
  out(ready);

  phase = "live messages";
  await page.waitForSelector(`#conversation .content:text-is("${args.textA}")`, { timeout: WAIT });
  const senderA = await page.textContent(`#conversation .message:last-child .who`);
  await page.waitForFunction(
    ({ thread, n }) => Number(document.querySelector(`#threads li[data-thread-id="${thread}"] .unread`)?.textContent) === n,
    { thread: args.threadB, n: ready.badgeB + 1 },
    { timeout: WAIT },
  );
  out({ event: "live", senderA, badgeB: await badgeOf(page, args.threadB), badgeA: await badgeOf(page, args.threadA) });

  phase = "refused origin";
  const other = await (await browser.newContext()).newPage();
  await signIn(other, args.refusedUrl);
  await other.waitForSelector("#status[data-reason]", { timeout: WAIT });
  out({
    event: "refused",
    reason: await other.getAttribute("#status", "data-reason"),
    text: await other.textContent("#status"),
    status: await other.getAttribute("#status", "data-status"),
  });
} catch (error) {
  out({ event: "error", phase, error: String(error?.message ?? error) });
} finally {
  await browser.close();
}
