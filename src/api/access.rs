//! The access policy of the API, built once at start-up from `[security]`:
//! the API keys ([`KeyRing`]), the rate-limit buckets ([`RateLimits`]) and
//! the CORS layer, plus what the start-up summary and warnings say about
//! them. The router (`api::router`) places them; `auth.rs`,
//! `rate_limit.rs` and `cors.rs` hold the behaviour.

use super::cors::CorsError;
use super::rate_limit::{RateLimitError, RateLimits};
use crate::config::SecurityConfig;
use crate::keys::{KeyRing, KeysError, Role};
use std::sync::Arc;
use tower_http::cors::CorsLayer;

/// Who may call what, built from `[security]` once at start-up.
#[derive(Clone)]
pub struct Access {
    pub keys: Arc<KeyRing>,
    pub limits: Arc<RateLimits>,
    pub cors: CorsLayer,
    /// Whether `/metrics` is an admin route.
    pub metrics_admin: bool,
    /// The CORS policy as the start-up summary says it.
    pub cors_policy: String,
}

/// Errors in `[security]`.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Keys(#[from] KeysError),
    #[error(transparent)]
    RateLimit(#[from] RateLimitError),
    #[error(transparent)]
    Cors(#[from] CorsError),
}

impl Access {
    /// Checks `[security]` and builds its parts.
    pub fn build(cfg: &SecurityConfig) -> Result<Access, AccessError> {
        let keys = KeyRing::from_config(&cfg.keys)?;
        let limits = RateLimits::new(&cfg.rate_limit, &keys)?;
        Ok(Access {
            keys: Arc::new(keys),
            limits: Arc::new(limits),
            cors: super::cors::layer(&cfg.cors_origins)?,
            metrics_admin: cfg.metrics_admin,
            cors_policy: super::cors::describe(&cfg.cors_origins),
        })
    }

    /// One line for the start-up summary: keys by role, rate limit, CORS.
    pub fn describe(&self) -> String {
        let keys = if self.keys.is_empty() {
            "open (no API keys)".to_string()
        } else {
            format!(
                "{} admin key(s), {} client key(s){}",
                self.keys.count(Role::Admin),
                self.keys.count(Role::Client),
                if self.keys.has(Role::Client) {
                    ""
                } else {
                    ", client routes open"
                }
            )
        };
        format!(
            "{keys}; rate limit {}; CORS {}",
            self.limits.describe(),
            self.cors_policy
        )
    }

    /// The start-up warnings of this access policy (logged once by `App::build`).
    pub fn warnings(&self) -> Vec<&'static str> {
        let mut w = Vec::new();
        if self.keys.is_empty() {
            w.push(
                "no API keys in [security.keys]: every route is open, the admin routes \
                 (catalog and profile writes, rules, models, customer features) included; \
                 see SECURITY.md",
            );
        } else if !self.keys.has(Role::Admin) {
            w.push("no admin key in [security.keys]: the admin routes refuse every request");
        }
        w
    }
}
