// The demo storefront in headless Chromium against a real `nextbest serve`:
// browse three products of one category and see the live panel follow,
// fill the cart past 100 and see an upsell badge arrive over the
// WebSocket, with no console errors. A screenshot is saved in the test's
// temp folder (printed).
import { test, after, before } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { catalog, launchChromium, startServer } from "./server.js";

let server;
let browser;
before(async () => {
  server = await startServer();
  browser = await launchChromium();
});
after(async () => {
  await browser?.close();
  await server?.stop();
});

/** The panel's items: [item_id, action] pairs. */
const panelItems = (page) =>
  page.$$eval("#recommendations [data-item-id]", (xs) => xs.map((x) => [x.dataset.itemId, x.dataset.action]));
const updates = (page) => page.$eval("#recommendations", (p) => Number(p.dataset.updates));
/** Waits until the panel has taken more than `n` pushes. */
const pushedAfter = (page, n) =>
  page.waitForFunction((n) => Number(document.querySelector("#recommendations").dataset.updates) > n, n, { timeout: 15_000 });

test("browse a category, fill the cart past 100, see the panel follow and an upsell arrive", { timeout: 120_000 }, async (t) => {
  const page = await browser.newPage({ viewport: { width: 1360, height: 1000 } });
  const problems = [];
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console: ${m.text()}`);
  });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  const items = catalog();
  const byId = new Map(items.map((x) => [x.item_id, x]));

  await page.goto(`${server.base}/`);
  await page.waitForSelector("body[data-ready=true]", { timeout: 15_000 });
  await pushedAfter(page, 0); // the push on connect
  const first = await panelItems(page);
  assert.ok(first.length > 0, "a new shopper gets popular items");
  assert.ok(first.every(([id, action]) => id && action), "each item carries data-item-id and data-action");

  // three products of one category, by clicking their tiles
  const shoes = items.filter((x) => x.category === "shoes" && x.in_stock === 1).sort((a, b) => a.price - b.price);
  const chosen = shoes.slice(0, 3);
  const seen = [first];
  for (const item of chosen) {
    await page.click('nav a[data-category="shoes"]');
    await page.waitForSelector(`.grid a.tile[data-item-id="${item.item_id}"]`);
    const n = await updates(page);
    await page.click(`.grid a.tile[data-item-id="${item.item_id}"]`);
    await page.waitForSelector(`[data-action="add-to-cart"][data-item-id="${item.item_id}"]`);
    await pushedAfter(page, n);
    seen.push(await panelItems(page));
  }
  const key = (xs) => xs.map(([id]) => id).join(",");
  assert.ok(new Set(seen.map(key)).size > 1, `the panel changed as the shopper browsed: ${seen.map(key).join(" | ")}`);
  const last = seen[seen.length - 1];
  assert.ok(
    last.some(([id]) => byId.get(id)?.category === "shoes"),
    `after three shoes the panel shows shoes: ${key(last)}`
  );

  // the cart past 100: the three viewed shoes, one each
  let total = 0;
  for (const item of chosen) {
    await page.goto(`${server.base}/p/${item.item_id}`);
    await page.waitForSelector(`[data-action="add-to-cart"][data-item-id="${item.item_id}"]`);
    const n = await updates(page);
    await page.click('[data-action="add-to-cart"]');
    total += item.price;
    await pushedAfter(page, n);
  }
  assert.ok(total > 100, `cart worth ${total}`);
  await page.waitForFunction((n) => document.querySelector("#cart-link").dataset.cartCount === String(n), chosen.length);
  const upsell = await page.waitForSelector('#recommendations [data-action="upsell"]', { timeout: 15_000 });
  assert.ok(await upsell.$(".badge.upsell"), "an upsell item shows its badge");
  const upsold = byId.get(await upsell.getAttribute("data-item-id"));
  assert.ok(upsold && upsold.price > total / chosen.length, "the upsell is pricier than the cart's average item");
  const final = await panelItems(page);
  assert.ok(
    final.some(([id, action]) => action === "complete_purchase" && chosen.some((c) => c.item_id === id)),
    `a carted item is offered as complete_purchase: ${JSON.stringify(final)}`
  );

  // the live panel: a measured latency and the features the server holds
  await page.waitForFunction(() => /\d+ ms/.test(document.querySelector("#latency-last")?.textContent || ""));
  await page.waitForFunction(
    (total) => Number(document.querySelector('#features tr[data-feature="cart_value"] td')?.textContent) > 100 && total > 100,
    total,
    { timeout: 15_000 }
  );

  const shot = join(server.dir, "storefront.png");
  await page.screenshot({ path: shot, fullPage: true });
  t.diagnostic(`screenshot: ${shot}`);
  assert.deepEqual(problems, [], "no console errors");
  await page.close();
});

test("the classic-script SDK works from a plain page of the same origin", { timeout: 60_000 }, async () => {
  const page = await browser.newPage();
  const problems = [];
  page.on("console", (m) => m.type() === "error" && problems.push(m.text()));
  page.on("pageerror", (e) => problems.push(e.message));
  // a page of this origin that loads only the classic script
  await page.goto(`${server.base}/healthz`);
  await page.addScriptTag({ url: "/sdk/nextbest.global.js" });
  const result = await page.evaluate(async () => {
    const nb = window.nextbest;
    nb.init({ endpoint: "", customerId: "classic-1" });
    const pushes = [];
    nb.subscribe((r) => pushes.push(r), { k: 3 });
    nb.track("add_to_cart", { item_id: "p-010", price: 42, quantity: 1, category: "shoes" });
    await nb.flush();
    const deadline = Date.now() + 10_000;
    while (Date.now() < deadline && !pushes.some((p) => p.items.some((i) => i.item_id === "p-010"))) {
      await new Promise((r) => setTimeout(r, 50));
    }
    const rec = await nb.recommend({ k: 3 });
    return { pushes: pushes.length, carted: pushes.some((p) => p.items.some((i) => i.item_id === "p-010")), rec };
  });
  assert.ok(result.carted, `a push shows the carted item (${result.pushes} pushes)`);
  assert.equal(result.rec.customer_id, "classic-1");
  assert.ok(result.rec.items.length > 0);
  assert.deepEqual(problems, []);
  await page.close();
});

test("a beacon on page exit delivers the queued events", { timeout: 60_000 }, async () => {
  const page = await browser.newPage();
  await page.goto(`${server.base}/healthz`);
  await page.addScriptTag({ url: "/sdk/nextbest.global.js" });
  const customer = `beacon-${Date.now()}`;
  await page.evaluate((customer) => {
    // a long interval: only the exit can send them
    window.nextbest.init({ endpoint: "", customerId: customer, flushIntervalMs: 600_000 });
    for (let i = 0; i < 3; i++) window.nextbest.track("add_to_cart", { item_id: `p-0${20 + i}`, price: 10, quantity: 1, category: "bags" });
  }, customer);
  await page.goto("about:blank"); // pagehide → sendBeacon (text/plain)
  const deadline = Date.now() + 10_000;
  let items = 0;
  while (Date.now() < deadline) {
    const r = await fetch(`${server.base}/v1/features/customer/${customer}`);
    items = (await r.json()).features?.cart_items ?? 0;
    if (items === 3) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(items, 3, "the three events arrived by beacon");
  await page.close();
});
