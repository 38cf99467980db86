// Prints a demo shopping history for the catalog as JSON Lines on stdout
// (the event format of POST /v1/events, which `nextbest backfill` and
// `nextbest serve --backfill-events` read): 400 shoppers browsing,
// clicking, carting and buying over the last 12 hours, so the storefront's
// popularity lists (the last 24 h) are not empty on first start. The
// shoppers and what they do are fixed by a seed; only the times move with
// the clock. `make run` writes it to .deps/demo-history.jsonl.
//
//   node web/store/make-history.mjs [--now MS] > history.jsonl
import { readFileSync } from "node:fs";
import { catalogPath, mulberry32 } from "./make-catalog.mjs";

const args = process.argv.slice(2);
const at = args.indexOf("--now");
const now = at >= 0 ? Number(args[at + 1]) : Date.now();
const items = readFileSync(catalogPath, "utf8")
  .trim()
  .split("\n")
  .map((l) => JSON.parse(l));
const byCategory = new Map();
for (const it of items) {
  if (!byCategory.has(it.category)) byCategory.set(it.category, []);
  byCategory.get(it.category).push(it);
}
const categories = [...byCategory.keys()];
const rand = mulberry32(7);
// a few items of each category are much more popular than the rest
const weight = (it) => 1 / (1 + (Number(it.item_id.slice(2)) * 7919) % 40);
const pick = (list) => {
  const total = list.reduce((s, it) => s + weight(it), 0);
  let r = rand() * total;
  for (const it of list) {
    r -= weight(it);
    if (r <= 0) return it;
  }
  return list[list.length - 1];
};

const out = [];
let n = 0;
for (let s = 0; s < 400; s++) {
  const customer = `demo-shopper-${s}`;
  const session = `demo-session-${s}`;
  let ts = now - Math.floor((0.05 + rand() * 0.95) * 12 * 3600 * 1000);
  let seq = 0;
  const emit = (type, it, extra = {}) => {
    ts += 2000 + Math.floor(rand() * 40000);
    if (ts > now - 1000) ts = now - 1000;
    out.push({
      event_id: `demo-${++n}`,
      type,
      customer_id: customer,
      ts,
      session_id: session,
      item_id: it.item_id,
      seq: ++seq,
      props: { price: it.price, category: it.category, page: `/p/${it.item_id}`, ...extra },
    });
  };
  const cat = categories[Math.floor(rand() * categories.length)];
  const views = 2 + Math.floor(rand() * 6);
  for (let v = 0; v < views; v++) {
    const it = pick(byCategory.get(cat));
    emit("click", it);
    emit("page_view", it, { dwell_ms: 3000 + Math.floor(rand() * 60000) });
    if (rand() < 0.25) {
      emit("add_to_cart", it, { quantity: 1 });
      if (rand() < 0.4) emit("purchase", it, { quantity: 1 });
    }
  }
}
out.sort((a, b) => a.ts - b.ts);
// every item is seen at least once, so each has its category
for (const it of items) {
  out.push({
    event_id: `demo-${++n}`,
    type: "page_view",
    customer_id: "demo-crawler",
    ts: now - 13 * 3600 * 1000,
    item_id: it.item_id,
    props: { price: it.price, category: it.category, page: `/p/${it.item_id}` },
  });
}
process.stdout.write(out.map((e) => JSON.stringify(e)).join("\n") + "\n");
