// Types of the nextbest browser SDK (nextbest.js, nextbest.global.js).

/** Options of `init` / `createClient`. */
export interface Options {
  /** Base URL of the nextbest server, e.g. "https://reco.shop.example"; "" = the page's own origin. */
  endpoint?: string;
  /** The signed-in customer; else an anonymous id kept in localStorage until `identify`. */
  customerId?: string;
  /** A client key (`x-api-key`; `?token=` on the stream). */
  apiKey?: string;
  /** Events per POST; a full batch is sent at once (20). */
  batchSize?: number;
  /** Longest an event waits before it is sent, ms (1000). */
  flushIntervalMs?: number;
  /** Idle time after which a new session starts, ms (30 min). */
  sessionTimeoutMs?: number;
  /** First retry delay, doubled per failure (500). */
  retryBaseMs?: number;
  /** Longest retry delay (30000). */
  maxBackoffMs?: number;
  /** Most events kept queued (1000). */
  maxQueue?: number;
  /** Queued events older than this are dropped on load, ms (6 days). */
  maxEventAgeMs?: number;
  /** Largest beacon body on page exit, bytes (60000). */
  beaconMaxBytes?: number;
  /** Prefix of the localStorage keys ("nextbest"). */
  storageKey?: string;
  /** Told of refused events (dropped: never retried) and of failed sends (retried). */
  onError?: (error: NextbestError | Error, dropped: Event[]) => void;
}

/** Browser globals a client uses; tests pass fakes. */
export interface Env {
  global?: any;
  window?: any;
  fetch?: typeof fetch;
  WebSocket?: any;
  storage?: Pick<Storage, "getItem" | "setItem" | "removeItem">;
  sendBeacon?: (url: string, body: string) => boolean;
  now?: () => number;
  random?: () => number;
  uuid?: () => string;
  setTimeout?: (f: () => void, ms: number) => any;
  clearTimeout?: (t: any) => void;
}

export type EventType =
  | "page_view"
  | "click"
  | "add_to_cart"
  | "remove_from_cart"
  | "purchase"
  | "search"
  | "session_start";

/** Props of `track`; `item_id` is required for click, add_to_cart, remove_from_cart and purchase. */
export interface Props {
  item_id?: string;
  price?: number;
  quantity?: number;
  category?: string;
  page?: string;
  dwell_ms?: number;
  [name: string]: unknown;
}

/** An event as sent to POST /v1/events. */
export interface Event {
  event_id: string;
  type: EventType | string;
  customer_id: string;
  ts: number;
  session_id: string;
  seq: number;
  item_id?: string;
  props: Record<string, unknown>;
}

export interface RecommendRequest {
  k?: number;
  context?: Record<string, string | number | boolean>;
  candidates?: string[];
  budgetMs?: number;
}

export interface RecommendedItem {
  item_id: string;
  score: number;
  propensity?: number;
  value?: number;
  weight?: number;
  /** e.g. "upsell", "complete_purchase", or null. */
  action: string | null;
  reasons: string[];
}

/** The answer of POST /v1/recommend, and each push of /v1/stream. */
export interface Recommendation {
  request_id: string;
  customer_id: string;
  items: RecommendedItem[];
  model: { name: string; version: string } | null;
  fallback: boolean;
  timings_us?: Record<string, number>;
  [extra: string]: unknown;
}

export interface SubscribeOptions {
  k?: number;
  onStatus?: (status: "open" | "closed") => void;
}

export interface Subscription {
  /** Ends it: no more callbacks, no reconnects. */
  close(): void;
}

export declare class NextbestError extends Error {
  /** HTTP status; 0 for a network error. */
  status: number;
  /** The JSON error body, `{"error": ..., "field"?: ..., "index"?: ...}`. */
  body: any;
}

export declare class Client {
  constructor(options?: Options, env?: Env);
  getCustomerId(): string;
  identify(customerId: string): void;
  /** Forgets the customer: a new anonymous id and session. */
  reset(): void;
  sessionId(): string;
  track(type: EventType | string, props?: Props): Event;
  flush(): Promise<void>;
  /** Sends the queue by beacon now (done by itself on pagehide); returns how many events went. */
  flushOnExit(): number;
  recommend(request?: RecommendRequest): Promise<Recommendation>;
  streamUrl(k?: number): string;
  subscribe(callback: (rec: Recommendation) => void, options?: SubscribeOptions): Subscription;
}

declare const nextbest: {
  VERSION: string;
  NextbestError: typeof NextbestError;
  Client: typeof Client;
  init(options: Options, env?: Env): Client;
  createClient(options: Options, env?: Env): Client;
  identify(customerId: string): void;
  reset(): void;
  track(type: EventType | string, props?: Props): Event;
  flush(): Promise<void>;
  recommend(request?: RecommendRequest): Promise<Recommendation>;
  subscribe(callback: (rec: Recommendation) => void, options?: SubscribeOptions): Subscription;
  getCustomerId(): string;
};

export declare const VERSION: string;
export default nextbest;
