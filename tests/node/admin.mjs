// Browser driver of the gateway's operator page (/admin): opens it in headless Chromium through
// playwright-core, tries a wrong token, logs in with the right one, finds a connected user and
// clicks "Disconnect". Driven by tests/admin.rs. Usage:
//   node tests/node/admin.mjs <gateway url> <admin token> <user id>
// Prints one {"event":"result",...} line and exits.
import { chromium } from "playwright-core";

const [gateway, token, userId] = process.argv.slice(2);
const WAIT = 20_000;
const out = (event) => process.stdout.write(`${JSON.stringify(event)}\n`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const result = { event: "result", urls: [], cspViolations: [] };
try {
  const page = await browser.newPage();
  page.on("console", (m) => {
    process.stderr.write(`[page ${m.type()}] ${m.text()}\n`);
    if (/Content Security Policy/i.test(m.text())) result.cspViolations.push(m.text());
  });
  page.on("pageerror", (e) => process.stderr.write(`[page error] ${e.message}\n`));
  page.on("request", (r) => result.urls.push(r.url()));
  page.on("dialog", (d) => d.accept());
  await page.goto(`${gateway}/admin`);
  // The stylesheet is a file the Content-Security-Policy allows: the page is styled.
  result.styled = await page.evaluate(() => getComputedStyle(document.body).margin === "0px");

  // A wrong token is refused by the API and the login form comes back with a message.
  await page.fill("#token", "not-the-admin-token");
  await page.click("#signin");
  await page.waitForFunction(() => document.getElementById("error").textContent.length > 0, null, { timeout: WAIT });
  result.wrongTokenError = await page.textContent("#error");
  result.dashboardHiddenAfterWrongToken = await page.isHidden("#dashboard");

  await page.fill("#token", token);
  await page.click("#signin");
  const row = `#online tr[data-user-id="${userId}"]`;
  await page.waitForSelector(row, { timeout: WAIT });
  result.sawUser = true;
  result.sessions = await page.textContent(`${row} td:nth-child(2)`);
  result.upstream = await page.textContent("#upstream");
  result.ready = await page.textContent("#ready");
  result.storedInSession = (await page.evaluate(() => sessionStorage.getItem("gateway-admin-token"))) !== null;
  // Deliveries per second appear from the second overview on.
  await page.waitForFunction(() => document.getElementById("rate").textContent !== "–", null, { timeout: WAIT });
  result.rate = await page.textContent("#rate");
  // The push queue, as the gateway read it (no transport here: drained, nothing pending).
  await page.waitForFunction(() => document.getElementById("push-pending").textContent !== "–", null, { timeout: WAIT });
  result.pushPending = await page.textContent("#push-pending");
  result.pushJobsShown = /^\d+$/.test(await page.textContent("#push-jobs"));

  await page.click(`${row} button.disconnect`);
  await page.waitForFunction((sel) => document.querySelector(sel)?.textContent.startsWith("closed"),
    `${row} button.disconnect`, { timeout: WAIT }).catch(() => {});
  // The user's disconnect shows up in the recent list (the row itself may already be gone).
  await page.waitForSelector(`#disconnects tr:has(td:text-is("${userId}")) td:text-is("1008")`, { timeout: WAIT });
  result.listedDisconnect = await page.textContent(`#disconnects tr:has(td:text-is("${userId}")) td:nth-child(4)`);
  result.url = page.url();
} catch (error) {
  result.error = String(error?.message ?? error);
} finally {
  out(result);
  await browser.close();
}
