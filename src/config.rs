//! One configuration for the whole server: `nextbest.toml` (optional), then
//! environment variables (the contract's `NEXTBEST_*`), then CLI flags.
//!
//! Every field is documented here; `nextbest.toml.example` shows them all and
//! a test parses it. Unknown keys are errors, so a typo never goes unnoticed.

use crate::keys::Role;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Errors building the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {name}={value:?}: {message}")]
    Env {
        name: String,
        value: String,
        message: String,
    },
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP server listens on (`NEXTBEST_HTTP_ADDR`).
    pub http_addr: SocketAddr,
    /// Folder of models, `<name>/<version>/model.onnx` (`NEXTBEST_MODELS_DIR`).
    pub models_dir: PathBuf,
    /// Feature definitions file (`NEXTBEST_FEATURES`).
    pub features: PathBuf,
    /// Path of libonnxruntime (`ORT_DYLIB_PATH`); found automatically when unset.
    pub ort_dylib_path: Option<PathBuf>,
    /// Where "now" comes from (`NEXTBEST_CLOCK`, `serve --clock`): the wall
    /// clock, or event time for replays ([`crate::clock`]).
    pub clock: crate::clock::ClockMode,
    pub store: StoreConfig,
    pub kafka: KafkaConfig,
    pub model: ModelConfig,
    pub recommend: RecommendConfig,
    pub http: HttpConfig,
    pub rules: RulesConfig,
    pub triggers: TriggersConfig,
    pub security: SecurityConfig,
    pub stream: StreamConfig,
}

/// Event triggers (`triggers/*.toml`) and the delivery of their actions
/// (README "Triggers").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TriggersConfig {
    /// Folder of trigger files (`NEXTBEST_TRIGGERS_DIR`); missing → no triggers.
    pub dir: PathBuf,
    /// Watch the folder and swap changed files in without a restart.
    pub watch: bool,
    /// Delay from a file change to its reload, and the least time between
    /// two reloads, in ms.
    pub reload_debounce_ms: u64,
    /// Reload the folder this often even without file events, in seconds (0 = never).
    pub rescan_secs: u64,
    /// The window of the trigger named `cart_abandonment`, in ms, instead
    /// of its file's `after` (`NEXTBEST_CART_ABANDONMENT_AFTER_MS`; demos
    /// and tests).
    pub cart_abandonment_after_ms: Option<u64>,
    /// How often the firing loop looks for due timers, in ms.
    pub tick_ms: u64,
    /// How long a claimed timer is held by its claimer before another
    /// instance may claim it again (a claimer that crashed), in ms.
    pub lease_ms: u64,
    /// Most timers claimed per shard and tick.
    pub claim_batch: usize,
    /// After a failed delivery, the timer is tried again this much later, in ms.
    pub retry_ms: u64,
    /// How long the once-per-session marker of threshold and sequence
    /// triggers is kept, in seconds.
    pub session_marker_secs: u64,
    /// Fired actions kept by this instance for `GET /v1/actions`.
    pub recent_actions: usize,
    /// Applied events waiting for the threshold and sequence checks; past
    /// it a batch is not checked (counted as suppressed, reason `overload`).
    pub queue: usize,
    /// Sequence triggers: most (customer, session) progressions held in
    /// memory (the least recently used dropped).
    pub max_sequences: u64,
    /// Also POST each fired action to a webhook (`[triggers.webhook]`).
    pub webhook: Option<WebhookConfig>,
}

/// A webhook that receives every fired trigger action (README "Triggers").
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Where the action is POSTed (JSON, the message of `nextbest.actions`).
    pub url: String,
    /// Key of the `x-nextbest-signature: sha256=<hex HMAC-SHA256 of the
    /// body>` header (`NEXTBEST_TRIGGERS_WEBHOOK_SECRET` overrides; never logged).
    #[serde(default)]
    pub secret: String,
    /// Longest one attempt may take, in ms.
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
    /// Attempts in all (a non-2xx answer, a timeout or no connection is a
    /// failed attempt); after the last, a dead letter on `dlq_topic`.
    #[serde(default = "default_webhook_attempts")]
    pub attempts: usize,
    /// Delay before the first retry, in ms; doubled each time, with jitter,
    /// up to `max_backoff_ms`.
    #[serde(default = "default_webhook_backoff_ms")]
    pub backoff_ms: u64,
    #[serde(default = "default_webhook_max_backoff_ms")]
    pub max_backoff_ms: u64,
    /// Where an action the webhook never took goes, with the reason (Kafka only).
    #[serde(default = "default_webhook_dlq")]
    pub dlq_topic: String,
}

