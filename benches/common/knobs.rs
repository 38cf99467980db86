//! What the load and consumer benches share: the environment they read
//! (the services' addresses `make bench` / `make bench-consumer` set, and
//! numeric knobs) and the config of the server they run in-process.

use nextbest::config::Config;
use std::path::PathBuf;

/// The config of a server on the services: the Redis store under keys
/// `prefix`, consuming from `brokers` as group `<prefix>-group`, the
/// shipped features and models.
pub fn server_config(redis_url: &str, brokers: &str, prefix: &str) -> Config {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut cfg = Config {
        http_addr: "127.0.0.1:0".parse().expect("addr"),
        features: repo.join("feature-store/features.toml"),
        models_dir: repo.join("models"),
        ..Config::default()
    };
    cfg.store.redis_url = Some(redis_url.to_string());
    cfg.store.key_prefix = prefix.to_string();
    cfg.kafka.brokers = Some(brokers.to_string());
    cfg.kafka.group_id = format!("{prefix}-group");
    cfg.kafka.session_timeout_ms = 6000;
    cfg
}

/// The variable `name`, which the make target sets.
pub fn env(name: &str) -> String {
    std::env::var(name)
        .unwrap_or_else(|_| panic!("{name} is not set; run `make bench` or `make bench-consumer`"))
}

/// The number in `name`, or `default` when it is unset.
pub fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}
