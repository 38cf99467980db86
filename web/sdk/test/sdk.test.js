// Unit tests of the SDK against fake fetch, WebSocket, storage, beacon and timers.
import { test } from "node:test";
import assert from "node:assert/strict";
import nextbest, { NextbestError } from "../nextbest.js";
import { fakeEnv, fakeFetch, settle } from "./fakes.js";

const make = (options = {}, overrides = {}) => {
  const env = fakeEnv(overrides);
  const client = nextbest.createClient({ endpoint: "https://api.example/", ...options }, env);
  return { env, client };
};
const sentEvents = (fetch) => fetch.calls.filter((c) => c.url.endsWith("/v1/events")).flatMap((c) => c.json);

test("an anonymous id is kept in storage until identify", () => {
  const { env, client } = make();
  const anon = client.getCustomerId();
  assert.match(anon, /^anon-/);
  const again = nextbest.createClient({ endpoint: "" }, { ...env, fetch: fakeFetch() });
  assert.equal(again.getCustomerId(), anon, "the same browser keeps its anonymous id");
  client.identify("c42");
  assert.equal(client.getCustomerId(), "c42");
  const later = nextbest.createClient({ endpoint: "" }, { ...env, fetch: fakeFetch() });
  assert.equal(later.getCustomerId(), "c42", "identify is remembered across reloads");
  later.reset();
  assert.match(later.getCustomerId(), /^anon-/);
  assert.notEqual(later.getCustomerId(), anon, "a reset starts a new anonymous id");
  const given = nextbest.createClient({ customerId: "c7" }, fakeEnv());
  assert.equal(given.getCustomerId(), "c7");
  assert.throws(() => client.identify(""), TypeError);
});

test("track fills event_id, ts, seq per customer, session and item_id", () => {
  const { env, client } = make({ customerId: "c1" });
  const a = client.track("click", { item_id: "p7", price: 59.9, category: "shoes" });
  const b = client.track("page_view", { page: "/p/7" });
  assert.deepEqual(Object.keys(a).sort(), ["customer_id", "event_id", "item_id", "props", "seq", "session_id", "ts", "type"]);
  assert.equal(a.item_id, "p7");
  assert.deepEqual(a.props, { price: 59.9, category: "shoes" }, "item_id leaves props");
  assert.equal(a.customer_id, "c1");
  assert.equal(a.ts, env.time.t);
  assert.notEqual(a.event_id, b.event_id);
  assert.deepEqual([a.seq, b.seq], [1, 2]);
  assert.equal(a.session_id, b.session_id);
  assert.equal("item_id" in b, false);
  client.identify("c2");
  assert.equal(client.track("page_view").seq, 1, "seq counts per customer");
  client.identify("c1");
  assert.equal(client.track("page_view").seq, 3);
  assert.throws(() => client.track(""), TypeError);
});

test("a session ends after 30 minutes idle", async () => {
  const { env, client } = make();
  const s1 = client.track("page_view").session_id;
  env.time.t += 29 * 60 * 1000;
  assert.equal(client.track("page_view").session_id, s1, "29 min idle: same session");
  env.time.t += 29 * 60 * 1000;
  assert.equal(client.track("page_view").session_id, s1, "activity keeps it alive");
  env.time.t += 30 * 60 * 1000 + 1;
  const s2 = client.track("page_view").session_id;
  assert.notEqual(s2, s1, "past 30 min idle: a new session");
  assert.equal(client.sessionId(), s2);
});

test("events are batched: a send after 1 s, or at once at 20", async () => {
  const { env, client } = make();
  for (let i = 0; i < 19; i++) client.track("page_view");
  await env.time.advance(999);
  assert.equal(env.fetch.calls.length, 0, "nothing before 1 s");
  await env.time.advance(1);
  assert.equal(env.fetch.calls.length, 1);
  assert.equal(env.fetch.calls[0].url, "https://api.example/v1/events");
  assert.equal(env.fetch.calls[0].headers["content-type"], "application/json");
  assert.equal(env.fetch.calls[0].json.length, 19);
  for (let i = 0; i < 45; i++) client.track("page_view");
  await env.time.advance(0);
  assert.deepEqual(
    env.fetch.calls.slice(1).map((c) => c.json.length),
    [20, 20, 5],
    "a full batch flushes the queue at once, in batches of 20"
  );
  assert.equal(client.queue.length, 0);
  assert.equal(new Set(sentEvents(env.fetch).map((e) => e.event_id)).size, 64, "each event sent once");
});