fn default_webhook_timeout_ms() -> u64 {
    2_000
}
fn default_webhook_attempts() -> usize {
    4
}
fn default_webhook_backoff_ms() -> u64 {
    200
}
fn default_webhook_max_backoff_ms() -> u64 {
    5_000
}
fn default_webhook_dlq() -> String {
    "nextbest.actions.dlq".into()
}

impl fmt::Debug for WebhookConfig {
    /// The secret is never shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("url", &redact_url(&self.url))
            .field("secret", &if self.secret.is_empty() { "" } else { "***" })
            .field("timeout_ms", &self.timeout_ms)
            .field("attempts", &self.attempts)
            .field("backoff_ms", &self.backoff_ms)
            .field("max_backoff_ms", &self.max_backoff_ms)
            .field("dlq_topic", &self.dlq_topic)
            .finish()
    }
}

impl Default for TriggersConfig {
    fn default() -> Self {
        TriggersConfig {
            dir: PathBuf::from("triggers"),
            watch: true,
            reload_debounce_ms: 300,
            rescan_secs: 30,
            cart_abandonment_after_ms: None,
            tick_ms: 250,
            lease_ms: 30_000,
            claim_batch: 200,
            retry_ms: 5_000,
            session_marker_secs: 24 * 3600,
            recent_actions: 1000,
            queue: 10_000,
            max_sequences: 100_000,
            webhook: None,
        }
    }
}

/// `/v1/stream`, the WebSocket push, and the change feed behind it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// Least time between two pushes to one socket, in ms: a burst of
    /// changes within it becomes one push.
    pub coalesce_ms: u64,
    /// A push not taken by the client within this long closes its socket
    /// (a slow client is dropped, never buffered for), in ms.
    pub send_timeout_ms: u64,
    /// Most bytes queued for one socket beyond what the OS buffers.
    pub max_write_buffer_bytes: usize,
    /// With Redis configured, share changes between instances by Redis
    /// pub/sub (channels `<store.key_prefix>:changes` and
    /// `<store.key_prefix>:item-changes`), so a socket hears changes
    /// whichever instance applied them, and a catalog write drops the item
    /// from every instance's item cache. Off: this instance only (other
    /// instances see a catalog write within `recommend.item_cache_ms`).
    pub redis_feed: bool,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            coalesce_ms: 50,
            send_timeout_ms: 5_000,
            max_write_buffer_bytes: 1024 * 1024,
            redis_feed: true,
        }
    }
}

/// Access control, rate limits and CORS of the HTTP API (SECURITY.md).
/// Without keys every route is open, as a local quick start wants.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// API keys (`[[security.keys]]`), each stored as the SHA-256 of the
    /// key. None → every route is open (warned at start-up). Once any key
    /// is configured the admin routes need an admin key; the client routes
    /// need a client (or admin) key only when some client key is configured.
    pub keys: Vec<KeyConfig>,
    /// `/metrics` is an admin route (needs an admin key once keys are
    /// configured) instead of an open one.
    pub metrics_admin: bool,
    /// Origins browsers may call the API from (`https://shop.example`,
    /// scheme, host and port as the `Origin` header sends them). Empty →
    /// same origin only (the storefront at `/`); `["*"]` → any origin.
    pub cors_origins: Vec<String>,
    pub rate_limit: RateLimitConfig,
}

