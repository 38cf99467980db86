// GENERATED from nextbest.js by build.mjs: do not edit (run `node web/sdk/build.mjs`).
// The nextbest SDK as a classic script: <script src=".../nextbest.global.js"></script>
// defines `window.nextbest`.
(function (root) {
  "use strict";
  // nextbest browser SDK: events in, recommendations out. One file, no
  // dependencies; this is the ES module. `nextbest.global.js` beside it is the
  // same code as a classic script (`window.nextbest`), generated from this file
  // by `build.mjs` (a unit test keeps the two in step). Types: `nextbest.d.ts`.
  //
  // - init({endpoint, customerId?, apiKey?}): an anonymous id kept in
  //   localStorage until identify(customerId).
  // - track(type, props): event_id, ts, per-customer seq, session ids (new
  //   after 30 min idle), batched (20 events or 1 s), retried with exponential
  //   backoff on 5xx / network errors (never on other 4xx), queue persisted in
  //   localStorage across reloads, sent with navigator.sendBeacon on pagehide
  //   (text/plain, so no CORS preflight; split under the ~64 KB beacon quota).
  // - recommend({k, context, candidates}) -> the server's answer.
  // - subscribe(callback, {k}) over /v1/stream, reconnecting with backoff.

  const VERSION = "0.1.0";

  const DEFAULTS = {
    endpoint: "",
    customerId: undefined,
    apiKey: undefined,
    /** Events per POST; a full batch is sent at once. */
    batchSize: 20,
    /** Longest an event waits in the queue before a send, ms. */
    flushIntervalMs: 1000,
    /** A session ends after this long without a tracked event, ms. */
    sessionTimeoutMs: 30 * 60 * 1000,
    /** First retry delay, doubled per failed attempt, up to maxBackoffMs. */
    retryBaseMs: 500,
    maxBackoffMs: 30000,
    /** Most events kept queued (the oldest are dropped past it). */
    maxQueue: 1000,
    /** Queued events older than this are dropped on load (the server refuses
     * events older than `store.allowed_lateness_secs`, 7 days by default). */
    maxEventAgeMs: 6 * 24 * 3600 * 1000,
    /** Largest beacon body, bytes: browsers allow ~64 KB of keepalive data. */
    beaconMaxBytes: 60000,
    /** Key prefix in storage. */
    storageKey: "nextbest",
  };

  /** An error answer of the server (status and the JSON body) or a network error. */
  class NextbestError extends Error {
    constructor(message, status, body) {
      super(message);
      this.name = "NextbestError";
      this.status = status;
      this.body = body;
    }
  }

  function memoryStorage() {
    const m = new Map();
    return {
      getItem: (k) => (m.has(k) ? m.get(k) : null),
      setItem: (k, v) => m.set(k, String(v)),
      removeItem: (k) => m.delete(k),
    };
  }

  function defaultStorage(g) {
    try {
      const s = g.localStorage;
      const probe = "__nextbest_probe__";
      s.setItem(probe, "1");
      s.removeItem(probe);
      return s;
    } catch (_) {
      // private mode, disabled storage, or not a browser
      return memoryStorage();
    }
  }

  function defaultUuid(g) {
    const c = g.crypto;
    if (c && typeof c.randomUUID === "function") {
      try {
        return c.randomUUID();
      } catch (_) {
        // randomUUID exists only in secure contexts (https, localhost)
      }
    }
    const b = new Uint8Array(16);
    if (c && typeof c.getRandomValues === "function") c.getRandomValues(b);
    else for (let i = 0; i < 16; i++) b[i] = Math.floor(Math.random() * 256);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function byteLength(text) {
    if (typeof TextEncoder !== "undefined") return new TextEncoder().encode(text).length;
    return unescape(encodeURIComponent(text)).length;
  }

  /**
   * Splits events into JSON array bodies of at most maxBytes each (an event
   * larger than that alone goes in a body of its own).
   */
  function splitBodies(events, maxBytes) {
    const bodies = [];
    let part = [];
    let size = 2; // "[" and "]"
    for (const e of events) {
      const n = byteLength(JSON.stringify(e)) + 1; // and its comma
      if (part.length > 0 && size + n > maxBytes) {
        bodies.push(part);
        part = [];
        size = 2;
      }
      part.push(e);
      size += n;
    }
    if (part.length > 0) bodies.push(part);
    return bodies;
  }

  /** The delay before retry number `attempt` (1, 2, ...): full jitter under the doubling cap. */
  function backoffDelay(attempt, baseMs, maxMs, random) {
    const cap = Math.min(maxMs, baseMs * 2 ** Math.max(0, attempt - 1));
    return Math.round(cap / 2 + (random() * cap) / 2);
  }

  /** Seconds of a `Retry-After` header as ms, if it holds a number. */
  function retryAfterMs(res) {
    const v = res && res.headers && typeof res.headers.get === "function" ? res.headers.get("retry-after") : null;
    const s = v == null ? NaN : Number(v);
    return Number.isFinite(s) && s >= 0 ? s * 1000 : 0;
  }

  /** Whether a failed send is worth retrying: network errors, 5xx, 408 and 429. */
  function retryable(status) {
    return status === 0 || status >= 500 || status === 408 || status === 429;
  }

  /** A client of one nextbest server. `env` replaces the browser's globals (tests). */
  class Client {
    constructor(options = {}, env = {}) {
      const g = env.global || globalThis;
      this.opts = { ...DEFAULTS, ...options };
      this.endpoint = String(this.opts.endpoint || "").replace(/\/+$/, "");
      this.g = g;
      this.fetch = env.fetch || (g.fetch ? g.fetch.bind(g) : null);
      this.WebSocket = env.WebSocket || g.WebSocket;
      this.storage = env.storage || defaultStorage(g);
      this.now = env.now || (() => Date.now());
      this.random = env.random || Math.random;
      this.uuid = env.uuid || (() => defaultUuid(g));
      this.setTimeout = env.setTimeout || ((f, ms) => g.setTimeout(f, ms));
      this.clearTimeout = env.clearTimeout || ((t) => g.clearTimeout(t));
      this.sendBeacon = env.sendBeacon || (g.navigator && g.navigator.sendBeacon ? (u, b) => g.navigator.sendBeacon(u, b) : null);
      this.onError = typeof this.opts.onError === "function" ? this.opts.onError : () => {};
      this.queue = [];
      this.timer = null;
      this.inflight = null;
      this.attempt = 0;
      this.subscriptions = new Set();
      this.customerId = this.opts.customerId || this._read("customer_id") || this._anonymousId();
      if (this.opts.customerId) this._write("customer_id", this.opts.customerId);
      this._loadQueue();
      this._listen(env.window || g);
      if (this.queue.length > 0) this._schedule(0);
    }

    // ---- storage

    _key(name) {
      return `${this.opts.storageKey}:${name}`;
    }
    _read(name) {
      try {
        return this.storage.getItem(this._key(name));
      } catch (_) {
        return null;
      }
    }
    _write(name, value) {
      try {
        this.storage.setItem(this._key(name), value);
      } catch (_) {
        // storage full or denied: the in-memory state still works
      }
    }
    _readJson(name, fallback) {
      const text = this._read(name);
      if (text == null) return fallback;
      try {
        return JSON.parse(text);
      } catch (_) {
        return fallback;
      }
    }
    _anonymousId() {
      let id = this._read("anonymous_id");
      if (!id) {
        id = `anon-${this.uuid()}`;
        this._write("anonymous_id", id);
      }
      return id;
    }
    _loadQueue() {
      const stored = this._readJson("queue", []);
      const oldest = this.now() - this.opts.maxEventAgeMs;
      this.queue = Array.isArray(stored) ? stored.filter((e) => e && typeof e === "object" && e.event_id && e.ts >= oldest) : [];
      this._trimQueue();
    }
    _saveQueue() {
      this._write("queue", JSON.stringify(this.queue));
    }
    _trimQueue() {
      const over = this.queue.length - this.opts.maxQueue;
      if (over > 0) this.queue.splice(0, over);
    }

    // ---- identity, sessions, seq

    /** Who events are about: the identified customer, else the anonymous id. */
    getCustomerId() {
      return this.customerId;
    }

    /** From now on events, recommendations and streams are about `customerId`. */
    identify(customerId) {
      if (!customerId || typeof customerId !== "string") throw new TypeError("identify: customerId must be a non-empty string");
      if (customerId === this.customerId) return;
      this.customerId = customerId;
      this._write("customer_id", customerId);
      for (const s of this.subscriptions) s._restart();
    }

    /** Forgets the identified customer (log-out): a new anonymous id and session. */
    reset() {
      try {
        this.storage.removeItem(this._key("customer_id"));
        this.storage.removeItem(this._key("anonymous_id"));
        this.storage.removeItem(this._key("session"));
      } catch (_) {
        // ignore
      }
      this.customerId = this._anonymousId();
      for (const s of this.subscriptions) s._restart();
    }

    /** The current session id; a new one after sessionTimeoutMs without a tracked event. */
    sessionId() {
      return this._session(this.now(), false);
    }

    /** The session at `now`, started anew when idle too long; `touch` marks activity. */
    _session(now, touch) {
      const s = this._readJson("session", null);
      const live = s && typeof s.id === "string" && Number.isFinite(s.last) && now - s.last <= this.opts.sessionTimeoutMs;
      const id = live ? s.id : this.uuid();
      if (touch || !live) this._write("session", JSON.stringify({ id, last: now }));
      return id;
    }

    _nextSeq(customerId) {
      const name = `seq:${customerId}`;
      const n = Number(this._read(name));
      const next = Number.isSafeInteger(n) && n >= 0 ? n + 1 : 1;
      this._write(name, String(next));
      return next;
    }

    // ---- events

    /**
     * Queues one event and returns it. `props.item_id` (required for click,
     * add_to_cart, remove_from_cart and purchase) goes to the event's
     * `item_id`; the other props stay in `props`.
     */
    track(type, props = {}) {
      if (!type || typeof type !== "string") throw new TypeError("track: type must be a non-empty string");
      const { item_id: itemId, ...rest } = props || {};
      const now = this.now();
      const event = {
        event_id: this.uuid(),
        type,
        customer_id: this.customerId,
        ts: now,
        session_id: this._session(now, true),
        seq: this._nextSeq(this.customerId),
        props: rest,
      };
      if (itemId != null) event.item_id = String(itemId);
      this.queue.push(event);
      this._trimQueue();
      this._saveQueue();
      if (this.queue.length >= this.opts.batchSize) this._schedule(0);
      else this._schedule(this.opts.flushIntervalMs);
      return event;
    }

    /** Sends what is queued now; resolves when the queue is empty or a send failed. */
    flush() {
      if (this.timer != null) {
        this.clearTimeout(this.timer);
        this.timer = null;
      }
      if (!this.inflight) {
        this.inflight = this._drain().finally(() => {
          this.inflight = null;
          // events tracked while the last send was settling
          if (this.queue.length > 0 && this.timer == null) this._schedule(this.opts.flushIntervalMs);
        });
      }
      return this.inflight;
    }

    _schedule(delayMs) {
      if (this.inflight) return; // the running drain sends it, or schedules a retry
      if (this.timer != null) {
        // the earlier deadline stands; a full batch does not cut a retry's backoff short
        if (delayMs > 0 || this.attempt > 0) return;
        this.clearTimeout(this.timer);
      }
      this.timer = this.setTimeout(() => {
        this.timer = null;
        this.flush();
      }, delayMs);
    }

    async _drain() {
      while (this.queue.length > 0) {
        const batch = this.queue.slice(0, this.opts.batchSize);
        const out = await this._post(batch);
        if (out.ok) {
          this.attempt = 0;
          this._remove(batch);
          continue;
        }
        if (!retryable(out.status)) {
          // a 400 names the one bad event: drop it and send the rest again
          const index = out.body && Number.isInteger(out.body.index) ? out.body.index : null;
          const dropped = out.status === 400 && index != null && index < batch.length ? [batch[index]] : batch;
          this._remove(dropped);
          this.onError(new NextbestError(`events refused (${out.status}): ${(out.body && out.body.error) || "client error"}`, out.status, out.body), dropped);
          continue;
        }
        this.attempt += 1;
        const wait = Math.max(backoffDelay(this.attempt, this.opts.retryBaseMs, this.opts.maxBackoffMs, this.random), out.retryAfterMs || 0);
        this.onError(new NextbestError(`events not sent (${out.status || "network error"}); retrying in ${wait} ms`, out.status, out.body), []);
        this.timer = this.setTimeout(() => {
          this.timer = null;
          this.flush();
        }, wait);
        return;
      }
    }

    _remove(events) {
      const ids = new Set(events.map((e) => e.event_id));
      this.queue = this.queue.filter((e) => !ids.has(e.event_id));
      this._saveQueue();
    }

    _headers(json) {
      const h = {};
      if (json) h["content-type"] = "application/json";
      if (this.opts.apiKey) h["x-api-key"] = this.opts.apiKey;
      return h;
    }

    async _post(batch) {
      if (!this.fetch) return { ok: false, status: 0 };
      try {
        const res = await this.fetch(`${this.endpoint}/v1/events`, {
          method: "POST",
          headers: this._headers(true),
          body: JSON.stringify(batch),
        });
        if (res.ok) return { ok: true, status: res.status };
        let body = null;
        try {
          body = await res.json();
        } catch (_) {
          // not JSON
        }
        return { ok: false, status: res.status, body, retryAfterMs: retryAfterMs(res) };
      } catch (_) {
        return { ok: false, status: 0 };
      }
    }

    /**
     * Sends the queue as the page goes away: sendBeacon with text/plain
     * bodies (no preflight) of at most beaconMaxBytes each. What the browser
     * refuses stays queued for the next page. With an apiKey (beacons cannot
     * carry headers) it uses fetch with keepalive instead.
     */
    flushOnExit() {
      if (this.queue.length === 0) return 0;
      if (this.timer != null) {
        this.clearTimeout(this.timer);
        this.timer = null;
      }
      const url = `${this.endpoint}/v1/events`;
      let sent = 0;
      for (const part of splitBodies(this.queue, this.opts.beaconMaxBytes)) {
        const body = JSON.stringify(part);
        let ok = false;
        if (this.opts.apiKey || !this.sendBeacon) {
          if (!this.fetch) break;
          try {
            this.fetch(url, { method: "POST", headers: this._headers(true), body, keepalive: true }).catch(() => {});
            ok = true;
          } catch (_) {
            ok = false;
          }
        } else {
          try {
            ok = this.sendBeacon(url, body) === true; // a string body is sent as text/plain
          } catch (_) {
            ok = false;
          }
        }
        if (!ok) break; // over the quota: keep the rest for the next page
        this._remove(part);
        sent += part.length;
      }
      return sent;
    }

    _listen(win) {
      if (!win || typeof win.addEventListener !== "function") return;
      win.addEventListener("pagehide", () => this.flushOnExit());
      const doc = win.document;
      if (doc && typeof doc.addEventListener === "function") {
        doc.addEventListener("visibilitychange", () => {
          if (doc.visibilityState === "hidden") this.flushOnExit();
        });
      }
    }

    // ---- recommendations

    /** POST /v1/recommend for the current customer; resolves to the server's answer. */
    async recommend({ k, context, candidates, budgetMs } = {}) {
      if (!this.fetch) throw new NextbestError("no fetch available", 0, null);
      const body = { customer_id: this.customerId, session_id: this.sessionId() };
      if (k != null) body.k = k;
      if (context != null) body.context = context;
      if (candidates != null) body.candidates = candidates;
      if (budgetMs != null) body.budget_ms = budgetMs;
      let res;
      try {
        res = await this.fetch(`${this.endpoint}/v1/recommend`, {
          method: "POST",
          headers: this._headers(true),
          body: JSON.stringify(body),
        });
      } catch (e) {
        throw new NextbestError(`recommend failed: ${e && e.message ? e.message : e}`, 0, null);
      }
      let answer = null;
      try {
        answer = await res.json();
      } catch (_) {
        // not JSON
      }
      if (!res.ok) throw new NextbestError(`recommend refused (${res.status}): ${(answer && answer.error) || "error"}`, res.status, answer);
      return answer;
    }

    /** The WebSocket address of /v1/stream for the current customer. */
    streamUrl(k) {
      let base = this.endpoint;
      if (!/^[a-z]+:\/\//i.test(base)) {
        const loc = this.g.location;
        base = (loc ? `${loc.protocol}//${loc.host}` : "http://localhost") + base;
      }
      const url = new URL(`${base}/v1/stream`);
      url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
      url.searchParams.set("customer_id", this.customerId);
      if (k != null) url.searchParams.set("k", String(k));
      if (this.opts.apiKey) url.searchParams.set("token", this.opts.apiKey);
      return url.toString();
    }

    /**
     * Calls `callback(recommendation)` with every push of /v1/stream (one
     * right after connecting, then one per change of the customer's
     * features). Reconnects with backoff; `onStatus("open"|"closed")` says
     * when. Returns a subscription; `close()` ends it.
     */
    subscribe(callback, { k, onStatus } = {}) {
      const sub = new Subscription(this, callback, k, onStatus);
      this.subscriptions.add(sub);
      sub._open();
      return sub;
    }
  }

  /** One /v1/stream subscription, reconnecting until closed. */
  class Subscription {
    constructor(client, callback, k, onStatus) {
      this.client = client;
      this.callback = callback;
      this.k = k;
      this.onStatus = typeof onStatus === "function" ? onStatus : () => {};
      this.ws = null;
      this.attempt = 0;
      this.timer = null;
      this.closed = false;
    }

    _open() {
      if (this.closed) return;
      const c = this.client;
      if (!c.WebSocket) return;
      let ws;
      try {
        ws = new c.WebSocket(c.streamUrl(this.k));
      } catch (_) {
        this._retry();
        return;
      }
      this.ws = ws;
      ws.onopen = () => {
        this.onStatus("open");
      };
      ws.onmessage = (m) => {
        if (ws !== this.ws) return;
        this.attempt = 0;
        let rec;
        try {
          rec = JSON.parse(typeof m.data === "string" ? m.data : String(m.data));
        } catch (_) {
          return;
        }
        try {
          this.callback(rec);
        } catch (e) {
          c.onError(e, []);
        }
      };
      ws.onclose = () => {
        if (ws !== this.ws) return;
        this.ws = null;
        this.onStatus("closed");
        this._retry();
      };
      ws.onerror = () => {
        // onclose follows
      };
    }

    _retry() {
      if (this.closed || this.timer != null) return;
      this.attempt += 1;
      const c = this.client;
      const wait = backoffDelay(this.attempt, c.opts.retryBaseMs, c.opts.maxBackoffMs, c.random);
      this.timer = c.setTimeout(() => {
        this.timer = null;
        this._open();
      }, wait);
    }

    /** Reconnects now (the customer changed). */
    _restart() {
      if (this.closed) return;
      this._drop();
      this.attempt = 0;
      this._open();
    }

    _drop() {
      if (this.timer != null) {
        this.client.clearTimeout(this.timer);
        this.timer = null;
      }
      const ws = this.ws;
      this.ws = null;
      if (ws) {
        try {
          ws.close();
        } catch (_) {
          // already closed
        }
      }
    }

    /** Ends the subscription: no more callbacks, no reconnects. */
    close() {
      this.closed = true;
      this._drop();
      this.client.subscriptions.delete(this);
    }
  }

  let defaultClient = null;

  function need() {
    if (!defaultClient) throw new Error("nextbest: call nextbest.init({endpoint}) first");
    return defaultClient;
  }

  /** The SDK's entry point: init once, then call track / recommend / subscribe. */
  const nextbest = {
    VERSION,
    NextbestError,
    Client,
    /** Makes a client (also kept as the default one for the calls below). */
    init(options, env) {
      defaultClient = new Client(options, env);
      return defaultClient;
    },
    /** A separate client (not the default one). */
    createClient(options, env) {
      return new Client(options, env);
    },
    identify: (customerId) => need().identify(customerId),
    reset: () => need().reset(),
    track: (type, props) => need().track(type, props),
    flush: () => need().flush(),
    recommend: (request) => need().recommend(request),
    subscribe: (callback, options) => need().subscribe(callback, options),
    getCustomerId: () => need().getCustomerId(),
    /** Internals exposed for tests. */
    _internal: { splitBodies, backoffDelay, retryable },
  };
  root.nextbest = nextbest;
})(typeof globalThis !== "undefined" ? globalThis : typeof self !== "undefined" ? self : this);
