//! One configuration for the whole server: `nextbest.toml` (optional), then
//! environment variables (the contract's `NEXTBEST_*`), then CLI flags.
//!
//! Every field is documented here; `nextbest.toml.example` shows them all and
//! a test parses it. Unknown keys are errors, so a typo never goes unnoticed.

use serde::Deserialize;
use std::collections::BTreeMap;
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
    pub store: StoreConfig,
    pub kafka: KafkaConfig,
    pub model: ModelConfig,
    pub recommend: RecommendConfig,
    pub http: HttpConfig,
    pub rules: RulesConfig,
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
    /// Most `/v1/recommend` requests in flight; one more is answered 503
    /// with `Retry-After` at once (at least 1).
    pub recommend_concurrency: usize,
}

/// The online store.
#[derive(Debug, Clone, Deserialize)]
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
    /// Most messages applied in one Redis pipeline.
    pub batch_size: usize,
    /// Longest wait for a batch to fill, in ms.
    pub batch_linger_ms: u64,
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
    /// Candidates generated from the store when the request lists none.
    pub generated_candidates: usize,
    /// The item feature an item's value comes from in arbitration
    /// (priority = propensity × value × weight), e.g. `item.margin`. An item
    /// without it recorded falls back to `item.price`, then 1. Unset → every
    /// item's value is 1 (rank by propensity × weight).
    pub value: Option<String>,
    /// How often the popularity lists are rebuilt, in seconds.
    pub popularity_refresh_secs: u64,
    /// How long item states read from Redis are reused by requests, in ms
    /// (0 = always read). Customer features are never cached. A catalog
    /// write drops the item at once on the instance that applied it; other
    /// instances see it within this time.
    pub item_cache_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            models_dir: PathBuf::from("models"),
            features: PathBuf::from("feature-store/features.toml"),
            ort_dylib_path: None,
            store: StoreConfig::default(),
            kafka: KafkaConfig::default(),
            model: ModelConfig::default(),
            recommend: RecommendConfig::default(),
            http: HttpConfig::default(),
            rules: RulesConfig::default(),
        }
    }
}

impl StoreConfig {
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

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            request_timeout_ms: 30_000,
            recommend_concurrency: 256,
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
        }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: None,
            group_id: "nextbest".into(),
            consume: true,
            batch_size: 500,
            batch_linger_ms: 1,
            create_topics: true,
            partitions: 3,
            dlq_topic: "events.dlq".into(),
            actions_topic: "nextbest.actions".into(),
            session_timeout_ms: 10_000,
            produce_timeout_ms: 5_000,
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
        if let Some(v) = get("ORT_DYLIB_PATH") {
            self.ort_dylib_path = Some(PathBuf::from(v));
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
        assert_eq!(cfg.http.recommend_concurrency, 256);
        assert_eq!(
            cfg.store.memory_max_entities,
            StoreConfig::default().memory_max_entities
        );
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
        assert!(toml::from_str::<Config>("htp_addr = '1.2.3.4:5'").is_err());
    }
}