/// One API key (`[[security.keys]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// Names the key in logs and metric labels (unique; letters, digits,
    /// `-`, `_`, `.`).
    pub name: String,
    /// `admin` (every route) or `client` (recommend, events, stream, item features).
    pub role: Role,
    /// The SHA-256 of the key, 64 hex digits (`nextbest keys hash`, or
    /// `printf %s "$KEY" | sha256sum`). The key itself is never stored.
    pub sha256: String,
    /// This key's rate, overriding `rate_limit.per_second` (0 = no limit).
    #[serde(default)]
    pub per_second: Option<f64>,
    /// This key's burst, overriding `rate_limit.burst`.
    #[serde(default)]
    pub burst: Option<u32>,
}

/// Rate limits on the client and admin routes (not `/healthz`, `/readyz`
/// or an open `/metrics`): one bucket per configured key, one per peer
/// address for requests without a valid key. Past the burst: 429 with
/// `Retry-After`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Requests per second refilled into each bucket (fractions allowed,
    /// 0.5 = one every 2 s); 0 = no limit.
    pub per_second: f64,
    /// Requests a full bucket allows at once; 0 → the rate rounded up (at least 1).
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            per_second: 0.0,
            burst: 0,
        }
    }
}

/// Business rules (`rules/*.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Folder of rule files (`NEXTBEST_RULES_DIR`); missing → no rules.
    pub dir: PathBuf,
    /// Watch the folder and swap changed files in without a restart.
    pub watch: bool,
    /// Delay from a file change to its reload, and the least time between
    /// two reloads, in ms.
    pub reload_debounce_ms: u64,
    /// Reload the folder this often even without file events, in seconds (0 = never).
    pub rescan_secs: u64,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            dir: PathBuf::from("rules"),
            watch: true,
            reload_debounce_ms: 300,
            rescan_secs: 30,
        }
    }
}

/// The HTTP layer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Longest a request may take before it is answered 408, in ms. Not
    /// `/v1/stream` (a WebSocket); `/v1/recommend` gets at least its largest
    /// budget (60 s) plus 1 s, so its `budget_ms` bounds it, not this.
    pub request_timeout_ms: u64,
    /// Most `/v1/recommend` requests in flight; one more waits up to
    /// `recommend_queue_ms` for a slot (by default not at all), then is
    /// answered 503 with `Retry-After` (at least 1). Default: 16 per core
    /// ([`default_recommend_concurrency`]).
    pub recommend_concurrency: usize,
    /// Longest a `/v1/recommend` request waits for one of those slots (first
    /// come, first served) before it is answered 503, in ms; the wait counts
    /// against its budget. Default 0: answered 503 at once. A wait serves
    /// more of a burst, or of clients that retry a 503 at once, but past
    /// capacity every answer waits it out (benches/RESULTS.md, "Overload").
    pub recommend_queue_ms: u64,
    /// Largest request body, in bytes; a larger one is answered 413.
    pub max_body_bytes: usize,
    /// Largest WebSocket message (and frame) a `/v1/stream` client may
    /// send, in bytes (at least 1024); a larger one closes the socket. The
    /// server reads nothing from clients but close and ping frames.
    pub ws_max_message_bytes: usize,
    /// Serve the demo storefront at `/` and the browser SDK at `/sdk/`
    /// (files compiled into the binary; `web/`).
    pub storefront: bool,
}

/// The online store. Its `Debug` shows the Redis URL without a password.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Redis URL (`NEXTBEST_REDIS_URL`); unset → the in-memory store.
    pub redis_url: Option<String>,
    /// Prefix of every Redis key.
    pub key_prefix: String,
    /// How long an event id is remembered for dedupe, in seconds.
    pub dedupe_window_secs: u64,
    /// Expiry of entity keys after their last write, in seconds (0 = never).
    pub ttl_secs: u64,
    /// Timeout of one Redis call outside the request path, in ms.
    pub timeout_ms: u64,
    /// How far ahead of the server's clock an event's `ts` may be, in
    /// seconds (devices' clocks drift); later ones are refused (HTTP 400,
    /// Kafka: dead-lettered).
    pub allowed_future_secs: u64,
    /// How old an event arriving by HTTP or Kafka may be, in seconds;
    /// older ones are refused the same way (the backfill loads history).
    /// Above `dedupe_window_secs`, a redelivered old event could count twice.
    pub allowed_lateness_secs: u64,
    /// Memory store only: most customers and items held together (each
    /// with its sessions and dedupe memory, ~6–11 KB with the shipped
    /// features: benches/RESULTS.md); past it the least recently written
    /// are dropped and start over if they come back (0 = no limit).
    pub memory_max_entities: usize,
    /// Memory store only: most sessions kept per customer; a new one past
    /// it drops the customer's least recently written session (at least 1).
    pub memory_max_sessions: usize,
    /// Redis only: shards of the trigger timers' deadline index (one sorted
    /// set each, `{<key_prefix>:timers:<k>}`, spread over the cluster).
    /// Every instance sharing a Redis must use the same number.
    pub timer_shards: u32,
}

