// The chat example's page in a real browser (Debian's Chromium, driven by playwright-core), as
// tests/browser.rs runs it against clusterd and two `chat` workers:
//
//   node chat.mjs <url> <screenshot dir> <profile dir>
//
// A desktop page and a phone page, served by different workers, exchange messages. Then the
// desktop page loses its worker: the script prints {"phase":"kill","pid":N} and waits for a line
// on stdin (the test kills that worker meanwhile). The desktop page must show that it is
// disconnected, keep a message typed meanwhile, send it once reconnected to a live worker, show
// that worker, and go on chatting. Screenshots go to <screenshot dir> (desktop.png, phone.png,
// desktop-offline.png, desktop-reconnected.png), each browser's fresh profile to <profile dir>.
// The last line is {"ok":true,...} or {"ok":false,"error":...}; the exit status is 0 only with ok.
//
// CHROMIUM overrides the browser's path (default /usr/bin/chromium, installed by
// scripts/install-chromium).
import { chromium } from "playwright-core";
import { mkdtemp } from "node:fs/promises";
import { createInterface } from "node:readline";
import path from "node:path";

const [url, dir, profiles] = process.argv.slice(2);
if (!url || !dir || !profiles) {
  console.error("usage: node chat.mjs <url> <screenshot dir> <profile dir>");
  process.exit(2);
}
// Failure bounds, not pauses: each wait returns as soon as its condition holds.
const WAIT_MS = 20_000;
const WHOLE_RUN_MS = 120_000;
// A page lands on the other worker after a few tries at most (least-connection); this bounds it.
const MAX_PHONE_PAGES = 8;

const print = (value) => console.log(JSON.stringify(value));
const fail = (error) => {
  print({ ok: false, error: String(error?.stack ?? error) });
  process.exit(1);
};
setTimeout(() => fail(`timed out after ${WHOLE_RUN_MS} ms`), WHOLE_RUN_MS).unref();

// The flags of a quiet, reproducible headless Chromium: no sandbox (root in CI), no GPU, no QUIC,
// nothing fetched in the background. playwright-core adds --headless itself (headless: true), and
// each context gets a fresh --user-data-dir (launchPersistentContext's first argument).
const FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

async function browser(name, options) {
  const userDataDir = await mkdtemp(path.join(profiles, `${name}-`));
  return chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: FLAGS,
    timeout: WAIT_MS * 3,
    ...options,
  });
}

// Every HTTP answer of 400 or more (a favicon 404 included) and every uncaught page error.
const problems = [];
function watch(page, name) {
  page.on("response", (r) => r.status() >= 400 && problems.push(`${name}: ${r.status()} for ${r.url()}`));
  page.on("pageerror", (e) => problems.push(`${name}: page error ${e.message}`));
  return page;
}

async function open(context, name) {
  const page = watch(await context.newPage(), name);
  await page.goto(url, { timeout: WAIT_MS });
  return page;
}

// The worker that serves the page's Socket.IO connection, once the page says it is connected.
async function servedBy(page) {
  await page.locator('body[data-state="connected"]').waitFor({ timeout: WAIT_MS });
  const state = await page.locator("#state").textContent();
  const match = /worker (\d+) \(pid (\d+)\)/.exec(state);
  if (!match) throw new Error(`the page does not name its worker: ${state}`);
  return { worker: Number(match[1]), pid: Number(match[2]), state };
}

async function say(page, text) {
  await page.locator("#input").fill(text);
  await page.locator("#input").press("Enter");
}

const received = (page, text) =>
  page.locator("#messages li:not(.system)", { hasText: text }).waitFor({ timeout: WAIT_MS });

try {
  const desktop = await browser("desktop", { viewport: { width: 1280, height: 800 } });
  const phone = await browser("phone", {
    viewport: { width: 390, height: 844 },
    deviceScaleFactor: 2,
    isMobile: true,
    hasTouch: true,
  });

  const page1 = await open(desktop, "desktop");
  const first = await servedBy(page1);
  let page2, second;
  for (let tries = 1; ; tries++) {
    page2 = await open(phone, "phone");
    second = await servedBy(page2);
    if (second.worker !== first.worker) break;
    if (tries === MAX_PHONE_PAGES) throw new Error(`${tries} phone pages all served by worker ${first.worker}`);
    await page2.close();
  }

  await say(page1, "hello from the desktop");
  await received(page2, "hello from the desktop");
  await say(page2, "hello from the phone");
  await received(page1, "hello from the phone");
  await page1.screenshot({ path: path.join(dir, "desktop.png") });
  await page2.screenshot({ path: path.join(dir, "phone.png") });

  // From here the desktop page cannot open a new Socket.IO connection (a reconnection starts with
  // a polling request, which is refused), so that it stays disconnected after the kill until the
  // message below is typed. The open WebSocket is not touched by this. (Going offline instead
  // would not do: the client closes its connection on the browser's "offline" event.)
  const refuse = (route) => route.abort("connectionrefused");
  await page1.route("**/socket.io/**", refuse);
  if ((await page1.locator('body[data-state="connected"]').count()) !== 1) {
    throw new Error("the page lost its connection before the kill: the kill would prove nothing");
  }
  print({ phase: "kill", pid: first.pid, worker: first.worker });
  await new Promise((resolve) => createInterface({ input: process.stdin }).once("line", resolve));
  await page1.locator('body[data-state="offline"]').waitFor({ timeout: WAIT_MS });
  await say(page1, "typed while disconnected");
  await page1.locator("#outbox li", { hasText: "typed while disconnected" }).waitFor({ timeout: WAIT_MS });
  await page1.screenshot({ path: path.join(dir, "desktop-offline.png") });
  if ((await page2.locator("#messages li", { hasText: "typed while disconnected" }).count()) !== 0) {
    throw new Error("the message arrived while its page was disconnected");
  }

  if ((await page1.locator('body[data-state="offline"]').count()) !== 1) {
    throw new Error("the page reconnected while new connections were refused");
  }
  await page1.unroute("**/socket.io/**", refuse);
  const third = await servedBy(page1);
  if (third.pid === first.pid) throw new Error(`still served by the killed pid ${first.pid}: ${third.state}`);
  await received(page2, "typed while disconnected");
  await page1.locator("#outbox li").first().waitFor({ state: "detached", timeout: WAIT_MS });
  await say(page2, "still chatting from the phone");
  await received(page1, "still chatting from the phone");
  await say(page1, "and from the desktop");
  await received(page2, "and from the desktop");
  await page1.screenshot({ path: path.join(dir, "desktop-reconnected.png") });

  await desktop.close();
  await phone.close();
  if (problems.length) throw new Error(`HTTP errors or page errors:\n${problems.join("\n")}`);
  print({ ok: true, desktop: [first, third], phone: second });
  process.exit(0);
} catch (error) {
  fail(error);
}
