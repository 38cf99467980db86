// Click → panel update latency of the demo storefront, and event → push
// latency across two instances. Not a test: it prints figures for
// benches/RESULTS.md.
//
//   node --experimental-websocket benches/storefront_latency.mjs [--clicks 50]
//
// 1. Browser: headless Chromium (Debian's) on the storefront of a real
//    `nextbest serve` (embedded store, the demo catalog and history). Each
//    click on a product tile is timed in the page from the click to the
//    moment #recommendations shows the push that followed (a
//    MutationObserver on its data-updates), i.e. SDK track + flush → POST
//    /v1/events → apply → change feed → recommend → WebSocket → DOM. Then
//    the same for the add-to-cart button.
// 2. Across instances: two `nextbest serve` on one Redis and one Tansu; A
//    does not consume. A WebSocket on A; an event POSTed to B (produced,
//    consumed and applied by B, published on Redis, heard by A, which
//    recommends and pushes). Timed from the POST to the push on A.
import { spawn } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { catalog, freePort, launchChromium, repo, startServer } from "../web/test/server.js";

const arg = (name, dflt) => {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? Number(process.argv[i + 1]) : dflt;
};
const CLICKS = arg("clicks", 50);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function summary(name, xs) {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p) => s[Math.min(s.length - 1, Math.ceil(p * s.length) - 1)];
  const f = (x) => x.toFixed(1);
  console.log(`${name}: n=${s.length} p50=${f(q(0.5))} ms p90=${f(q(0.9))} ms p99=${f(q(0.99))} ms max=${f(s[s.length - 1])} ms`);
}

/** Clicks `selector` in the page and resolves to ms until the panel took the next push. */
async function timedClick(page, selector) {
  return page.evaluate(async (sel) => {
    const panel = document.querySelector("#recommendations");
    const n = Number(panel.dataset.updates);
    const el = document.querySelector(sel);
    if (!el) throw new Error(`nothing matches ${sel}`);
    const t0 = performance.now();
    const done = new Promise((ok) => {
      const mo = new MutationObserver(() => {
        if (Number(panel.dataset.updates) > n) {
          mo.disconnect();
          ok(performance.now() - t0);
        }
      });
      mo.observe(panel, { attributes: true, attributeFilter: ["data-updates"] });
    });
    el.click();
    const late = new Promise((_, no) => setTimeout(() => no(new Error("no panel update within 10 s")), 10_000));
    return Promise.race([done, late]);
  }, selector);
}

async function browserBench() {
  const server = await startServer();
  const browser = await launchChromium();
  try {
    const page = await browser.newPage({ viewport: { width: 1360, height: 1000 } });
    const items = catalog().filter((x) => x.category === "watches");
    await page.goto(`${server.base}/p/${items[0].item_id}`);
    await page.waitForSelector("body[data-ready=true]");
    await page.waitForFunction(() => Number(document.querySelector("#recommendations").dataset.updates) > 0);
    const clicks = [];
    for (let i = 0; i < CLICKS; i++) {
      // a tile of "More in Watches" (another product page, in-page navigation)
      clicks.push(await timedClick(page, ".grid.small a.tile[data-item-id]"));
      await sleep(150);
    }
    summary("browser click on a product tile → panel updated", clicks);
    const carts = [];
    for (let i = 0; i < CLICKS; i++) {
      carts.push(await timedClick(page, '[data-action="add-to-cart"]'));
      await sleep(150);
    }
    summary("browser add-to-cart click → panel updated", carts);
  } finally {
    await browser.close();
    await server.stop();
  }
}

function startProcess(cmd, args) {
  const child = spawn(cmd, args, { stdio: "ignore" });
  return { stop: () => child.kill("SIGKILL") };
}

async function waitFor(what, check, ms = 60_000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    try {
      if (await check()) return;
    } catch (_) {
      // not yet
    }
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}

async function crossInstanceBench() {
  const dir = mkdtempSync(join(tmpdir(), "nextbest-bench-"));
  const [redisPort, kafkaPort] = [await freePort(), await freePort()];
  const redis = startProcess("redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
  const url = `tcp://127.0.0.1:${kafkaPort}`;
  const tansu = startProcess(join(repo, ".deps/bin/tansu"), ["broker", "--listener-url", url, "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"]);
  const env = { NEXTBEST_REDIS_URL: `redis://127.0.0.1:${redisPort}/`, NEXTBEST_KAFKA_BROKERS: `127.0.0.1:${kafkaPort}` };
  const config = (consume) =>
    `[store]\nkey_prefix = "bench"\n[kafka]\ngroup_id = "bench"\nsession_timeout_ms = 6000\nconsume = ${consume}\n[model]\nwatch = false\n[rules]\nwatch = false\n`;
  let a;
  let b;
  try {
    a = await startServer({ dir, env, config: config(false), name: "a" });
    b = await startServer({ dir, env, config: config(true), name: "b" });
    await waitFor("A subscribed to the change feed", async () => /nextbest_change_feed_subscribed 1/.test(await (await fetch(`${a.base}/metrics`)).text()));
    const customer = `bench-${Date.now()}`;
    const pushes = [];
    const ws = new WebSocket(`${a.base.replace("http", "ws")}/v1/stream?customer_id=${customer}&k=10`);
    ws.onmessage = (m) => pushes.push({ at: performance.now(), rec: JSON.parse(m.data) });
    await waitFor("the first push", () => pushes.length > 0);
    const items = catalog();
    const post = (i) =>
      fetch(`${b.base}/v1/events`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ event_id: `${customer}-${i}`, type: "click", customer_id: customer, ts: Date.now(), item_id: items[i % items.length].item_id, props: { category: items[i % items.length].category } }),
      });
    // warm-up: B's consumer joins its group
    await post(CLICKS + 1);
    await waitFor("the warm-up push on A", () => pushes.length > 1, 90_000);
    const lat = [];
    for (let i = 0; i < CLICKS; i++) {
      const n = pushes.length;
      const t0 = performance.now();
      const r = await post(i);
      if (r.status !== 202) throw new Error(`POST answered ${r.status}`);
      await waitFor("a push on A", () => pushes.length > n, 10_000);
      lat.push(pushes[n].at - t0);
      await sleep(100);
    }
    ws.close();
    summary("two instances: POST /v1/events to B → push on A's socket (via Kafka, B's consumer, Redis pub/sub)", lat);
  } finally {
    await a?.stop();
    await b?.stop();
    tansu.stop();
    redis.stop();
  }
}

console.log(`nextbest storefront latency, ${CLICKS} clicks each, ${new Date().toISOString()}`);
await browserBench();
if (typeof WebSocket === "function") await crossInstanceBench();
else console.log("(cross-instance part skipped: run node with --experimental-websocket)");