/// Kafka ingestion.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap brokers (`NEXTBEST_KAFKA_BROKERS`); unset → events are applied in-process.
    pub brokers: Option<String>,
    /// Consumer group id.
    pub group_id: String,
    /// Whether `serve` runs the consumer (set false for API-only instances).
    pub consume: bool,
    /// Most messages applied in one Redis pipeline. Default 5,000: a
    /// backlog drains ~20 % faster than at 500 (benches/RESULTS.md,
    /// "Consumer"); a live stream's batches are what arrives in the linger
    /// time, far fewer.
    pub batch_size: usize,
    /// Longest wait for a batch to fill, in ms.
    pub batch_linger_ms: u64,
    /// Applied offsets are committed at most this often, in ms (and when
    /// the stream goes idle, and before exiting): a commit per small batch
    /// loads the broker. A crash redelivers at most this much more, which
    /// the store's dedupe absorbs.
    pub commit_interval_ms: u64,
    /// Create the contract's topics (events, catalog, dead letters, actions)
    /// at startup if missing.
    pub create_topics: bool,
    /// Partitions of topics created at startup.
    pub partitions: i32,
    /// Dead-letter topic.
    pub dlq_topic: String,
    /// Topic of triggered actions.
    pub actions_topic: String,
    /// Consumer session timeout, in ms.
    pub session_timeout_ms: u64,
    /// Timeout of one produce (POST /v1/events waits for the ack), in ms.
    pub produce_timeout_ms: u64,
    /// librdkafka settings for every client (producer, consumer, admin),
    /// e.g. `"security.protocol" = "SASL_SSL"`, `"sasl.mechanism" =
    /// "SCRAM-SHA-512"`, `"sasl.username"`, `"sasl.password"`,
    /// `"ssl.ca.location"`. Values are strings. Applied after the base
    /// settings, before each client's own (`group.id`, `enable.auto.commit`,
    /// `acks`, ...), which the delivery guarantees depend on and which win.
    /// Values of secret-looking keys are hidden in `Debug`.
    pub properties: KafkaProperties,
}

/// `[kafka.properties]`: librdkafka settings passed through as given.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct KafkaProperties(pub BTreeMap<String, String>);

impl KafkaProperties {
    /// Whether a property's value is a secret (a password, key or token),
    /// hidden in `Debug`.
    pub fn is_secret(name: &str) -> bool {
        let n = name.to_ascii_lowercase();
        [
            "password",
            "secret",
            "key",
            "token",
            "jaas",
            "pem",
            "credential",
        ]
        .iter()
        .any(|s| n.contains(s))
    }
}

impl fmt::Debug for KafkaProperties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if KafkaProperties::is_secret(k) {
                    "***"
                } else {
                    v.as_str()
                };
                (k, shown)
            }))
            .finish()
    }
}