test("5xx and network errors are retried with exponential backoff", async () => {
  const answers = [{ status: 503, headers: { "retry-after": "2" } }, new TypeError("network down"), { status: 500 }, { status: 502 }, { status: 202 }];
  const fetch = fakeFetch(() => answers.shift());
  const errors = [];
  const { env, client } = make({ onError: (e) => errors.push(e) }, { fetch });
  client.track("page_view");
  client.track("page_view");
  await env.time.advance(1000);
  assert.equal(fetch.calls.length, 1);
  assert.deepEqual(env.time.pending(), [2000], "503: Retry-After (2 s) beats the first backoff (500 ms)");
  await env.time.advance(2000);
  assert.equal(fetch.calls.length, 2);
  assert.deepEqual(env.time.pending(), [750], "then 2^n × base with jitter (random 0.5 → 3/4 of the cap)");
  await env.time.advance(750);
  assert.deepEqual(env.time.pending(), [1500]);
  client.track("page_view"); // a new event waits for the retry, not 1 s
  assert.deepEqual(env.time.pending(), [1500]);
  await env.time.advance(1500);
  assert.deepEqual(env.time.pending(), [3000]);
  await env.time.advance(3000);
  assert.equal(fetch.calls.length, 5);
  assert.equal(client.queue.length, 0);
  assert.deepEqual(
    fetch.calls.map((c) => c.json.length),
    [2, 2, 2, 3, 3],
    "the same events are resent with what was tracked meanwhile"
  );
  assert.ok(errors.length >= 4 && errors.every((e) => e instanceof NextbestError));
  // backoff is reset by a success
  fetch.calls.length = 0;
  answers.push({ status: 500 });
  client.track("page_view");
  await env.time.advance(1000);
  assert.deepEqual(env.time.pending(), [375]);
});

test("the backoff is capped", () => {
  const { backoffDelay } = nextbest._internal;
  const half = () => 0.5;
  assert.deepEqual(
    [1, 2, 3, 10, 50].map((n) => backoffDelay(n, 500, 30000, half)),
    [375, 750, 1500, 22500, 22500]
  );
  assert.equal(backoffDelay(3, 500, 30000, () => 0), 1000);
  assert.equal(backoffDelay(3, 500, 30000, () => 1), 2000);
});

test("4xx is never retried; a 400 drops only the event it names", async () => {
  let seen = 0;
  const fetch = fakeFetch((req) => {
    seen += 1;
    if (seen === 1) return { status: 400, body: { error: "event 1: field `item_id` ...", field: "item_id", index: 1 } };
    if (seen === 3) return { status: 403, body: { error: "forbidden" } };
    return { status: 202, body: { accepted: req.json.length } };
  });
  const errors = [];
  const { env, client } = make({ onError: (e, dropped) => errors.push([e.status, dropped.length]) }, { fetch });
  const a = client.track("page_view");
  client.track("click", {}); // no item_id: the server refuses it
  const c = client.track("page_view");
  await env.time.advance(1000);
  assert.equal(fetch.calls.length, 2, "refused, then the rest resent at once");
  assert.deepEqual(
    fetch.calls[1].json.map((e) => e.event_id),
    [a.event_id, c.event_id]
  );
  client.track("page_view");
  client.track("page_view");
  await env.time.advance(1000);
  assert.equal(fetch.calls.length, 3);
  await env.time.advance(60_000);
  assert.equal(fetch.calls.length, 3, "a 403 is not retried");
  assert.equal(client.queue.length, 0);
  assert.deepEqual(errors, [[400, 1], [403, 2]]);
  assert.equal(nextbest._internal.retryable(429), true, "429 (rate limit) is retried");
  assert.equal(nextbest._internal.retryable(404), false);
});

