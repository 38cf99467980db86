// Fakes of the browser for the SDK's unit tests: a manual clock with
// timers, scripted fetch, WebSocket, storage and sendBeacon.

/** A clock and timers that advance only when told. */
export class FakeTime {
  constructor(start = 1_764_355_200_000) {
    this.t = start;
    this.timers = [];
    this.nextId = 1;
  }
  now = () => this.t;
  setTimeout = (f, ms) => {
    const id = this.nextId++;
    this.timers.push({ id, at: this.t + Math.max(0, ms || 0), f });
    return id;
  };
  clearTimeout = (id) => {
    this.timers = this.timers.filter((x) => x.id !== id);
  };
  /** Delays of the pending timers from now, earliest first. */
  pending() {
    return this.timers.map((x) => x.at - this.t).sort((a, b) => a - b);
  }
  /** Moves the clock by `ms`, running each timer due (and the promises it starts). */
  async advance(ms) {
    const end = this.t + ms;
    for (;;) {
      await settle();
      const due = this.timers.filter((x) => x.at <= end).sort((a, b) => a.at - b.at)[0];
      if (!due) break;
      this.timers = this.timers.filter((x) => x !== due);
      this.t = Math.max(this.t, due.at);
      due.f();
    }
    this.t = end;
    await settle();
  }
}

/** Lets pending promise callbacks run. */
export async function settle() {
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
}

export function fakeStorage(initial = {}) {
  const m = new Map(Object.entries(initial));
  return {
    map: m,
    getItem: (k) => (m.has(k) ? m.get(k) : null),
    setItem: (k, v) => m.set(k, String(v)),
    removeItem: (k) => m.delete(k),
  };
}

/** A fetch answering from `script(request)` (status, body, headers) and recording every call. */
export function fakeFetch(script = () => ({ status: 202, body: { accepted: 1 } })) {
  const calls = [];
  const f = async (url, init = {}) => {
    const req = { url, ...init, json: init.body ? JSON.parse(init.body) : undefined };
    calls.push(req);
    const out = await script(req, calls.length);
    if (out instanceof Error) throw out;
    const headers = new Map(Object.entries(out.headers || {}));
    return {
      ok: out.status >= 200 && out.status < 300,
      status: out.status,
      headers: { get: (k) => headers.get(k.toLowerCase()) ?? null },
      json: async () => out.body,
    };
  };
  f.calls = calls;
  return f;
}

/** A WebSocket class whose instances the test drives. */
export function fakeWebSocketClass() {
  class FakeWebSocket {
    static instances = [];
    constructor(url) {
      this.url = url;
      this.closed = false;
      FakeWebSocket.instances.push(this);
    }
    close() {
      if (this.closed) return;
      this.closed = true;
      this.onclose && this.onclose({ code: 1000 });
    }
    // test side
    serverOpen() {
      this.onopen && this.onopen({});
    }
    serverSend(obj) {
      this.onmessage && this.onmessage({ data: typeof obj === "string" ? obj : JSON.stringify(obj) });
    }
    serverClose() {
      this.closed = true;
      this.onclose && this.onclose({ code: 1006 });
    }
  }
  return FakeWebSocket;
}

/** A window with listeners the test can fire. */
export function fakeWindow() {
  const listeners = {};
  const doc = { visibilityState: "visible", listeners: {}, addEventListener: (t, f) => ((doc.listeners[t] ||= []).push(f)) };
  return {
    document: doc,
    addEventListener: (t, f) => (listeners[t] ||= []).push(f),
    fire: (t) => (listeners[t] || []).forEach((f) => f({ type: t })),
    hide: () => {
      doc.visibilityState = "hidden";
      (doc.listeners.visibilitychange || []).forEach((f) => f({}));
    },
  };
}

/** A full fake environment for `createClient(options, env)`. */
export function fakeEnv(overrides = {}) {
  const time = new FakeTime();
  let n = 0;
  const beacons = [];
  const env = {
    time,
    now: time.now,
    setTimeout: time.setTimeout,
    clearTimeout: time.clearTimeout,
    random: () => 0.5,
    uuid: () => `00000000-0000-4000-8000-${String(++n).padStart(12, "0")}`,
    storage: fakeStorage(),
    fetch: fakeFetch(),
    WebSocket: fakeWebSocketClass(),
    window: fakeWindow(),
    beacons,
    sendBeacon: (url, body) => {
      beacons.push({ url, body });
      return true;
    },
    global: { location: { protocol: "https:", host: "shop.example" } },
    ...overrides,
  };
  return env;
}