/// Models: scoring, selection, hot reload.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// ONNX sessions per model (each scores one request at a time).
    pub sessions: usize,
    /// Intra-op threads per session.
    pub intra_threads: usize,
    /// The model answering requests that name none (unset → first by name).
    pub default: Option<String>,
    /// Traffic split by a stable hash of customer_id: model name (its serving
    /// version) or `name@version` → weight. Empty → everything to `default`.
    pub traffic: BTreeMap<String, f64>,
    /// Models also scored on every request's features; their scores go to
    /// metrics and logs, never to the response (`name` or `name@version`).
    pub shadow: Vec<String>,
    /// Watch the models folder and swap versions in without a restart.
    pub watch: bool,
    /// Delay from a file change to its rescan, and the least time between two
    /// rescans (so a folder that keeps changing is rescanned once per period), in ms.
    pub reload_debounce_ms: u64,
    /// Rescan the folder this often even without file events, in seconds (0 = never).
    pub rescan_secs: u64,
    /// Score concurrent requests for one model together if they arrive within
    /// this many µs (0 = off, each request scored on its own).
    pub micro_batch_us: u64,
    /// Requests that may wait for a free scoring slot (there are `sessions`
    /// slots); past this a request gets its fallback at once (load shedding).
    pub max_waiting: usize,
}

/// `/v1/recommend` behaviour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecommendConfig {
    /// Items returned when the request gives no `k`.
    pub default_k: usize,
    /// Largest accepted `k`.
    pub max_k: usize,
    /// Budget when the request gives no `budget_ms`.
    pub default_budget_ms: u64,
    /// Most candidates scored (request lists longer than this are rejected).
    pub max_candidates: usize,
    /// Most keys in a request's `context` (more → 400).
    pub max_context_keys: usize,
    /// Largest `context` value, in bytes (a string's length, else its JSON
    /// text); a key may be at most 128 bytes. Larger → 400.
    pub max_context_value_bytes: usize,
    /// Candidates generated from the store when the request lists none.
    pub generated_candidates: usize,
    /// The item feature an item's value comes from in arbitration
    /// (priority = propensity × value × weight), e.g. `item.margin`. An item
    /// without it recorded falls back to `item.price`, then 1. Unset → every
    /// item's value is 1 (rank by propensity × weight).
    pub value: Option<String>,
    /// How often the popularity snapshot is read again from the lists the
    /// store keeps, in seconds.
    pub popularity_refresh_secs: u64,
    /// How long item states read from Redis are reused by requests, in ms
    /// (0 = always read). Customer features are never cached. A catalog
    /// write drops the item at once on the instance that applied it, and on
    /// the others as the change feed's notice arrives (`stream.redis_feed`);
    /// a notice lost on the way leaves the old state for at most this time.
    pub item_cache_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            models_dir: PathBuf::from("models"),
            features: PathBuf::from("feature-store/features.toml"),
            ort_dylib_path: None,
            clock: crate::clock::ClockMode::Wall,
            store: StoreConfig::default(),
            kafka: KafkaConfig::default(),
            model: ModelConfig::default(),
            recommend: RecommendConfig::default(),
            http: HttpConfig::default(),
            rules: RulesConfig::default(),
            triggers: TriggersConfig::default(),
            security: SecurityConfig::default(),
            stream: StreamConfig::default(),
        }
    }
}

impl fmt::Debug for StoreConfig {
    /// The derived `Debug` but for the Redis URL, shown without its
    /// password. Fields added later show as `..` until listed here.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("redis_url", &self.redis_url_for_logs())
            .field("key_prefix", &self.key_prefix)
            .field("dedupe_window_secs", &self.dedupe_window_secs)
            .field("ttl_secs", &self.ttl_secs)
            .field("timeout_ms", &self.timeout_ms)
            .field("allowed_future_secs", &self.allowed_future_secs)
            .field("allowed_lateness_secs", &self.allowed_lateness_secs)
            .field("memory_max_entities", &self.memory_max_entities)
            .field("memory_max_sessions", &self.memory_max_sessions)
            .field("timer_shards", &self.timer_shards)
            .finish_non_exhaustive()
    }
}

/// A URL with any password (and user) replaced by `***`, for logs and
/// errors: `redis://:secret@host:6379/0` → `redis://***@host:6379/0`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_string(),
    }
}

impl StoreConfig {
    /// The Redis URL without its password (None: the in-memory store).
    pub fn redis_url_for_logs(&self) -> Option<String> {
        self.redis_url.as_deref().map(redact_url)
    }