test("the queue survives a reload and stale events are dropped", async () => {
  const down = fakeFetch(() => new TypeError("offline"));
  const { env, client } = make({}, { fetch: down });
  const old = client.track("page_view");
  env.time.t += 7 * 24 * 3600 * 1000; // a week later the first one is too old
  const kept = client.track("click", { item_id: "p1" });
  await env.time.advance(1000);
  assert.equal(client.queue.length, 2, "kept while the network is down");
  // the page reloads: a new client on the same storage
  const up = fakeFetch();
  const again = nextbest.createClient({ endpoint: "https://api.example" }, { ...env, fetch: up });
  assert.deepEqual(again.queue.map((e) => e.event_id), [kept.event_id], "the week-old event was dropped");
  assert.notEqual(old.event_id, kept.event_id);
  await env.time.advance(0);
  assert.equal(up.calls.length, 1, "sent at once on load");
  assert.deepEqual(up.calls[0].json, [kept]);
  assert.equal(JSON.parse(env.storage.getItem("nextbest:queue")).length, 0);
});

test("the queue is bounded", () => {
  const { client } = make({ maxQueue: 5, batchSize: 100 }, { fetch: fakeFetch(() => new TypeError("offline")) });
  const ids = [];
  for (let i = 0; i < 8; i++) ids.push(client.track("page_view").event_id);
  assert.deepEqual(client.queue.map((e) => e.event_id), ids.slice(3), "the oldest are dropped");
});

test("pagehide sends the queue by beacon, text/plain, split under the quota", async () => {
  const { env, client } = make();
  const big = "x".repeat(1500);
  for (let i = 0; i < 100; i++) client.track("page_view", { page: `/p/${i}`, note: big });
  // a full batch of 20 goes by fetch at once; let it fail so all stay queued
  env.fetch = null;
  client.fetch = async () => {
    throw new TypeError("offline");
  };
  await env.time.advance(0);
  const queued = client.queue.length;
  assert.equal(queued, 100);
  env.window.fire("pagehide");
  assert.ok(env.beacons.length >= 3, `split into several beacons (${env.beacons.length})`);
  for (const b of env.beacons) {
    assert.equal(b.url, "https://api.example/v1/events");
    assert.equal(typeof b.body, "string", "a string body goes as text/plain: no preflight");
    assert.ok(Buffer.byteLength(b.body) <= 60000, `beacon of ${Buffer.byteLength(b.body)} bytes`);
  }
  const all = env.beacons.flatMap((b) => JSON.parse(b.body));
  assert.equal(all.length, 100);
  assert.equal(new Set(all.map((e) => e.event_id)).size, 100);
  assert.equal(client.queue.length, 0);
});

test("events a beacon could not take stay queued", () => {
  let room = 2;
  const beacons = [];
  const { env, client } = make({ beaconMaxBytes: 1000, batchSize: 1000 }, {
    sendBeacon: (url, body) => {
      if (room === 0) return false;
      room -= 1;
      beacons.push(body);
      return true;
    },
  });
  for (let i = 0; i < 30; i++) client.track("page_view", { page: `/p/${"y".repeat(100)}` });
  env.window.hide(); // visibilitychange → hidden does the same
  const sent = beacons.flatMap((b) => JSON.parse(b)).length;
  assert.ok(sent > 0 && sent < 30);
  assert.equal(client.queue.length, 30 - sent);
  assert.equal(JSON.parse(env.storage.getItem("nextbest:queue")).length, 30 - sent, "persisted for the next page");
});

test("with an api key the exit flush uses fetch keepalive (beacons carry no headers)", () => {
  const { env, client } = make({ apiKey: "k-123" });
  client.track("page_view");
  env.window.fire("pagehide");
  assert.equal(env.beacons.length, 0);
  assert.equal(env.fetch.calls.length, 1);
  assert.equal(env.fetch.calls[0].keepalive, true);
  assert.equal(env.fetch.calls[0].headers["x-api-key"], "k-123");
});

test("recommend posts the request and returns the answer", async () => {
  const answer = { request_id: "r1", customer_id: "c9", items: [{ item_id: "p1", score: 0.5, action: "upsell", reasons: ["upsell_over_100"] }], fallback: false };
  const fetch = fakeFetch((req) => (req.url.endsWith("/v1/recommend") ? { status: 200, body: answer } : { status: 202 }));
  const { client } = make({ customerId: "c9", apiKey: "k" }, { fetch });
  const got = await client.recommend({ k: 3, context: { page_category: "shoes" }, candidates: ["p1", "p2"] });
  assert.deepEqual(got, answer);
  const body = fetch.calls[0].json;
  assert.equal(body.customer_id, "c9");
  assert.equal(body.k, 3);
  assert.deepEqual(body.context, { page_category: "shoes" });
  assert.deepEqual(body.candidates, ["p1", "p2"]);
  assert.ok(body.session_id);
  assert.equal(fetch.calls[0].headers["x-api-key"], "k");
  const bad = make({}, { fetch: fakeFetch(() => ({ status: 400, body: { error: "field `k` ...", field: "k" } })) }).client;
  await assert.rejects(bad.recommend({ k: 0 }), (e) => e instanceof NextbestError && e.status === 400 && e.body.field === "k");
});

test("subscribe streams pushes and reconnects with backoff", async () => {
  const { env, client } = make({ customerId: "c5", apiKey: "tok" });
  const got = [];
  const status = [];
  const sub = client.subscribe((r) => got.push(r.request_id), { k: 4, onStatus: (s) => status.push(s) });
  const WS = env.WebSocket;
  assert.equal(WS.instances.length, 1);
  const url = new URL(WS.instances[0].url);
  assert.equal(url.origin, "wss://api.example");
  assert.equal(url.pathname, "/v1/stream");
  assert.deepEqual(Object.fromEntries(url.searchParams), { customer_id: "c5", k: "4", token: "tok" });
  WS.instances[0].serverOpen();
  WS.instances[0].serverSend({ request_id: "a" });
  WS.instances[0].serverSend("not json");
  WS.instances[0].serverSend({ request_id: "b" });
  assert.deepEqual(got, ["a", "b"]);
  WS.instances[0].serverClose();
  assert.deepEqual(env.time.pending(), [375]);
  await env.time.advance(375);
  assert.equal(WS.instances.length, 2);
  WS.instances[1].serverClose(); // refused again: the wait doubles
  assert.deepEqual(env.time.pending(), [750]);
  await env.time.advance(750);
  WS.instances[2].serverOpen();
  WS.instances[2].serverSend({ request_id: "c" });
  WS.instances[2].serverClose(); // a push resets the backoff
  assert.deepEqual(env.time.pending(), [375]);
  await env.time.advance(375);
  assert.equal(WS.instances.length, 4);
  assert.deepEqual(status, ["open", "closed", "closed", "open", "closed"]);
  client.identify("c6");
  assert.equal(WS.instances.length, 5, "identify reconnects for the new customer");
  assert.equal(WS.instances[3].closed, true);
  assert.equal(new URL(WS.instances[4].url).searchParams.get("customer_id"), "c6");
  sub.close();
  assert.equal(WS.instances[4].closed, true);
  await env.time.advance(60_000);
  assert.equal(WS.instances.length, 5, "no reconnect after close()");
  assert.deepEqual(got, ["a", "b", "c"]);
});

test("a same-origin endpoint streams from the page's host", () => {
  const { env, client } = make({ endpoint: "" }, { global: { location: { protocol: "http:", host: "127.0.0.1:8080" } } });
  client.subscribe(() => {});
  assert.match(env.WebSocket.instances[0].url, /^ws:\/\/127\.0\.0\.1:8080\/v1\/stream\?customer_id=anon-/);
  client.track("page_view");
  return env.time.advance(1000).then(() => assert.equal(env.fetch.calls[0].url, "/v1/events"));
});

test("the default client: init, then the module-level calls", async () => {
  assert.throws(() => nextbest.track("page_view"), /init/);
  const env = fakeEnv();
  const c = nextbest.init({ endpoint: "", customerId: "d1" }, env);
  assert.equal(nextbest.getCustomerId(), "d1");
  nextbest.track("page_view");
  await nextbest.flush();
  assert.equal(env.fetch.calls.length, 1);
  assert.equal(c.queue.length, 0);
  await settle();
});