    /// [`StoreConfig::dedupe_window_secs`] in ms, as the stores take it.
    pub fn dedupe_window_ms(&self) -> i64 {
        (self.dedupe_window_secs * 1000) as i64
    }

    /// How far from the clock a live event may be
    /// ([`StoreConfig::allowed_future_secs`], [`StoreConfig::allowed_lateness_secs`]).
    pub fn time_bounds(&self) -> crate::event::TimeBounds {
        let ms = |s: u64| s.saturating_mul(1000).min(i64::MAX as u64) as i64;
        crate::event::TimeBounds {
            future_ms: ms(self.allowed_future_secs),
            lateness_ms: ms(self.allowed_lateness_secs),
        }
    }
}

/// 16 `/v1/recommend` requests in flight per core (32 on 2 cores). A
/// request is ~1 ms of CPU, so what is past that waits in a queue its
/// cores take ~16 ms to clear; with 256 on 2 cores, an open loop past
/// capacity queued every request to its 200 ms budget (fallbacks, p50
/// 215 ms), with 32 the excess got 503s at once and the rest p99 133 ms
/// (benches/RESULTS.md, "Overload").
pub fn default_recommend_concurrency() -> usize {
    16 * std::thread::available_parallelism().map_or(2, |n| n.get())
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            request_timeout_ms: 30_000,
            recommend_concurrency: default_recommend_concurrency(),
            recommend_queue_ms: 0,
            max_body_bytes: 8 * 1024 * 1024,
            ws_max_message_bytes: 64 * 1024,
            storefront: true,
        }
    }
}

impl HttpConfig {
    /// `request_timeout_ms` as a duration.
    pub fn request_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.request_timeout_ms)
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            redis_url: None,
            key_prefix: "nb".into(),
            dedupe_window_secs: 7 * 24 * 3600,
            ttl_secs: 90 * 24 * 3600,
            timeout_ms: 2000,
            allowed_future_secs: 300,
            allowed_lateness_secs: 7 * 24 * 3600,
            memory_max_entities: 250_000,
            memory_max_sessions: 16,
            timer_shards: 16,
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: None,
            group_id: "nextbest".into(),
            consume: true,
            batch_size: 5000,
            batch_linger_ms: 1,
            commit_interval_ms: 100,
            create_topics: true,
            partitions: 3,
            dlq_topic: "events.dlq".into(),
            actions_topic: "nextbest.actions".into(),
            session_timeout_ms: 10_000,
            produce_timeout_ms: 5_000,
            properties: KafkaProperties::default(),
        }
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            sessions: 2,
            intra_threads: 1,
            default: None,
            traffic: BTreeMap::new(),
            shadow: Vec::new(),
            watch: true,
            reload_debounce_ms: 300,
            rescan_secs: 30,
            micro_batch_us: 0,
            max_waiting: 64,
        }
    }
}

impl Default for RecommendConfig {
    fn default() -> Self {
        RecommendConfig {
            default_k: 10,
            max_k: 100,
            default_budget_ms: 200,
            max_candidates: 1000,
            max_context_keys: 64,
            max_context_value_bytes: 1024,
            generated_candidates: 100,
            value: None,
            popularity_refresh_secs: 10,
            item_cache_ms: 1000,
        }
    }
}

impl Config {
    /// File (if any) → environment. `path` None → `NEXTBEST_CONFIG` or
    /// `./nextbest.toml` when it exists.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let env_path = std::env::var_os("NEXTBEST_CONFIG").map(PathBuf::from);
        let path = path.map(Path::to_path_buf).or(env_path).or_else(|| {
            let p = PathBuf::from("nextbest.toml");
            p.exists().then_some(p)
        });
        let mut cfg = match path {
            Some(p) => Config::from_file(&p)?,
            None => Config::default(),
        };
        cfg.apply_env(|k| std::env::var(k).ok())?;
        Ok(cfg)
    }

    /// Parses a config file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// Applies the contract's environment variables (empty values are ignored).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        if let Some(v) = get("NEXTBEST_HTTP_ADDR") {
            self.http_addr = v.parse().map_err(|e| ConfigError::Env {
                name: "NEXTBEST_HTTP_ADDR".into(),
                value: v.clone(),
                message: format!("not a socket address like 127.0.0.1:8080 ({e})"),
            })?;
        }
        if let Some(v) = get("NEXTBEST_REDIS_URL") {
            self.store.redis_url = Some(v);
        }
        if let Some(v) = get("NEXTBEST_KAFKA_BROKERS") {
            self.kafka.brokers = Some(v);
        }
        if let Some(v) = get("NEXTBEST_MODELS_DIR") {
            self.models_dir = PathBuf::from(v);
        }
        if let Some(v) = get("NEXTBEST_FEATURES") {
            self.features = PathBuf::from(v);
        }
        if let Some(v) = get("NEXTBEST_RULES_DIR") {
            self.rules.dir = PathBuf::from(v);
        }
        if let Some(v) = get("NEXTBEST_TRIGGERS_DIR") {
            self.triggers.dir = PathBuf::from(v);
        }
        if let Some(v) = get("NEXTBEST_CART_ABANDONMENT_AFTER_MS") {
            let ms = v.parse::<u64>().ok().filter(|ms| *ms > 0);
            self.triggers.cart_abandonment_after_ms = Some(ms.ok_or_else(|| ConfigError::Env {
                name: "NEXTBEST_CART_ABANDONMENT_AFTER_MS".into(),
                value: v.clone(),
                message: "not a positive number of milliseconds".into(),
            })?);
        }
        if let Some(v) = get("NEXTBEST_TRIGGERS_WEBHOOK_SECRET") {
            if let Some(w) = &mut self.triggers.webhook {
                w.secret = v;
            }
        }
        if let Some(v) = get("ORT_DYLIB_PATH") {
            self.ort_dylib_path = Some(PathBuf::from(v));
        }
        if let Some(v) = get("NEXTBEST_CLOCK") {
            self.clock = v.parse().map_err(|message| ConfigError::Env {
                name: "NEXTBEST_CLOCK".into(),
                value: v.clone(),
                message,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("nextbest.toml.example");
        let cfg = Config::from_file(&p).expect("nextbest.toml.example is valid");
        assert_eq!(cfg.kafka.group_id, "nextbest");
        assert_eq!(cfg.http.recommend_concurrency, 64);
        assert_eq!(
            cfg.http.recommend_queue_ms,
            HttpConfig::default().recommend_queue_ms
        );
        assert_eq!(
            cfg.store.memory_max_entities,
            StoreConfig::default().memory_max_entities
        );
        let d = Config::default();
        assert_eq!(cfg.http.max_body_bytes, d.http.max_body_bytes);
        assert_eq!(cfg.http.ws_max_message_bytes, d.http.ws_max_message_bytes);
        assert_eq!(cfg.recommend.max_context_keys, d.recommend.max_context_keys);
        assert_eq!(
            cfg.recommend.max_context_value_bytes,
            d.recommend.max_context_value_bytes
        );
        assert!(cfg.security.keys.is_empty() && cfg.security.cors_origins.is_empty());
        assert_eq!(cfg.security.rate_limit.per_second, 0.0);
        assert!(cfg.kafka.properties.0.is_empty());
        assert_eq!(cfg.triggers.tick_ms, d.triggers.tick_ms);
        assert_eq!(cfg.triggers.lease_ms, d.triggers.lease_ms);
        assert_eq!(cfg.triggers.cart_abandonment_after_ms, None);
        assert!(cfg.triggers.webhook.is_none());
        assert_eq!(cfg.store.timer_shards, d.store.timer_shards);
    }

    #[test]
    fn env_overrides_and_names_bad_values() {
        let mut cfg = Config::default();
        cfg.apply_env(|k| (k == "NEXTBEST_REDIS_URL").then(|| "redis://127.0.0.1:1/".to_string()))
            .expect("valid env");
        assert_eq!(cfg.store.redis_url.as_deref(), Some("redis://127.0.0.1:1/"));
        let err = cfg
            .apply_env(|k| (k == "NEXTBEST_HTTP_ADDR").then(|| "nowhere".to_string()))
            .unwrap_err();
        assert!(err.to_string().contains("NEXTBEST_HTTP_ADDR"));
        cfg.apply_env(|k| (k == "NEXTBEST_CART_ABANDONMENT_AFTER_MS").then(|| "1500".to_string()))
            .expect("valid env");
        assert_eq!(cfg.triggers.cart_abandonment_after_ms, Some(1500));
        let err = cfg
            .apply_env(|k| (k == "NEXTBEST_CART_ABANDONMENT_AFTER_MS").then(|| "soon".to_string()))
            .unwrap_err();
        assert!(err
            .to_string()
            .contains("NEXTBEST_CART_ABANDONMENT_AFTER_MS"));
        assert!(toml::from_str::<Config>("htp_addr = '1.2.3.4:5'").is_err());
    }

    #[test]
    fn security_keys_and_kafka_properties_parse() {
        let cfg: Config = toml::from_str(
            r#"
            [security]
            cors_origins = ["https://shop.example"]
            [security.rate_limit]
            per_second = 0.5
            [[security.keys]]
            name = "ops"
            role = "admin"
            sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
            [[security.keys]]
            name = "shop"
            role = "client"
            sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a09"
            burst = 20
            [kafka.properties]
            "security.protocol" = "SASL_SSL"
            "sasl.password" = "kafka-pw"
            "#,
        )
        .expect("valid");
        let s = &cfg.security;
        assert_eq!(
            (s.keys.len(), s.keys[0].role, s.keys[1].burst),
            (2, Role::Admin, Some(20))
        );
        assert_eq!(s.rate_limit.per_second, 0.5);
        assert_eq!(cfg.kafka.properties.0["security.protocol"], "SASL_SSL");
        let bad_role = "[[security.keys]]\nname = 'x'\nrole = 'root'\nsha256 = ''";
        assert!(toml::from_str::<Config>(bad_role).is_err());
    }

    #[test]
    fn a_webhook_parses_with_defaults_and_its_secret_is_hidden() {
        let mut cfg: Config = toml::from_str(
            "[triggers.webhook]\nurl = \"https://crm.example/hook\"\nsecret = \"hook-pw\"\n",
        )
        .expect("valid");
        let w = cfg.triggers.webhook.clone().expect("webhook");
        assert_eq!((w.attempts, w.timeout_ms), (4, 2_000));
        assert_eq!(w.dlq_topic, "nextbest.actions.dlq");
        assert!(!format!("{cfg:?}").contains("hook-pw"));
        cfg.apply_env(|k| (k == "NEXTBEST_TRIGGERS_WEBHOOK_SECRET").then(|| "env-pw".into()))
            .expect("env");
        assert_eq!(
            cfg.triggers.webhook.map(|w| w.secret).as_deref(),
            Some("env-pw")
        );
    }

    #[test]
    fn debug_output_hides_secrets() {
        let mut cfg = Config::default();
        cfg.store.redis_url = Some("rediss://user:redis-pw@cache.internal:6380/0".into());
        cfg.kafka
            .properties
            .0
            .insert("sasl.password".into(), "kafka-pw".into());
        cfg.kafka
            .properties
            .0
            .insert("sasl.mechanism".into(), "PLAIN".into());
        let shown = format!("{cfg:?}");
        assert!(
            !shown.contains("redis-pw") && !shown.contains("user:"),
            "{shown}"
        );
        assert!(!shown.contains("kafka-pw"), "{shown}");
        // what is not secret is still shown
        assert!(
            shown.contains("rediss://***@cache.internal:6380/0"),
            "{shown}"
        );
        assert!(
            shown.contains("PLAIN") && shown.contains("sasl.password"),
            "{shown}"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379/"),
            "redis://127.0.0.1:6379/"
        );
        assert_eq!(redact_url("redis://:p@ss@h:1/"), "redis://***@h:1/");
    }
}
